"""EfficientNet B0 to B7 (Tan and Le, 2019), as keras.applications and
torchvision publish them.

Both sources build the same channel and block plan (width and depth
multipliers, MBConv blocks with squeeze-and-excite, swish) but are not the
same network; ``variant`` selects one's exact structure:

- ``variant="keras"`` (the default, as ``keras.applications.EfficientNetB0``
  ...): the model scales its input itself, a ``Rescaling(1/255)`` then a
  ``Normalization`` layer whose mean and variance are weights of the file
  (inputs in [0, 255], preprocessing mode ``none``); the stem convolution and
  every stride-2 depthwise convolution padded by
  ``imagenet_utils.correct_pad`` (one cell less at the top/left on even
  sizes); BatchNorm epsilon 1e-3. keras' published ImageNet files also need a
  ``Rescaling(1 / sqrt(stddev))`` after the ``Normalization`` that corrects
  the variance those files store (``variance_correction=True``, which the
  ``keras`` weights entry sets, as ``weights="imagenet"`` does in keras); a
  Keras 2 file loaded by path gets none, as in keras.
- ``variant="torchvision"``: every convolution padded ``k // 2`` on each
  side, BatchNorm epsilon 1e-5 (B0 to B4) or 1e-3 (B5 to B7, the ports of
  lukemelas' weights) with PyTorch's momentum, no input scaling in the model
  (``torch`` preprocessing outside; torchvision evaluates its V1 weights
  after a bicubic resize).

Drop-connect (keras) and stochastic depth (torchvision) are the same
per-sample ``Dropout`` on the residual branch, identity at inference. Layer
names are the published keras files' (``stem_conv``, ``block1a_dwconv``,
``block2b_se_reduce``, ``top_conv``, ``predictions``, ``normalization``) in
both variants, so keras' files load by name.
"""

from __future__ import annotations

import functools
import math

import keras
import numpy as np

from multinet import layers
from multinet.models.base import build_model, check_rate
from multinet.models.mobilenet import make_divisible, strided_padding
from multinet.registry import Family, ModelSpec, WeightsSpec, register_model, torchvision_weights

VARIANTS = ("keras", "torchvision")
MIN_SIZE = 32  # keras.applications' limit

# Base blocks (B0), as both sources list them: (expansion, kernel, stride,
# input channels, output channels, repeats).
BLOCKS = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
          (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
          (6, 3, 1, 192, 320, 1))

# (width multiplier, depth multiplier, keras' default size, torchvision's crop
# size, classifier dropout) per model.
MODELS = {
    "efficientnet_b0": (1.0, 1.0, 224, 224, 0.2),
    "efficientnet_b1": (1.0, 1.1, 240, 240, 0.2),
    "efficientnet_b2": (1.1, 1.2, 260, 288, 0.3),
    "efficientnet_b3": (1.2, 1.4, 300, 300, 0.3),
    "efficientnet_b4": (1.4, 1.8, 380, 380, 0.4),
    "efficientnet_b5": (1.6, 2.2, 456, 456, 0.4),
    "efficientnet_b6": (1.8, 2.6, 528, 528, 0.5),
    "efficientnet_b7": (2.0, 3.1, 600, 600, 0.5),
}
PUBLIC_NAMES = {name: f"EfficientNetB{name[-1]}" for name in MODELS}

# Trainable parameters, the same in both variants (torchvision's num_params).
PARAMS = {
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960,
}

# keras.applications' ImageNet statistics: its published files' Normalization
# stores the squared stddev as variance, which variance_correction undoes.
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
DROP_CONNECT_RATE = 0.2  # keras' drop_connect_rate, torchvision's stochastic_depth_prob

