"""ResNet 18/34/50/101/152 (He et al., 2015), as torchvision and keras.applications build it.

The two sources publish different networks under the same name, so
``variant`` selects one exactly:

- ``variant="torchvision"`` (ResNet v1.5): in a bottleneck the stride sits in
  the 3x3 convolution; BasicBlocks for 18/34; convolutions without bias;
  BatchNorm epsilon 1e-5; ``torch`` preprocessing. Layer names follow
  torchvision's modules with '_' for '.' (``conv1``, ``bn1``,
  ``layer1_0_conv1``, ``layer1_0_downsample_0``, ``fc``).
- ``variant="keras"`` (ResNet v1, keras.applications ResNet50/101/152 only):
  the stride sits in the first 1x1 convolution of a stage; convolutions with
  bias; BatchNorm epsilon 1.001e-5; ``caffe`` preprocessing. Layer names are
  keras.applications' (``conv1_conv``, ``conv2_block1_1_conv``,
  ``conv2_block1_0_conv`` for the shortcut, ``predictions``), so its
  published files load by name.

The default variant is the one of the model's default weights: ``keras`` for
50/101/152 (as ``keras.applications.ResNet50``), ``torchvision`` for 18/34.
"""

from __future__ import annotations

import functools

import keras

from multinet import layers
from multinet.models.base import build_model, make_constructor, min_input_size
from multinet.registry import Family, ModelSpec, WeightsSpec, register_model, torchvision_weights

TORCHVISION, KERAS = "torchvision", "keras"
VARIANTS = (TORCHVISION, KERAS)
# Blocks per stage, and whether the blocks are bottlenecks (1x1, 3x3, 1x1 x4).
DEPTHS = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True),
}
WIDTHS = (64, 128, 256, 512)
EXPANSION = 4  # a bottleneck's output has 4x its width
DEFAULT_SIZE = 224

# Keras' count_params() with the 1000-class top, per variant: the keras figures
# are keras.applications' (tf-keras 2.21); torchvision's Weights.meta counts
# parameters only (resnet18: 11,689,512), to which Keras adds the BatchNorm
# moving statistics, torchvision's buffers (resnet18: 9,600).
PARAMS = {
    ("resnet18", TORCHVISION): 11_699_112,
    ("resnet34", TORCHVISION): 21_814_696,
    ("resnet50", TORCHVISION): 25_610_152,
    ("resnet101", TORCHVISION): 44_654_504,
    ("resnet152", TORCHVISION): 60_344_232,
    ("resnet50", KERAS): 25_636_712,
    ("resnet101", KERAS): 44_707_176,
    ("resnet152", KERAS): 60_419_944,
}
TORCHVISION_PARAMS = {  # torchvision's num_params: trainable parameters only
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}

