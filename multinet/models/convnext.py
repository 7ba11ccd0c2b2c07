"""ConvNeXt Tiny/Small/Base/Large (Liu et al., 2022), as keras.applications
and torchvision publish them.

The two sources build the same network: a 4x4/4 stem convolution and a
LayerNorm; four stages of blocks (7x7 depthwise convolution, LayerNorm,
pointwise 4x expansion, exact GELU, pointwise projection, a per-channel layer
scale, plus the input); between stages a LayerNorm and a 2x2/2 convolution;
global average pooling, a LayerNorm and the classifier. Every LayerNorm works
over the channels with epsilon 1e-6, in either data format (axis -1 or 1).
Nothing is padded, so any input size gives the same cells in both.
Stochastic depth, which both use in training, is the identity at inference
and is left out.

What differs is where the input is normalized, which
``include_preprocessing`` selects:

- ``include_preprocessing=True`` (keras.applications' default, and the
  published keras files'): a ``Normalization`` layer before the stem with
  ImageNet's mean and variance as constants (scaled to [0, 255]; nothing is
  stored in the file), so the model takes [0, 255] RGB inputs (``none``
  preprocessing).
- ``include_preprocessing=False`` (torchvision's structure): no such layer,
  the inputs are ``torch``-normalized outside the model.

A weights file decides it from its content: a torchvision state dict needs
False; a Keras 2 file has the ``<model>_prestem_normalization`` layer or not.

Layer names are the published keras files' (tf.keras) in both cases:
``convnext_tiny_stem_conv``, ``convnext_tiny_stage_0_block_0_depthwise_conv``,
``..._layernorm``, ``..._pointwise_conv_1``, ``..._pointwise_conv_2``,
``..._layer_scale``, ``convnext_tiny_downsampling_layernorm_0``,
``convnext_tiny_downsampling_conv_0``, ``convnext_tiny_head_layernorm``,
``convnext_tiny_head_dense``. The keras files keep the stem and the
downsampling layers in nested ``Sequential`` models (``convnext_tiny_stem``,
``convnext_tiny_downsampling_block_0``), which the legacy reader splits into
their layers. The depthwise convolution is a grouped ``Conv2D`` (kernel
(7, 7, 1, channels)) as in keras; the pointwise convolutions are
``ChannelDense`` layers (a Dense kernel (in, out) over the channel axis).

With ``include_top=False`` the features end, as in keras.applications, in a
LayerNorm over the channels after the pooling (``pooling=None``: at every
position): the head's ``convnext_tiny_head_layernorm``, so a full file loads
with only ``convnext_tiny_head_dense`` left out, and ``pooling="avg"`` gives
the input of torchvision's final Linear.
"""

from __future__ import annotations

import functools

import keras

from multinet import layers
from multinet.models.base import build_model
from multinet.registry import Family, ModelSpec, WeightsSpec, register_model, torchvision_weights

DEFAULT_SIZE = 224
MIN_SIZE = 32  # keras.applications' limit; the last stage is then 1x1
EPSILON = 1e-6
LAYER_SCALE = 1e-6  # the layer scales' initial value in both sources
# Blocks per stage and stage widths (torchvision's CNBlockConfig, keras' MODEL_CONFIGS).
CONFIGS = {
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
}
# Parameters with the 1000-class top: torchvision's num_params and keras'
# count_params() alike (no buffers, no weights in the Normalization layer).
PARAMS = {
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
}
# torchvision IMAGENET1K_V1 files and their evaluation resize (crop 224, bilinear).
_TORCH_FILES = {
    "convnext_tiny": ("convnext_tiny-983f1562.pth", 236),
    "convnext_small": ("convnext_small-0c510722.pth", 230),
    "convnext_base": ("convnext_base-6075fbad.pth", 232),
    "convnext_large": ("convnext_large-ea097f82.pth", 232),
}
_KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/convnext/"
_KERAS_HASHES = {  # (top, notop) sha256, as keras/src/applications/convnext.py publishes them
    "convnext_tiny": ("8ae6e78ce2933352b1ef4008e6dd2f17bc40771563877d156bc6426c7cf503ff",
                      "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1"),
    "convnext_small": ("ce1277d8f1ee5a0ef0e171469089c18f5233860ceaf9b168049cb9263fd7483c",
                       "6fc8009faa2f00c1c1dfce59feea9b0745eb260a7dd11bee65c8e20843da6eab"),
    "convnext_base": ("52cbb006d3dadd03f6e095a8ca1aca47aecdd75acb4bc74bce1f5c695d0086e6",
                      "40a20c5548a5e9202f69735ecc06c990e6b7c9d2de39f0361e27baeb24cb7c45"),
    "convnext_large": ("070c5ed9ed289581e477741d3b34beffa920db8cf590899d6d2c67fba2a198a6",
                       "96f02b6f0753d4f543261bc9d09bed650f24dd6bc02ddde3066135b63d23a1cd"),
}
# keras' PreStem: ImageNet's mean and variance for [0, 255] inputs.
_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_VARIANCE = ((0.229 * 255) ** 2, (0.224 * 255) ** 2, (0.225 * 255) ** 2)