_KERAS_ORIGIN = "https://storage.googleapis.com/keras-applications/"
# keras.applications' md5 of each file (with top, without top).
_KERAS_HASHES = {
    "b0": ("902e53a9f72be733fc0bcb005b3ebbac", "50bc09e76180e00e4465e1a485ddc09d"),
    "b1": ("1d254153d4ab51201f1646940f018540", "74c4e6b3e1f6a1eea24c589628592432"),
    "b2": ("b15cce36ff4dcbd00b6dd88e7857a6ad", "111f8e2ac8aa800a7a99e3239f7bfb39"),
    "b3": ("ffd1fdc53d0ce67064dc6a9c7960ede0", "af6d107764bb5b1abb91932881670226"),
    "b4": ("18c95ad55216b8f92d7e70b3a046e2fc", "ebc24e6d6c33eaebbd558eafbeedf1ba"),
    "b5": ("ace28f2a6363774853a83a0b21b9421a", "38879255a25d3c92d5e44e04ae6cec6f"),
    "b6": ("165f6e37dce68623721b423839de8be5", "9ecce42647a20130c1f39a5d4cb75743"),
    "b7": ("8c03f828fec3ef71311cd463b6759d99", "cbcfe4450ddf6f3ad90b1b398090fe4a"),
}
# torchvision's files: (IMAGENET1K_V1 file, resize size), and B1's IMAGENET1K_V2.
_TORCH_FILES = {
    "efficientnet_b0": ("efficientnet_b0_rwightman-7f5810bc.pth", 256),
    "efficientnet_b1": ("efficientnet_b1_rwightman-bac287d4.pth", 256),
    "efficientnet_b2": ("efficientnet_b2_rwightman-c35c1473.pth", 288),
    "efficientnet_b3": ("efficientnet_b3_rwightman-b3899882.pth", 320),
    "efficientnet_b4": ("efficientnet_b4_rwightman-23ab8bcd.pth", 384),
    "efficientnet_b5": ("efficientnet_b5_lukemelas-1a07897c.pth", 456),
    "efficientnet_b6": ("efficientnet_b6_lukemelas-24a108a5.pth", 528),
    "efficientnet_b7": ("efficientnet_b7_lukemelas-c5b4e57e.pth", 600),
}
_TORCH_V2 = {"efficientnet_b1": ("efficientnet_b1-c27df63c.pth", 255)}


def batch_norm_settings(model_name: str, variant: str) -> tuple[float, float]:
    """(epsilon, Keras momentum): keras' defaults (1e-3, 0.99); torchvision's
    B0-B4 PyTorch's defaults (1e-5, momentum 0.1), its B5-B7 (1e-3, 0.01)."""
    if variant == "keras" or model_name in ("efficientnet_b5", "efficientnet_b6",
                                            "efficientnet_b7"):
        return 1e-3, 0.99
    return 1e-5, 0.9


# --- the plan: every block's widths, kernel, stride and drop rate -------------


