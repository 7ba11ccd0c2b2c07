"""MobileNet V2 (Sandler et al., 2018) and V3 (Howard et al., 2019), as
keras.applications and torchvision publish them.

The two sources train the same architectures but are not the same network;
``variant`` selects one's exact structure:

- ``variant="keras"`` (the default, as ``keras.applications.MobileNetV2``,
  ``MobileNetV3Small``, ``MobileNetV3Large``): stride-2 depthwise
  convolutions padded by ``imagenet_utils.correct_pad`` (one cell less at the
  top/left on even sizes), the stem by 'same' padding (the same cells),
  BatchNorm epsilon 1e-3 and momentum 0.999, keras' width rules for
  ``alpha``; V3 scales its input in the model (``include_preprocessing``: a
  ``Rescaling`` to [-1, 1]) and has ``minimalistic`` models (3x3 kernels,
  ReLU, no squeeze-and-excite).
- ``variant="torchvision"``: every convolution padded ``k // 2`` on each
  side, BatchNorm epsilon 1e-5 (V2) or 1e-3 (V3) and PyTorch's momentum
  (0.1 and 0.01, i.e. Keras momentum 0.9 and 0.99), torchvision's width rules
  (``width_mult``, here ``alpha``), V2's classifier dropout (0.2), no input
  scaling in the model (``torch`` preprocessing outside).

Layer names are the published keras files' (tf.keras) with '/' read as '_'
(``Conv1``, ``bn_Conv1``, ``block_1_expand_BN``; ``Conv_BatchNorm``,
``expanded_conv_depthwise``, ``expanded_conv_1_squeeze_excite_Conv``,
``Conv_2``, ``Logits``), in both variants, so keras' files load by name.
torchvision's V3 classifier Linear layers are the 1x1 convolutions
``Conv_2`` and ``Logits`` after a global average pool, as in keras: the same
function, and torchvision's Linear weights load into them. The hard sigmoid
and hard swish are ``relu6(x + 3) / 6`` and ``x * relu6(x + 3) / 6`` (Keras'
``hard_sigmoid`` and ``hard_swish``; tf.keras multiplies by ``1 / 6``
instead, a difference of at most one float32 rounding).
"""

from __future__ import annotations

import functools
import math

import keras

from multinet import layers
from multinet.models.base import build_model, check_rate
from multinet.registry import Family, ModelSpec, WeightsSpec, register_model, torchvision_weights

VARIANTS = ("keras", "torchvision")
DEFAULT_SIZE = 224
MIN_SIZE = 32  # keras.applications' limit for both versions

# MobileNetV2 stages: (expansion t, output channels c, blocks n, first stride s).
V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))