def _layer_norm(x, fmt, name, axis=None):
    axis = layers.channel_axis(fmt) if axis is None else axis
    return layers.LayerNormalization(axis=axis, epsilon=EPSILON, name=name)(x)


def convnext_block(x, fmt, channels, name):
    """Depthwise 7x7 (bias), LayerNorm, pointwise x4, GELU, pointwise, layer
    scale, plus the input (keras' ``ConvNeXtBlock``, torchvision's ``CNBlock``)."""
    shortcut = x
    x = layers.Conv2D(channels, 7, padding="same", groups=channels, data_format=fmt,
                      name=name + "_depthwise_conv")(x)
    x = _layer_norm(x, fmt, name + "_layernorm")
    x = layers.ChannelDense(4 * channels, data_format=fmt, name=name + "_pointwise_conv_1")(x)
    x = layers.GELU(name=name + "_gelu")(x)  # exact, as nn.GELU()
    x = layers.ChannelDense(channels, data_format=fmt, name=name + "_pointwise_conv_2")(x)
    x = layers.LayerScale(LAYER_SCALE, axis=layers.channel_axis(fmt),
                          name=name + "_layer_scale")(x)
    return keras.layers.Add(name=name + "_add")([shortcut, x])


def _features(x, fmt, model_name, include_preprocessing):
    depths, widths = CONFIGS[model_name]
    if include_preprocessing:
        x = layers.Normalization(axis=layers.channel_axis(fmt), mean=_MEAN,
                                variance=_VARIANCE, name=model_name + "_prestem_normalization")(x)
    x = layers.Conv2D(widths[0], 4, strides=4, data_format=fmt, name=model_name + "_stem_conv")(x)
    x = _layer_norm(x, fmt, model_name + "_stem_layernorm")
    for stage, (depth, width) in enumerate(zip(depths, widths)):
        if stage:
            index = stage - 1
            x = _layer_norm(x, fmt, f"{model_name}_downsampling_layernorm_{index}")
            x = layers.Conv2D(width, 2, strides=2, data_format=fmt,
                              name=f"{model_name}_downsampling_conv_{index}")(x)
        for block in range(depth):
            x = convnext_block(x, fmt, width, f"{model_name}_stage_{stage}_block_{block}")
    return x


def _classifier(x, fmt, classes, activation, model_name):
    x = keras.layers.GlobalAveragePooling2D(data_format=fmt, name=model_name + "_head_gap")(x)
    x = _layer_norm(x, fmt, model_name + "_head_layernorm", axis=-1)
    return keras.layers.Dense(classes, activation=activation, name=model_name + "_head_dense")(x)


def _notop_head(x, fmt, model_name):
    """keras.applications' LayerNorm after the (optional) pooling of a model
    without its top: over the channels, pooled or at every position."""
    axis = -1 if len(x.shape) == 2 else layers.channel_axis(fmt)
    return _layer_norm(x, fmt, model_name + "_head_layernorm", axis=axis)


def _build(model_name, *, include_top, input_tensor, input_shape, pooling, classes,
           classifier_activation, data_format, has_weights=False, include_preprocessing=None,
           compute_format=None, default_size=DEFAULT_SIZE, name=None):
    if include_preprocessing is None:  # keras' default
        include_preprocessing = True
    if not isinstance(include_preprocessing, bool):
        raise ValueError(f"{model_name}: include_preprocessing must be True or False, got "
                         f"{include_preprocessing!r}")
    return build_model(
        model_name,
        features=functools.partial(_features, model_name=model_name,
                                   include_preprocessing=include_preprocessing),
        classifier=functools.partial(_classifier, model_name=model_name),
        notop_head=functools.partial(_notop_head, model_name=model_name),
        include_top=include_top, input_tensor=input_tensor, input_shape=input_shape,
        pooling=pooling, classes=classes, classifier_activation=classifier_activation,
        data_format=data_format, compute_format=compute_format, default_size=default_size,
        min_size=MIN_SIZE, fixed_top_size=None, has_weights=has_weights, name=name,
        options={"include_preprocessing": include_preprocessing},
    )


# --- weights -------------------------------------------------------------------


def _weights(model_name):
    filename, resize = _TORCH_FILES[model_name]
    top, notop = _KERAS_HASHES[model_name]
    return (
        WeightsSpec(
            name="keras",
            url=f"{_KERAS_ORIGIN}{model_name}.h5",
            file_hash=top,
            hash_algorithm="sha256",
            layout="keras_legacy_h5",
            preprocessing="none",  # the model normalizes [0, 255] inputs itself
            input_size=224,
            arch_options={"include_preprocessing": True},
            notop_url=f"{_KERAS_ORIGIN}{model_name}_notop.h5",
            notop_file_hash=notop,
            description="keras.applications ImageNet weights (in-model normalization)",
        ),
        torchvision_weights(filename, resize_size=resize,
                            arch_options={"include_preprocessing": False}),
    )