def plan(model_name: str) -> dict:
    """The stem width, the blocks (keras' names ``block{stage}{letter}_``) and
    the last convolution's width. Both sources round widths with
    ``make_divisible`` and depths up; torchvision's last width is 4 x the last
    block's, keras' the rounded 1280: the same numbers for B0 to B7."""
    width, depth = MODELS[model_name][:2]
    repeats = [int(math.ceil(depth * n)) for *_, n in BLOCKS]
    total, index, blocks = sum(repeats), 0, []
    for stage, ((expansion, kernel, stride, inputs, outputs, _), count) in enumerate(
            zip(BLOCKS, repeats), start=1):
        inputs, outputs = make_divisible(inputs * width), make_divisible(outputs * width)
        for repeat in range(count):
            channels = inputs if repeat == 0 else outputs
            blocks.append(dict(
                prefix=f"block{stage}{chr(ord('a') + repeat)}_", stage=stage, index=repeat,
                inputs=channels, outputs=outputs, expanded=channels * expansion,
                kernel=kernel, stride=stride if repeat == 0 else 1,
                squeeze=max(1, channels // 4), drop_rate=DROP_CONNECT_RATE * index / total))
            index += 1
    last = make_divisible(1280 * width)
    if last != 4 * blocks[-1]["outputs"]:  # never for B0-B7
        raise AssertionError(f"{model_name}: keras and torchvision last widths differ")
    return dict(stem=make_divisible(32 * width), blocks=blocks, last_conv=last)


# --- layers ------------------------------------------------------------------


def _batch_norm(x, fmt, bn, name):
    epsilon, momentum = bn
    return keras.layers.BatchNormalization(axis=layers.channel_axis(fmt), epsilon=epsilon,
                                           momentum=momentum, name=name)(x)


# keras.applications' initializers (variance kept through the depth), drawn
# uniformly rather than from a truncated normal: the same variance.
def _conv_init():
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="uniform")


def _dense_init():
    return keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_out", distribution="uniform")


def _conv(x, fmt, filters, name, kernel=1, strides=1, padding="valid", use_bias=False,
          activation=None):
    return layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=use_bias,
                         activation=activation, kernel_initializer=_conv_init(),
                         data_format=fmt, name=name)(x)


def mbconv(x, fmt, block: dict, *, variant: str, bn):
    """keras' ``block``, torchvision's ``MBConv``: expand 1x1 (unless the
    expansion is 1), depthwise kxk, squeeze-and-excite (swish, sigmoid),
    project 1x1, and where shapes allow the input added after a per-sample
    drop of the branch (identity at inference)."""
    prefix = block["prefix"]
    shortcut = x
    if block["expanded"] != block["inputs"]:
        x = _conv(x, fmt, block["expanded"], prefix + "expand_conv")
        x = _batch_norm(x, fmt, bn, prefix + "expand_bn")
        x = keras.layers.Activation("swish", name=prefix + "expand_activation")(x)
    kernel, stride = block["kernel"], block["stride"]
    padding = "same"
    if stride == 2:
        x = strided_padding(x, fmt, kernel, variant, prefix + "dwconv_pad")
        padding = "valid"
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False,
                               depthwise_initializer=_conv_init(), data_format=fmt,
                               name=prefix + "dwconv")(x)
    x = _batch_norm(x, fmt, bn, prefix + "bn")
    x = keras.layers.Activation("swish", name=prefix + "activation")(x)
    scale = keras.layers.GlobalAveragePooling2D(data_format=fmt, keepdims=True,
                                                name=prefix + "se_squeeze")(x)
    scale = _conv(scale, fmt, block["squeeze"], prefix + "se_reduce", use_bias=True,
                  activation="swish")
    scale = _conv(scale, fmt, block["expanded"], prefix + "se_expand", use_bias=True,
                  activation="sigmoid")
    x = keras.layers.Multiply(name=prefix + "se_excite")([x, scale])
    x = _conv(x, fmt, block["outputs"], prefix + "project_conv")
    x = _batch_norm(x, fmt, bn, prefix + "project_bn")
    if stride == 1 and block["inputs"] == block["outputs"]:
        if block["drop_rate"] > 0:
            x = keras.layers.Dropout(block["drop_rate"], noise_shape=(None, 1, 1, 1),
                                     name=prefix + "drop")(x)
        x = keras.layers.Add(name=prefix + "add")([x, shortcut])
    return x


def _stddev_scale(fmt):
    """keras' variance correction, shaped to broadcast over the channels of
    ``fmt`` whatever the global data format (keras' ``Rescaling`` reshapes a
    1D scale by the global setting)."""
    scale = np.array([1.0 / math.sqrt(s) for s in IMAGENET_STDDEV_RGB], "float32")
    return scale.reshape((1, 1, 3) if fmt == "channels_last" else (3, 1, 1)).tolist()


def _features(x, fmt, model_name, plan, variant, variance_correction):
    bn = batch_norm_settings(model_name, variant)
    if variant == "keras":
        x = keras.layers.Rescaling(1.0 / 255.0, name="rescaling")(x)
        x = layers.Normalization(axis=layers.channel_axis(fmt), name="normalization")(x)
        if variance_correction:
            x = keras.layers.Rescaling(_stddev_scale(fmt), name="rescaling_1")(x)
    x = strided_padding(x, fmt, 3, variant, "stem_conv_pad")
    x = _conv(x, fmt, plan["stem"], "stem_conv", kernel=3, strides=2)
    x = _batch_norm(x, fmt, bn, "stem_bn")
    x = keras.layers.Activation("swish", name="stem_activation")(x)
    for block in plan["blocks"]:
        x = mbconv(x, fmt, block, variant=variant, bn=bn)
    x = _conv(x, fmt, plan["last_conv"], "top_conv")
    x = _batch_norm(x, fmt, bn, "top_bn")
    return keras.layers.Activation("swish", name="top_activation")(x)