# MobileNetV3 blocks as torchvision lists them: (input, kernel, expanded,
# output, squeeze-and-excite, activation "RE" (ReLU) or "HS" (hard swish),
# stride). keras' expansion ratios are expanded / input of these rows.
V3_BLOCKS = {
    "mobilenet_v3_small": (
        (16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2),
        (24, 3, 88, 24, False, "RE", 1), (24, 5, 96, 40, True, "HS", 2),
        (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
        (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1),
        (48, 5, 288, 96, True, "HS", 2), (96, 5, 576, 96, True, "HS", 1),
        (96, 5, 576, 96, True, "HS", 1),
    ),
    "mobilenet_v3_large": (
        (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2),
        (24, 3, 72, 24, False, "RE", 1), (24, 5, 72, 40, True, "RE", 2),
        (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
        (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1),
        (80, 3, 184, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
        (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
        (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1),
        (160, 5, 960, 160, True, "HS", 1),
    ),
}
V3_LAST_CHANNELS = {"mobilenet_v3_small": 1024, "mobilenet_v3_large": 1280}

# Trainable parameters at alpha 1.0 (torchvision's num_params, keras'
# trainable count; keras' count_params() adds the BatchNorm moving statistics).
PARAMS = {
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_small": 2_542_856,
    "mobilenet_v3_large": 5_483_032,
}

# BatchNorm (epsilon, Keras momentum) per version and source; PyTorch's
# momentum m is Keras' 1 - m.
_BATCHNORM = {
    ("v2", "keras"): (1e-3, 0.999), ("v2", "torchvision"): (1e-5, 0.9),
    ("v3", "keras"): (1e-3, 0.999), ("v3", "torchvision"): (1e-3, 0.99),
}

_KERAS_V2 = ("https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
             "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_")
_KERAS_V3 = ("https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/"
             "weights_mobilenet_v3_")
# keras.applications' md5 of each MobileNetV3 file (with top, without top).
_KERAS_V3_HASHES = {
    "large_224_0.75_float": ("765b44a33ad4005b3ac83185abf1d0eb",
                             "40af19a13ebea4e2ee0c676887f69a2e"),
    "large_224_1.0_float": ("59e551e166be033d707958cf9e29a6a7",
                            "07fb09a5933dd0c8eaafa16978110389"),
    "large_minimalistic_224_1.0_float": ("675e7b876c45c57e9e63e6d90a36599c",
                                         "ec5221f64a2f6d1ef965a614bdae7973"),
    "small_224_0.75_float": ("cb65d4e5be93758266aa0a7f2c6708b7",
                             "ebdb5cc8e0b497cd13a7c275d475c819"),
    "small_224_1.0_float": ("8768d4c2e7dee89b9d02b2d03d65d862",
                            "d3e8ec802a04aa4fc771ee12a9a9b836"),
    "small_minimalistic_224_1.0_float": ("99cd97fb2fcdad2bf028eb838de69e37",
                                         "cde8136e733e811080d9fcd8a252f7e4"),
}
_KERAS_V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
_TORCH_FILES = {
    "mobilenet_v2": ("mobilenet_v2-b0353104.pth", "mobilenet_v2-7ebf99e0.pth"),
    "mobilenet_v3_small": ("mobilenet_v3_small-047dcff4.pth", None),
    "mobilenet_v3_large": ("mobilenet_v3_large-8738ca79.pth", "mobilenet_v3_large-5c1a4163.pth"),
}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """The nearest multiple of ``divisor`` (at least ``min_value``), never more
    than 10% below ``value``: keras' ``_depth`` and torchvision's
    ``_make_divisible``, one function."""
    min_value = divisor if min_value is None else min_value
    result = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if result < 0.9 * value:
        result += divisor
    return result


# --- the channel plan: every width, kernel and stride, per source -----------


def _block(prefix, inputs, expanded, outputs, kernel, stride, squeeze, activation, expand):
    return dict(prefix=prefix, inputs=inputs, expanded=expanded, outputs=outputs,
                kernel=kernel, stride=stride, squeeze=squeeze, activation=activation,
                expand=expand, residual=stride == 1 and inputs == outputs)


def _v2_plan(alpha: float, variant: str) -> dict:
    stem = make_divisible(32 * alpha)
    blocks, channels, block_id = [], stem, 0
    for expansion, width, repeats, first_stride in V2_STAGES:
        if variant == "keras":
            outputs = make_divisible(int(width * alpha))
        else:
            outputs = make_divisible(width * alpha)
        for repeat in range(repeats):
            if variant == "keras":
                expanded = expansion * channels
            else:
                expanded = int(round(channels * expansion))
            prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
            blocks.append(_block(prefix, channels, expanded, outputs, 3,
                                 first_stride if repeat == 0 else 1, 0, "relu6",
                                 expand=expansion != 1))
            channels, block_id = outputs, block_id + 1
    last = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
    return dict(stem=stem, blocks=blocks, last_conv=last, last_point=None)


def _v3_plan(model_name: str, alpha: float, variant: str, minimalistic: bool) -> dict:
    keras_rules = variant == "keras"
    stem = 16 if keras_rules else make_divisible(16 * alpha)
    blocks, channels = [], stem
    for block_id, row in enumerate(V3_BLOCKS[model_name]):
        base_in, kernel, base_expanded, base_out, se, activation, stride = row
        if minimalistic:
            kernel, se, activation = 3, False, "RE"
        outputs = make_divisible(base_out * alpha)
        if keras_rules:
            expanded = make_divisible(channels * (base_expanded / base_in))
            squeeze = make_divisible(expanded * 0.25) if se else 0
            expand = block_id > 0
        else:
            expanded = make_divisible(base_expanded * alpha)
            squeeze = make_divisible(expanded // 4) if se else 0
            expand = expanded != channels
        prefix = f"expanded_conv_{block_id}_" if block_id else "expanded_conv_"
        blocks.append(_block(prefix, channels, expanded, outputs, kernel, stride, squeeze,
                             "relu" if activation == "RE" else "hard_swish", expand))
        channels = outputs
    last_point = V3_LAST_CHANNELS[model_name]
    if keras_rules:
        last_conv = make_divisible(channels * 6)
        last_point = make_divisible(last_point * alpha) if alpha > 1.0 else last_point
    else:
        last_conv = 6 * channels
        last_point = make_divisible(last_point * alpha)
    return dict(stem=stem, blocks=blocks, last_conv=last_conv, last_point=last_point)


def _plan(model_name: str, options) -> dict:
    alpha = float(options.get("alpha", 1.0))
    variant = options.get("variant", "keras")
    if model_name == "mobilenet_v2":
        return _v2_plan(alpha, variant)
    return _v3_plan(model_name, alpha, variant, bool(options.get("minimalistic", False)))


# --- layers ------------------------------------------------------------------


def correct_pad(height, width, kernel: int):
    """keras.applications' ``imagenet_utils.correct_pad`` for a stride-2
    convolution, ``((top, bottom), (left, right))``: ``k // 2`` cells at the
    bottom/right, one less at the top/left on even sizes, and on both axes
    when the height is unknown (as keras decides)."""
    half = kernel // 2
    if height is None:
        adjust = (1, 1)
    else:
        adjust = (1 - height % 2, 1 if width is None else 1 - width % 2)
    return ((half - adjust[0], half), (half - adjust[1], half))


def _spatial(x, fmt):
    return tuple(x.shape[1:3]) if fmt == "channels_last" else tuple(x.shape[2:4])


def strided_padding(x, fmt, kernel, variant, name):
    """The padding a stride-2 convolution gets: keras' correct_pad or
    torchvision's symmetric ``k // 2``."""
    if variant == "keras":
        pad = correct_pad(*_spatial(x, fmt), kernel)
    else:
        pad = ((kernel // 2,) * 2,) * 2
    return keras.layers.ZeroPadding2D(pad, data_format=fmt, name=name)(x)


def _activation(x, kind, name):
    if kind == "relu6":
        return keras.layers.ReLU(6.0, name=name)(x)
    if kind == "relu":
        return keras.layers.ReLU(name=name)(x)
    return keras.layers.Activation(kind, name=name)(x)


def _batch_norm(x, fmt, bn, name):
    epsilon, momentum = bn
    return keras.layers.BatchNormalization(axis=layers.channel_axis(fmt), epsilon=epsilon,
                                           momentum=momentum, name=name)(x)


def _conv(x, fmt, filters, name, kernel=1, strides=1, padding="valid", use_bias=False):
    return layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=use_bias,
                         data_format=fmt, name=name)(x)


def _stem(x, fmt, filters, variant, bn, activation, names):
    conv, norm, act = names
    if variant == "keras":
        x = _conv(x, fmt, filters, conv, kernel=3, strides=2, padding="same")
    else:
        x = keras.layers.ZeroPadding2D(1, data_format=fmt, name=conv + "_pad")(x)
        x = _conv(x, fmt, filters, conv, kernel=3, strides=2)
    x = _batch_norm(x, fmt, bn, norm)
    return _activation(x, activation, act)


def squeeze_excite(x, fmt, filters, squeeze, prefix):
    """Squeeze-and-excitation: global average, 1x1 conv + ReLU, 1x1 conv +
    hard sigmoid, times the input (keras' ``_se_block``, torchvision's
    ``SqueezeExcitation`` with ``Hardsigmoid``)."""
    scale = keras.layers.GlobalAveragePooling2D(data_format=fmt, keepdims=True,
                                                name=prefix + "AvgPool")(x)
    scale = _conv(scale, fmt, squeeze, prefix + "Conv", use_bias=True)
    scale = keras.layers.ReLU(name=prefix + "Relu")(scale)
    scale = _conv(scale, fmt, filters, prefix + "Conv_1", use_bias=True)
    scale = keras.layers.Activation("hard_sigmoid", name=prefix + "hard_sigmoid")(scale)
    return keras.layers.Multiply(name=prefix + "Mul")([x, scale])


def inverted_residual(x, fmt, block: dict, *, version: str, variant: str, bn):
    """Expand 1x1, depthwise kxk (stride 1 or 2), optional squeeze-and-excite,
    project 1x1 (linear), plus the input where shapes allow. ``block`` is one
    row of the channel plan; names follow the published keras files."""
    prefix, act = block["prefix"], block["activation"]
    norm = "_BN" if version == "v2" else "_BatchNorm"
    shortcut = x
    if block["expand"]:
        x = _conv(x, fmt, block["expanded"], prefix + "expand")
        x = _batch_norm(x, fmt, bn, prefix + "expand" + norm)
        x = _activation(x, act, prefix + ("expand_relu" if version == "v2" else
                                          f"expand_{act}"))
    kernel, stride = block["kernel"], block["stride"]
    padding = "same"
    if stride == 2:
        pad_name = prefix + ("pad" if version == "v2" else "depthwise_pad")
        x = strided_padding(x, fmt, kernel, variant, pad_name)
        padding = "valid"
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False,
                               data_format=fmt, name=prefix + "depthwise")(x)
    x = _batch_norm(x, fmt, bn, prefix + "depthwise" + norm)
    x = _activation(x, act, prefix + ("depthwise_relu" if version == "v2" else
                                      f"depthwise_{act}"))
    if block["squeeze"]:
        x = squeeze_excite(x, fmt, block["expanded"], block["squeeze"],
                           prefix + "squeeze_excite_")
    x = _conv(x, fmt, block["outputs"], prefix + "project")
    x = _batch_norm(x, fmt, bn, prefix + "project" + norm)
    if block["residual"]:
        x = keras.layers.Add(name=prefix + ("add" if version == "v2" else "Add"))([shortcut, x])
    return x


def _v2_features(x, fmt, plan, variant):
    bn = _BATCHNORM["v2", variant]
    x = _stem(x, fmt, plan["stem"], variant, bn, "relu6", ("Conv1", "bn_Conv1", "Conv1_relu"))
    for block in plan["blocks"]:
        x = inverted_residual(x, fmt, block, version="v2", variant=variant, bn=bn)
    x = _conv(x, fmt, plan["last_conv"], "Conv_1")
    x = _batch_norm(x, fmt, bn, "Conv_1_bn")
    return _activation(x, "relu6", "out_relu")


def _v2_classifier(x, fmt, classes, activation, dropout_rate):
    x = keras.layers.GlobalAveragePooling2D(data_format=fmt, name="avg_pool")(x)
    if dropout_rate:
        x = keras.layers.Dropout(dropout_rate, name="dropout")(x)
    return keras.layers.Dense(classes, activation=activation, name="predictions")(x)


def _v3_features(x, fmt, plan, variant, include_preprocessing, activation):
    bn = _BATCHNORM["v3", variant]
    if include_preprocessing:
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescaling")(x)
    x = _stem(x, fmt, plan["stem"], variant, bn, activation,
              ("Conv", "Conv_BatchNorm", f"Conv_{activation}"))
    for block in plan["blocks"]:
        x = inverted_residual(x, fmt, block, version="v3", variant=variant, bn=bn)
    x = _conv(x, fmt, plan["last_conv"], "Conv_1")
    x = _batch_norm(x, fmt, bn, "Conv_1_BatchNorm")
    return _activation(x, activation, f"Conv_1_{activation}")


def _v3_classifier(x, fmt, classes, classifier_activation, plan, activation, dropout_rate):
    x = keras.layers.GlobalAveragePooling2D(data_format=fmt, keepdims=True, name="avg_pool")(x)
    x = _conv(x, fmt, plan["last_point"], "Conv_2", use_bias=True)
    x = _activation(x, activation, f"Conv_2_{activation}")
    if dropout_rate:
        x = keras.layers.Dropout(dropout_rate, name="dropout")(x)
    x = _conv(x, fmt, classes, "Logits", use_bias=True)
    x = keras.layers.Flatten(data_format=fmt, name="flatten")(x)
    if classifier_activation is not None:
        x = keras.layers.Activation(classifier_activation, name="Predictions")(x)
    return x


# --- builders -----------------------------------------------------------------


def _check_options(model_name, variant, alpha):
    if variant not in VARIANTS:
        raise ValueError(f"{model_name}: variant must be one of {VARIANTS}, got {variant!r}")
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(alpha, bool) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{model_name}: alpha must be a positive number, got {alpha!r}")
    return value


def _build_v2(model_name, *, include_top, input_tensor, input_shape, pooling, classes,
              classifier_activation, data_format, has_weights=False, variant="keras",
              alpha=1.0, dropout_rate=None, compute_format=None, default_size=DEFAULT_SIZE,
              name=None):
    alpha = _check_options(model_name, variant, alpha)
    if dropout_rate is None:  # keras' MobileNetV2 has no dropout, torchvision's 0.2
        dropout_rate = 0.2 if variant == "torchvision" else 0.0
    dropout_rate = check_rate(model_name, "dropout_rate", dropout_rate)
    plan = _v2_plan(alpha, variant)
    return build_model(
        model_name,
        features=functools.partial(_v2_features, plan=plan, variant=variant),
        classifier=functools.partial(_v2_classifier, dropout_rate=dropout_rate),
        include_top=include_top, input_tensor=input_tensor, input_shape=input_shape,
        pooling=pooling, classes=classes, classifier_activation=classifier_activation,
        data_format=data_format, compute_format=compute_format, default_size=default_size,
        min_size=MIN_SIZE, fixed_top_size=None, has_weights=has_weights, name=name,
        options={"variant": variant, "alpha": alpha, "dropout_rate": dropout_rate},
    )


def _build_v3(model_name, *, include_top, input_tensor, input_shape, pooling, classes,
              classifier_activation, data_format, has_weights=False, variant="keras",
              alpha=1.0, minimalistic=False, include_preprocessing=None, dropout_rate=0.2,
              compute_format=None, default_size=DEFAULT_SIZE, name=None):
    alpha = _check_options(model_name, variant, alpha)
    dropout_rate = check_rate(model_name, "dropout_rate", dropout_rate)
    minimalistic = bool(minimalistic)
    if include_preprocessing is None:  # keras scales in the model, torchvision outside
        include_preprocessing = variant == "keras"
    include_preprocessing = bool(include_preprocessing)
    if variant == "torchvision" and minimalistic:
        raise ValueError(f"{model_name}: minimalistic=True is a keras architecture "
                         f"(torchvision has none); pass variant='keras'")
    if variant == "torchvision" and include_preprocessing:
        raise ValueError(
            f"{model_name}: include_preprocessing=True is keras' in-model Rescaling to "
            f"[-1, 1]; torchvision's models take 'torch'-normalized inputs "
            f"(multinet.preprocess_input); pass include_preprocessing=False or variant='keras'")
    plan = _v3_plan(model_name, alpha, variant, minimalistic)
    activation = "relu" if minimalistic else "hard_swish"
    return build_model(
        model_name,
        features=functools.partial(_v3_features, plan=plan, variant=variant,
                                   include_preprocessing=include_preprocessing,
                                   activation=activation),
        classifier=functools.partial(_v3_classifier, plan=plan, activation=activation,
                                     dropout_rate=dropout_rate),
        include_top=include_top, input_tensor=input_tensor, input_shape=input_shape,
        pooling=pooling, classes=classes, classifier_activation=classifier_activation,
        data_format=data_format, compute_format=compute_format, default_size=default_size,
        min_size=MIN_SIZE, fixed_top_size=None, has_weights=has_weights, name=name,
        options={"variant": variant, "alpha": alpha, "minimalistic": minimalistic,
                 "include_preprocessing": include_preprocessing, "dropout_rate": dropout_rate},
    )


# --- weights -------------------------------------------------------------------


def _torchvision_entries(model_name):
    v1, v2 = _TORCH_FILES[model_name]
    options = {"variant": "torchvision", "alpha": 1.0}
    entries = [torchvision_weights(v1, arch_options=options)]
    if v2:
        entries.append(torchvision_weights(v2, name="torchvision_v2",
                                           description="torchvision IMAGENET1K_V2",
                                           resize_size=232, arch_options=options))
    return entries


def _v2_weights():
    entries = []
    for alpha in _KERAS_V2_ALPHAS:
        base = f"{_KERAS_V2}{float(alpha)}_224"
        entries.append(WeightsSpec(
            name="keras" if alpha == 1.0 else f"keras-{alpha}",
            url=base + ".h5",
            file_hash=None,  # keras.applications publishes none for MobileNetV2
            hash_algorithm=None,
            layout="keras_legacy_h5",
            preprocessing="tf",
            input_size=224,
            arch_options={"variant": "keras", "alpha": float(alpha)},
            notop_url=base + "_no_top.h5",
            description=f"keras.applications ImageNet weights, alpha {alpha}",
        ))
    entries[:0] = [entries.pop(_KERAS_V2_ALPHAS.index(1.0))]  # the default first
    return tuple(entries + _torchvision_entries("mobilenet_v2"))


def _v3_weights(model_name):
    size = model_name.rsplit("_", 1)[-1]
    entries = []
    for key, entry_name, options in (
        (f"{size}_224_1.0_float", "keras", {"alpha": 1.0, "minimalistic": False}),
        (f"{size}_224_0.75_float", "keras-0.75", {"alpha": 0.75, "minimalistic": False}),
        (f"{size}_minimalistic_224_1.0_float", "keras-minimalistic",
         {"alpha": 1.0, "minimalistic": True}),
    ):
        top_hash, notop_hash = _KERAS_V3_HASHES[key]
        entries.append(WeightsSpec(
            name=entry_name,
            url=f"{_KERAS_V3}{key}.h5",
            file_hash=top_hash,
            hash_algorithm="md5",
            layout="keras_legacy_h5",
            # With its Rescaling layer (include_preprocessing=True, keras'
            # default) the model takes [0, 255]; see _keras_v3_mode.
            preprocessing="none",
            input_size=224,
            arch_options={"variant": "keras", **options},
            notop_url=f"{_KERAS_V3}{key}_no_top_v2.h5",
            notop_file_hash=notop_hash,
            description="keras.applications ImageNet weights"
                        + {"keras": "", "keras-0.75": ", alpha 0.75",
                           "keras-minimalistic": ", minimalistic"}[entry_name],
        ))
    return tuple(entries + _torchvision_entries(model_name))


def torchvision_names(model_name: str, options) -> dict[str, str]:
    """torchvision's modules: ``features.0`` is the stem (``.0`` conv, ``.1``
    BatchNorm); ``features.N`` the inverted residual blocks, whose
    ``conv``/``block`` Sequential holds (expand, depthwise, [SE,] project) as
    Conv2dNormActivation modules (``.0`` conv, ``.1`` BatchNorm), except
    V2's project, a bare conv and BatchNorm; the last ``features`` entry is
    the 1x1 conv before the pool; ``classifier.1`` (V2) and ``classifier.0``
    / ``classifier.3`` (V3) the Linear layers."""
    plan = _plan(model_name, {**dict(options), "variant": "torchvision"})
    v2 = model_name == "mobilenet_v2"
    norm = "_BN" if v2 else "_BatchNorm"
    names = {"features.0.0": "Conv1" if v2 else "Conv",
             "features.0.1": "bn_Conv1" if v2 else "Conv_BatchNorm"}
    for index, block in enumerate(plan["blocks"], start=1):
        prefix = block["prefix"]
        module = f"features.{index}.{'conv' if v2 else 'block'}"
        step = 0
        if block["expand"]:
            names[f"{module}.0.0"] = prefix + "expand"
            names[f"{module}.0.1"] = prefix + "expand" + norm
            step = 1
        names[f"{module}.{step}.0"] = prefix + "depthwise"
        names[f"{module}.{step}.1"] = prefix + "depthwise" + norm
        step += 1
        if block["squeeze"]:
            names[f"{module}.{step}.fc1"] = prefix + "squeeze_excite_Conv"
            names[f"{module}.{step}.fc2"] = prefix + "squeeze_excite_Conv_1"
            step += 1
        if v2:
            names[f"{module}.{step}"] = prefix + "project"
            names[f"{module}.{step + 1}"] = prefix + "project" + norm
        else:
            names[f"{module}.{step}.0"] = prefix + "project"
            names[f"{module}.{step}.1"] = prefix + "project" + norm
    last = f"features.{len(plan['blocks']) + 1}"
    names[last + ".0"] = "Conv_1"
    names[last + ".1"] = "Conv_1_bn" if v2 else "Conv_1_BatchNorm"
    if v2:
        names["classifier.1"] = "predictions"
    else:
        names.update({"classifier.0": "Conv_2", "classifier.3": "Logits"})
    return names


def _v2_source_options(layout: str, names: frozenset) -> dict:
    if layout == "torchvision":
        return {"variant": "torchvision"}
    if layout == "keras_legacy_h5":
        return {"variant": "keras"}
    return {}


def _v3_source_options(layout: str, names: frozenset) -> dict:
    if layout == "torchvision":
        return {"variant": "torchvision"}
    if layout == "keras_legacy_h5":
        options = {"variant": "keras"}
        if "Conv_BatchNorm" in names:  # a MobileNetV3 file: SE blocks unless minimalistic
            options["minimalistic"] = not any("squeeze_excite" in n for n in names)
        return options
    return {}


def _keras_v3_mode(options) -> str:
    """keras' MobileNetV3 files: [0, 255] inputs with the in-model Rescaling
    (``include_preprocessing=True``, keras' default), else [-1, 1]."""
    return "none" if options.get("include_preprocessing", True) else "tf"


FAMILY_V2 = Family(
    name="mobilenet_v2",
    head_layers=("predictions",),
    torchvision_names=torchvision_names,
    source_options=_v2_source_options,
    preprocessing={"torchvision": "torch", "keras_legacy_h5": "tf"},
    description="MobileNetV2: inverted residuals, keras or torchvision variant",
)
FAMILY_V3 = Family(
    name="mobilenet_v3",
    head_layers=("Conv_2", "Logits"),
    torchvision_names=torchvision_names,
    source_options=_v3_source_options,
    preprocessing={"torchvision": "torch", "keras_legacy_h5": _keras_v3_mode},
    description="MobileNetV3 Small/Large: squeeze-and-excite, hard swish, keras or "
                "torchvision variant",
)

register_model(ModelSpec(
    name="mobilenet_v2",
    family=FAMILY_V2,
    builder=functools.partial(_build_v2, "mobilenet_v2"),
    default_size=DEFAULT_SIZE,
    min_size=MIN_SIZE,
    num_params=PARAMS["mobilenet_v2"],
    weights=_v2_weights(),
    default_weights="keras",
    description="MobileNetV2, keras.applications or torchvision structure",
))
for _name in V3_BLOCKS:
    register_model(ModelSpec(
        name=_name,
        family=FAMILY_V3,
        builder=functools.partial(_build_v3, _name),
        default_size=DEFAULT_SIZE,
        min_size=MIN_SIZE,
        num_params=PARAMS[_name],
        weights=_v3_weights(_name),
        default_weights="keras",
        description=f"MobileNetV3 {_name.rsplit('_', 1)[-1].title()}, keras.applications or "
                    f"torchvision structure",
    ))


# --- keras.applications-style constructors, with keras' argument order --------


def _create(model_name, **kwargs):
    from multinet.registry import create_model

    kwargs["weights"] = _imagenet_entry(model_name, kwargs)
    return create_model(model_name, **kwargs)


def _imagenet_entry(model_name, kwargs):
    """As in keras.applications, ``weights="imagenet"`` means the published
    file for the ``alpha`` (and ``minimalistic``) asked for; with
    ``variant="torchvision"``, torchvision's checkpoint."""
    weights = kwargs.get("weights")
    if weights != "imagenet":
        return weights
    try:
        alpha = float(kwargs.get("alpha", 1.0))
    except (TypeError, ValueError):
        return weights  # the builder names the bad alpha
    minimalistic = bool(kwargs.get("minimalistic", False))
    source = "torchvision" if kwargs.get("variant") == "torchvision" else "keras_legacy_h5"
    from multinet.registry import get_model_spec

    entries = [e for e in get_model_spec(model_name).weights if e.layout == source]
    for entry in entries:
        options = entry.arch_options
        if options["alpha"] == alpha and options.get("minimalistic", False) == minimalistic:
            return entry.name
    published = ", ".join(
        f"alpha={e.arch_options['alpha']}" + (", minimalistic=True" if e.arch_options.get(
            "minimalistic") else "") for e in entries)
    what = f"alpha={kwargs.get('alpha', 1.0)!r}" + (", minimalistic=True" * minimalistic)
    raise ValueError(f"{model_name}: no ImageNet weights for {what}; published: {published}")


def MobileNetV2(input_shape=None, alpha=1.0, include_top=True, weights=None, input_tensor=None,
                pooling=None, classes=1000, classifier_activation="softmax", name=None, *,
                data_format=None, **model_kwargs) -> keras.Model:
    """MobileNetV2, with ``keras.applications.MobileNetV2``'s arguments in
    its order, plus ``data_format`` and the family options (``variant``,
    ``dropout_rate``); see ``multinet.create_model("mobilenet_v2", ...)``.
    ``weights`` defaults to None (random initialization); ``"imagenet"`` is
    keras' file for ``alpha=1.0``."""
    return _create("mobilenet_v2", input_shape=input_shape, alpha=alpha,
                   include_top=include_top, weights=weights, input_tensor=input_tensor,
                   pooling=pooling, classes=classes,
                   classifier_activation=classifier_activation, name=name,
                   data_format=data_format, **model_kwargs)


def _v3_constructor(model_name, public_name, size):
    def constructor(input_shape=None, alpha=1.0, minimalistic=False, include_top=True,
                    weights=None, input_tensor=None, classes=1000, pooling=None,
                    dropout_rate=0.2, classifier_activation="softmax",
                    include_preprocessing=None, name=public_name, *, data_format=None,
                    **model_kwargs) -> keras.Model:
        return _create(model_name, input_shape=input_shape, alpha=alpha,
                       minimalistic=minimalistic, include_top=include_top, weights=weights,
                       input_tensor=input_tensor, classes=classes, pooling=pooling,
                       dropout_rate=dropout_rate,
                       classifier_activation=classifier_activation,
                       include_preprocessing=include_preprocessing, name=name,
                       data_format=data_format, **model_kwargs)

    constructor.__name__ = constructor.__qualname__ = public_name
    constructor.__doc__ = (
        f"MobileNetV3 {size}, with ``keras.applications.{public_name}``'s arguments in its "
        f"order, plus ``data_format`` and ``variant``; see "
        f"``multinet.create_model({model_name!r}, ...)``. ``weights`` defaults to None "
        f"(random initialization). ``include_preprocessing``: True scales [0, 255] inputs "
        f"to [-1, 1] in the model, as keras does; None (the default) means True for the "
        f"keras variant and False for torchvision's, which has no such layer."
    )
    return constructor


MobileNetV3Small = _v3_constructor("mobilenet_v3_small", "MobileNetV3Small", "Small")
MobileNetV3Large = _v3_constructor("mobilenet_v3_large", "MobileNetV3Large", "Large")