def torchvision_names(model_name: str, options) -> dict[str, str]:
    """torchvision's modules: ``features.0`` the stem (``.0`` conv, ``.1``
    LayerNorm2d); ``features.1/3/5/7`` the stages, whose block ``j`` holds
    ``block.0`` (depthwise conv), ``block.2`` (LayerNorm), ``block.3`` and
    ``block.5`` (the Linear pointwise layers) and its own ``layer_scale``;
    ``features.2/4/6`` the downsampling (``.0`` LayerNorm2d, ``.1`` conv);
    ``classifier.0`` (LayerNorm2d) and ``classifier.2`` (Linear) the head."""
    depths, _ = CONFIGS[model_name]
    names = {"features.0.0": f"{model_name}_stem_conv",
             "features.0.1": f"{model_name}_stem_layernorm",
             "classifier.0": f"{model_name}_head_layernorm",
             "classifier.2": f"{model_name}_head_dense"}
    for stage, depth in enumerate(depths):
        if stage:
            module, index = f"features.{2 * stage}", stage - 1
            names[module + ".0"] = f"{model_name}_downsampling_layernorm_{index}"
            names[module + ".1"] = f"{model_name}_downsampling_conv_{index}"
        for block in range(depth):
            module = f"features.{2 * stage + 1}.{block}"
            prefix = f"{model_name}_stage_{stage}_block_{block}"
            names.update({module + ".block.0": prefix + "_depthwise_conv",
                          module + ".block.2": prefix + "_layernorm",
                          module + ".block.3": prefix + "_pointwise_conv_1",
                          module + ".block.5": prefix + "_pointwise_conv_2",
                          module: prefix + "_layer_scale"})
    return names


def keras_names(model_name: str, options) -> dict[str, str]:
    """keras.applications' model without its top ends in an auto-named
    ``layer_normalization``: the head's LayerNorm here."""
    return {"layer_normalization": f"{model_name}_head_layernorm"}


def source_options(layout: str, names: frozenset) -> dict:
    """torchvision checkpoints: no in-model normalization; a Keras 2 file: as
    its model had it (a ``*_prestem_normalization`` layer)."""
    if layout == "torchvision":
        return {"include_preprocessing": False}
    if layout == "keras_legacy_h5":
        return {"include_preprocessing": any(n.endswith("_prestem_normalization")
                                             for n in names)}
    return {}


def _mode(options) -> str:
    """[0, 255] inputs with the in-model normalization, else torch's."""
    return "none" if options.get("include_preprocessing", True) else "torch"


FAMILY = Family(
    name="convnext",
    head_layers=tuple(f"{name}_head_dense" for name in CONFIGS),
    torchvision_names=torchvision_names,
    keras_names=keras_names,
    source_options=source_options,
    preprocessing={"torchvision": _mode, "keras_legacy_h5": _mode},
    description="ConvNeXt Tiny/Small/Base/Large: LayerNorm over channels, layer scale; "
                "keras' in-model normalization or torchvision's outside",
)

for _model_name in CONFIGS:
    register_model(ModelSpec(
        name=_model_name,
        family=FAMILY,
        builder=functools.partial(_build, _model_name),
        default_size=DEFAULT_SIZE,
        min_size=MIN_SIZE,
        num_params=PARAMS[_model_name],
        weights=_weights(_model_name),
        default_weights="keras",
        description=f"ConvNeXt {_model_name.split('_')[1].title()}, keras.applications or "
                    f"torchvision weights",
    ))


# --- keras.applications-style constructors, with keras' argument order --------


def _constructor(model_name, public_name):
    def constructor(include_top=True, include_preprocessing=None, weights="imagenet",
                    input_tensor=None, input_shape=None, pooling=None, classes=1000,
                    classifier_activation="softmax", name=model_name, *, data_format=None,
                    **model_kwargs) -> keras.Model:
        from multinet.registry import create_model

        if include_preprocessing is not None:
            model_kwargs["include_preprocessing"] = include_preprocessing
        return create_model(model_name, weights=weights, include_top=include_top,
                            input_tensor=input_tensor, input_shape=input_shape,
                            pooling=pooling, classes=classes,
                            classifier_activation=classifier_activation, name=name,
                            data_format=data_format, **model_kwargs)

    size = model_name.split("_")[1].title()
    constructor.__name__ = constructor.__qualname__ = public_name
    constructor.__doc__ = (
        f"ConvNeXt {size}, with ``keras.applications.{public_name}``'s arguments in its "
        f"order, plus ``data_format``; see ``multinet.create_model({model_name!r}, ...)``. "
        f"``weights`` defaults to ``\"imagenet\"`` (keras' file), ``\"torchvision\"`` names "
        f"torchvision's. ``include_preprocessing``: True normalizes [0, 255] inputs in the "
        f"model, as keras does; None (the default) follows the weights (True for keras' "
        f"files, False for torchvision's) and is True without weights."
    )
    return constructor


ConvNeXtTiny = _constructor("convnext_tiny", "ConvNeXtTiny")
ConvNeXtSmall = _constructor("convnext_small", "ConvNeXtSmall")
ConvNeXtBase = _constructor("convnext_base", "ConvNeXtBase")
ConvNeXtLarge = _constructor("convnext_large", "ConvNeXtLarge")