def _classifier(x, fmt, classes, activation, dropout_rate):
    x = keras.layers.GlobalAveragePooling2D(data_format=fmt, name="avg_pool")(x)
    if dropout_rate > 0:
        x = keras.layers.Dropout(dropout_rate, name="top_dropout")(x)
    return keras.layers.Dense(classes, activation=activation, kernel_initializer=_dense_init(),
                              name="predictions")(x)


# --- builder -------------------------------------------------------------------


def _build(model_name, *, include_top, input_tensor, input_shape, pooling, classes,
           classifier_activation, data_format, has_weights=False, variant="keras",
           variance_correction=False, dropout_rate=None, compute_format=None,
           default_size=None, name=None):
    if variant not in VARIANTS:
        raise ValueError(f"{model_name}: variant must be one of {VARIANTS}, got {variant!r}")
    variance_correction = bool(variance_correction)
    if variance_correction and variant != "keras":
        raise ValueError(
            f"{model_name}: variance_correction=True corrects keras' in-model Normalization; "
            f"the torchvision variant has none (pass variant='keras')")
    _, _, keras_size, crop_size, default_dropout = MODELS[model_name]
    if dropout_rate is None:
        dropout_rate = default_dropout
    dropout_rate = check_rate(model_name, "dropout_rate", dropout_rate)
    if default_size is None:  # each source's own size (they differ for B2)
        default_size = keras_size if variant == "keras" else crop_size
    return build_model(
        model_name,
        features=functools.partial(_features, model_name=model_name, plan=plan(model_name),
                                   variant=variant, variance_correction=variance_correction),
        classifier=functools.partial(_classifier, dropout_rate=dropout_rate),
        include_top=include_top, input_tensor=input_tensor, input_shape=input_shape,
        pooling=pooling, classes=classes, classifier_activation=classifier_activation,
        data_format=data_format, compute_format=compute_format, default_size=default_size,
        min_size=MIN_SIZE, fixed_top_size=None, has_weights=has_weights, name=name,
        options={"variant": variant, "variance_correction": variance_correction,
                 "dropout_rate": dropout_rate},
    )


# --- weights -------------------------------------------------------------------


def _weights(model_name) -> tuple[WeightsSpec, ...]:
    short = model_name.rsplit("_", 1)[-1]
    top_hash, notop_hash = _KERAS_HASHES[short]
    base = f"{_KERAS_ORIGIN}efficientnet{short}"
    _, _, keras_size, crop_size, _ = MODELS[model_name]
    entries = [WeightsSpec(
        name="keras",
        url=base + ".h5",
        file_hash=top_hash,
        hash_algorithm="md5",
        layout="keras_legacy_h5",
        preprocessing="none",  # [0, 255]: the model scales and normalizes
        input_size=keras_size,
        arch_options={"variant": "keras", "variance_correction": True},
        notop_url=base + "_notop.h5",
        notop_file_hash=notop_hash,
        description="keras.applications ImageNet weights",
    )]
    filename, resize = _TORCH_FILES[model_name]
    entries.append(torchvision_weights(filename, input_size=crop_size, resize_size=resize,
                                       interpolation="bicubic",
                                       arch_options={"variant": "torchvision"}))
    if model_name in _TORCH_V2:
        filename, resize = _TORCH_V2[model_name]
        entries.append(torchvision_weights(filename, name="torchvision_v2",
                                           description="torchvision IMAGENET1K_V2",
                                           input_size=crop_size, resize_size=resize,
                                           arch_options={"variant": "torchvision"}))
    return tuple(entries)