_TORCH_FILES = {
    "resnet18": ("resnet18-f37072fd.pth", None),
    "resnet34": ("resnet34-b627a593.pth", None),
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
    "resnet101": ("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth"),
    "resnet152": ("resnet152-394f9c45.pth", "resnet152-f82ba261.pth"),
}
_KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
_KERAS_HASHES = {  # (top, notop) md5, as keras/src/applications/resnet.py publishes them
    "resnet50": ("2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": ("f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": ("100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
}

_EPSILON = {TORCHVISION: 1e-5, KERAS: 1.001e-5}
# torch's BatchNorm momentum 0.1 is Keras' 0.9; keras.applications keeps Keras' 0.99.
_MOMENTUM = {TORCHVISION: 0.9, KERAS: 0.99}


def default_variant(model_name: str) -> str:
    return KERAS if model_name in _KERAS_HASHES else TORCHVISION


def check_variant(model_name: str, variant) -> str:
    """``variant`` validated for ``model_name`` (None: the default one)."""
    if variant is None:
        return default_variant(model_name)
    if variant not in VARIANTS:
        raise ValueError(f"{model_name}: variant must be one of {VARIANTS}, got {variant!r}")
    if variant == KERAS and model_name not in _KERAS_HASHES:
        raise ValueError(
            f"{model_name}: variant 'keras' exists only for {', '.join(_KERAS_HASHES)} "
            f"(keras.applications has no {model_name}); use variant='torchvision'")
    return variant


def _output_size(size: int) -> int | None:
    # conv1 (7x7/2, padding 3), the max pool (3x3/2, padding 1) and the first
    # block of stages 2-4 (3x3/2 padding 1 in torchvision, 1x1/2 unpadded in
    # keras) each give (size - 1) // 2 + 1.
    for _ in range(2 + len(WIDTHS) - 1):
        size = (size - 1) // 2 + 1
    return size if size >= 1 else None


MIN_SIZE = min_input_size(_output_size)


def _conv(filters, kernel, fmt, name, variant, strides=1, padding="valid"):
    if variant == KERAS:  # keras.applications' defaults: bias, Glorot uniform
        return layers.Conv2D(filters, kernel, strides=strides, padding=padding,
                             data_format=fmt, name=name)
    # torchvision: no bias, kaiming_normal_(mode="fan_out", nonlinearity="relu")
    return layers.Conv2D(
        filters, kernel, strides=strides, padding=padding, use_bias=False, data_format=fmt,
        kernel_initializer=keras.initializers.VarianceScaling(
            2.0, mode="fan_out", distribution="untruncated_normal"),
        name=name)


def _batch_norm(fmt, name, variant):
    return keras.layers.BatchNormalization(
        axis=layers.channel_axis(fmt), epsilon=_EPSILON[variant], momentum=_MOMENTUM[variant],
        name=name)


def _conv3x3(x, filters, strides, fmt, name, variant):
    """A 3x3 convolution padded by 1 on every side, as torchvision's ``conv3x3``:
    Keras' ``padding="same"`` pads a stride-2 convolution of an even size on the
    bottom/right only, so that case pads explicitly."""
    if strides == 1:
        return _conv(filters, 3, fmt, name, variant, padding="same")(x)
    x = keras.layers.ZeroPadding2D(1, data_format=fmt, name=name + "_pad")(x)
    return _conv(filters, 3, fmt, name, variant, strides=strides)(x)


def basic_block(x, width, strides, downsample, fmt, name):
    """torchvision's BasicBlock: two 3x3 convolutions (the first with the stride)."""
    shortcut = x
    if downsample:
        shortcut = _conv(width, 1, fmt, name + "_downsample_0", TORCHVISION, strides)(x)
        shortcut = _batch_norm(fmt, name + "_downsample_1", TORCHVISION)(shortcut)
    x = _conv3x3(x, width, strides, fmt, name + "_conv1", TORCHVISION)
    x = _batch_norm(fmt, name + "_bn1", TORCHVISION)(x)
    x = keras.layers.ReLU(name=name + "_relu1")(x)
    x = _conv3x3(x, width, 1, fmt, name + "_conv2", TORCHVISION)
    x = _batch_norm(fmt, name + "_bn2", TORCHVISION)(x)
    x = keras.layers.Add(name=name + "_add")([x, shortcut])
    return keras.layers.ReLU(name=name + "_out")(x)


def bottleneck_v15(x, width, strides, downsample, fmt, name):
    """torchvision's Bottleneck (ResNet v1.5): 1x1, 3x3 with the stride, 1x1 x4."""
    shortcut = x
    if downsample:
        shortcut = _conv(width * EXPANSION, 1, fmt, name + "_downsample_0", TORCHVISION,
                         strides)(x)
        shortcut = _batch_norm(fmt, name + "_downsample_1", TORCHVISION)(shortcut)
    x = _conv(width, 1, fmt, name + "_conv1", TORCHVISION)(x)
    x = _batch_norm(fmt, name + "_bn1", TORCHVISION)(x)
    x = keras.layers.ReLU(name=name + "_relu1")(x)
    x = _conv3x3(x, width, strides, fmt, name + "_conv2", TORCHVISION)
    x = _batch_norm(fmt, name + "_bn2", TORCHVISION)(x)
    x = keras.layers.ReLU(name=name + "_relu2")(x)
    x = _conv(width * EXPANSION, 1, fmt, name + "_conv3", TORCHVISION)(x)
    x = _batch_norm(fmt, name + "_bn3", TORCHVISION)(x)
    x = keras.layers.Add(name=name + "_add")([x, shortcut])
    return keras.layers.ReLU(name=name + "_out")(x)


def bottleneck_v1(x, width, strides, shortcut_conv, fmt, name):
    """keras.applications' ``block1`` (ResNet v1): the stride in the first 1x1."""
    shortcut = x
    if shortcut_conv:
        shortcut = _conv(width * EXPANSION, 1, fmt, name + "_0_conv", KERAS, strides)(x)
        shortcut = _batch_norm(fmt, name + "_0_bn", KERAS)(shortcut)
    x = _conv(width, 1, fmt, name + "_1_conv", KERAS, strides)(x)
    x = _batch_norm(fmt, name + "_1_bn", KERAS)(x)
    x = keras.layers.Activation("relu", name=name + "_1_relu")(x)
    x = _conv(width, 3, fmt, name + "_2_conv", KERAS, padding="same")(x)
    x = _batch_norm(fmt, name + "_2_bn", KERAS)(x)
    x = keras.layers.Activation("relu", name=name + "_2_relu")(x)
    x = _conv(width * EXPANSION, 1, fmt, name + "_3_conv", KERAS)(x)
    x = _batch_norm(fmt, name + "_3_bn", KERAS)(x)
    x = keras.layers.Add(name=name + "_add")([shortcut, x])
    return keras.layers.Activation("relu", name=name + "_out")(x)


def _torchvision_features(x, fmt, model_name):
    depths, bottleneck = DEPTHS[model_name]
    x = keras.layers.ZeroPadding2D(3, data_format=fmt, name="conv1_pad")(x)
    x = _conv(64, 7, fmt, "conv1", TORCHVISION, strides=2)(x)
    x = _batch_norm(fmt, "bn1", TORCHVISION)(x)
    x = keras.layers.ReLU(name="relu")(x)
    # torchvision pads its max pool with -inf; after a ReLU zeros are the same.
    x = keras.layers.ZeroPadding2D(1, data_format=fmt, name="maxpool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, data_format=fmt, name="maxpool")(x)
    block = bottleneck_v15 if bottleneck else basic_block
    channels = 64
    for stage, (depth, width) in enumerate(zip(depths, WIDTHS), start=1):
        out_channels = width * (EXPANSION if bottleneck else 1)
        for index in range(depth):
            strides = 2 if stage > 1 and index == 0 else 1
            downsample = strides != 1 or channels != out_channels
            x = block(x, width, strides, downsample, fmt, f"layer{stage}_{index}")
            channels = out_channels
    return x


def _keras_features(x, fmt, model_name):
    depths, _ = DEPTHS[model_name]
    x = keras.layers.ZeroPadding2D(3, data_format=fmt, name="conv1_pad")(x)
    x = _conv(64, 7, fmt, "conv1_conv", KERAS, strides=2)(x)
    x = _batch_norm(fmt, "conv1_bn", KERAS)(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(1, data_format=fmt, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, data_format=fmt, name="pool1_pool")(x)
    for stage, (depth, width) in enumerate(zip(depths, WIDTHS), start=2):
        for index in range(1, depth + 1):
            strides = 2 if stage > 2 and index == 1 else 1
            x = bottleneck_v1(x, width, strides, index == 1, fmt, f"conv{stage}_block{index}")
    return x


def _classifier(x, fmt, classes, activation, variant):
    pool, dense = ("avg_pool", "predictions") if variant == KERAS else ("avgpool", "fc")
    x = keras.layers.GlobalAveragePooling2D(data_format=fmt, name=pool)(x)
    return keras.layers.Dense(classes, activation=activation, name=dense)(x)


def _build(model_name, *, include_top, input_tensor, input_shape, pooling, classes,
           classifier_activation, data_format, has_weights=False, variant=None,
           compute_format=None, default_size=DEFAULT_SIZE, name=None):
    variant = check_variant(model_name, variant)
    features = _keras_features if variant == KERAS else _torchvision_features
    return build_model(
        model_name,
        features=functools.partial(features, model_name=model_name),
        classifier=functools.partial(_classifier, variant=variant),
        include_top=include_top, input_tensor=input_tensor, input_shape=input_shape,
        pooling=pooling, classes=classes, classifier_activation=classifier_activation,
        data_format=data_format, compute_format=compute_format,
        default_size=default_size, min_size=MIN_SIZE, fixed_top_size=None,
        has_weights=has_weights, name=name, options={"variant": variant},
    )


def _weights(model_name):
    v1, v2 = _TORCH_FILES[model_name]
    entries = [torchvision_weights(v1, arch_options={"variant": TORCHVISION})]
    if v2:
        entries.append(torchvision_weights(
            v2, name="torchvision_v2", description="torchvision IMAGENET1K_V2",
            resize_size=232, arch_options={"variant": TORCHVISION}))
    if model_name in _KERAS_HASHES:
        top_hash, notop_hash = _KERAS_HASHES[model_name]
        base = f"{_KERAS_ORIGIN}{model_name}_weights_tf_dim_ordering_tf_kernels"
        entries.insert(0, WeightsSpec(
            name="keras",
            url=base + ".h5",
            file_hash=top_hash,
            hash_algorithm="md5",
            layout="keras_legacy_h5",
            preprocessing="caffe",
            input_size=224,
            arch_options={"variant": KERAS},
            notop_url=base + "_notop.h5",
            notop_file_hash=notop_hash,
            description="keras.applications ImageNet weights (ResNet v1)",
        ))
    return tuple(entries)


def torchvision_names(model_name: str, options) -> dict[str, str]:
    """torchvision's module ``layer{s}.{i}.conv1`` is the layer
    ``layer{s}_{i}_conv1``: every weighted module's name with '_' for '.'."""
    if options.get("variant", TORCHVISION) != TORCHVISION:
        raise ValueError(
            f"{model_name} variant {options['variant']!r} has no torchvision layout; "
            f"torchvision checkpoints need a model built with variant='torchvision'")
    depths, bottleneck = DEPTHS[model_name]
    names = ["conv1", "bn1", "fc"]
    convs = 3 if bottleneck else 2
    for stage, depth in enumerate(depths, start=1):
        for index in range(depth):
            prefix = f"layer{stage}.{index}."
            for k in range(1, convs + 1):
                names += [f"{prefix}conv{k}", f"{prefix}bn{k}"]
            if index == 0 and (stage > 1 or bottleneck):
                names += [f"{prefix}downsample.0", f"{prefix}downsample.1"]
    return {module: module.replace(".", "_") for module in names}


def source_options(layout: str, names: frozenset) -> dict:
    """torchvision checkpoints need the torchvision variant; a Keras file
    (legacy HDF5 or a mapping of layer names) tells its variant by its names."""
    if layout == "torchvision":
        return {"variant": TORCHVISION}
    if "conv1_conv" in names:
        return {"variant": KERAS}
    if "conv1" in names and "bn1" in names:
        return {"variant": TORCHVISION}
    return {}


FAMILY = Family(
    name="resnet",
    head_layers=("fc", "predictions"),
    torchvision_names=torchvision_names,
    source_options=source_options,
    preprocessing={"torchvision": "torch", "keras_legacy_h5": "caffe"},
    description="ResNet 18/34/50/101/152: torchvision v1.5 or keras.applications v1",
)

for _model_name in DEPTHS:
    _entries = _weights(_model_name)
    _default = default_variant(_model_name)
    register_model(ModelSpec(
        name=_model_name,
        family=FAMILY,
        builder=functools.partial(_build, _model_name, variant=_default),
        default_size=DEFAULT_SIZE,
        min_size=MIN_SIZE,
        num_params=PARAMS[(_model_name, _default)],
        weights=_entries,
        default_weights=_entries[0].name,
        description=(f"ResNet-{_model_name[6:]}, variant {_default!r} by default; "
                     f"torchvision counts {TORCHVISION_PARAMS[_model_name]:,} parameters "
                     f"(Keras also counts the BatchNorm statistics)"),
    ))

_CONSTRUCTOR_NOTE = "``variant`` 'keras' (ResNet v1, the default) or 'torchvision' (v1.5)"
ResNet18 = make_constructor("resnet18", "ResNet18", "ResNet-18 (torchvision's BasicBlocks).")
ResNet34 = make_constructor("resnet34", "ResNet34", "ResNet-34 (torchvision's BasicBlocks).")
ResNet50 = make_constructor(
    "resnet50", "ResNet50", f"ResNet-50, as keras.applications.ResNet50; {_CONSTRUCTOR_NOTE}.")
ResNet101 = make_constructor(
    "resnet101", "ResNet101",
    f"ResNet-101, as keras.applications.ResNet101; {_CONSTRUCTOR_NOTE}.")
ResNet152 = make_constructor(
    "resnet152", "ResNet152",
    f"ResNet-152, as keras.applications.ResNet152; {_CONSTRUCTOR_NOTE}.")