def torchvision_names(model_name: str, options) -> dict[str, str]:
    """torchvision's modules: ``features.0`` the stem (``.0`` conv, ``.1``
    BatchNorm); ``features.S.J.block`` block J of stage S, a Sequential of
    (expand,) depthwise (Conv2dNormActivation: ``.0`` conv, ``.1``
    BatchNorm), squeeze-and-excite (``fc1``, ``fc2``) and project; the
    last ``features`` entry the 1x1 conv before the pool; ``classifier.1``
    the Linear layer."""
    names = {"features.0.0": "stem_conv", "features.0.1": "stem_bn"}
    info = plan(model_name)
    for block in info["blocks"]:
        prefix = block["prefix"]
        module = f"features.{block['stage']}.{block['index']}.block"
        step = 0
        if block["expanded"] != block["inputs"]:
            names[f"{module}.0.0"] = prefix + "expand_conv"
            names[f"{module}.0.1"] = prefix + "expand_bn"
            step = 1
        names[f"{module}.{step}.0"] = prefix + "dwconv"
        names[f"{module}.{step}.1"] = prefix + "bn"
        names[f"{module}.{step + 1}.fc1"] = prefix + "se_reduce"
        names[f"{module}.{step + 1}.fc2"] = prefix + "se_expand"
        names[f"{module}.{step + 2}.0"] = prefix + "project_conv"
        names[f"{module}.{step + 2}.1"] = prefix + "project_bn"
    last = f"features.{len(BLOCKS) + 1}"
    names.update({last + ".0": "top_conv", last + ".1": "top_bn", "classifier.1": "predictions"})
    return names


def _source_options(layout: str, names: frozenset) -> dict:
    """A torchvision checkpoint needs the torchvision variant, a Keras 2 file
    the keras variant (without the variance correction, which keras gives its
    published files only when they are loaded as ``weights="imagenet"``)."""
    if layout == "torchvision":
        return {"variant": "torchvision"}
    if layout == "keras_legacy_h5":
        return {"variant": "keras"}
    return {}


FAMILY = Family(
    name="efficientnet",
    head_layers=("predictions",),
    torchvision_names=torchvision_names,
    source_options=_source_options,
    preprocessing={"torchvision": "torch", "keras_legacy_h5": "none"},
    description="EfficientNet B0-B7: MBConv blocks with squeeze-and-excite, swish; keras "
                "(in-model normalization) or torchvision variant",
)

for _name, (_width, _depth, _keras_size, _crop, _) in MODELS.items():
    register_model(ModelSpec(
        name=_name,
        family=FAMILY,
        builder=functools.partial(_build, _name),
        default_size=_crop,
        min_size=MIN_SIZE,
        num_params=PARAMS[_name],
        weights=_weights(_name),
        default_weights="keras",
        description=f"EfficientNet-B{_name[-1]}, keras.applications or torchvision structure",
    ))


# --- keras.applications-style constructors -------------------------------------


def _constructor(model_name):
    public = PUBLIC_NAMES[model_name]
    keras_name = public.lower()  # keras' default model name, "efficientnetb0"

    def constructor(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
                    pooling=None, classes=1000, classifier_activation="softmax",
                    name=keras_name, *, data_format=None, **model_kwargs) -> keras.Model:
        from multinet.registry import create_model

        if weights == "imagenet" and model_kwargs.get("variant") == "torchvision":
            weights = "torchvision"
        return create_model(model_name, weights=weights, include_top=include_top,
                            input_tensor=input_tensor, input_shape=input_shape,
                            pooling=pooling, classes=classes,
                            classifier_activation=classifier_activation, name=name,
                            data_format=data_format, **model_kwargs)

    constructor.__name__ = constructor.__qualname__ = public
    constructor.__doc__ = (
        f"EfficientNet-B{model_name[-1]}, with ``keras.applications.{public}``'s arguments "
        f"in its order, plus ``data_format`` and the family options (``variant``, "
        f"``variance_correction``, ``dropout_rate``); see "
        f"``multinet.create_model({model_name!r}, ...)``. ``weights=\"imagenet\"`` (the "
        f"default, as in keras) is keras' published file, loaded with its variance "
        f"correction as keras does; with ``variant=\"torchvision\"``, torchvision's "
        f"IMAGENET1K_V1 checkpoint. The keras variant takes [0, 255] inputs.")
    return constructor


EfficientNetB0 = _constructor("efficientnet_b0")
EfficientNetB1 = _constructor("efficientnet_b1")
EfficientNetB2 = _constructor("efficientnet_b2")
EfficientNetB3 = _constructor("efficientnet_b3")
EfficientNetB4 = _constructor("efficientnet_b4")
EfficientNetB5 = _constructor("efficientnet_b5")
EfficientNetB6 = _constructor("efficientnet_b6")
EfficientNetB7 = _constructor("efficientnet_b7")
