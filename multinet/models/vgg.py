"""VGG 11/13/16/19 (Simonyan & Zisserman, 2014), as in keras.applications.

Layer names follow keras.applications (``block1_conv1`` ... ``fc1``, ``fc2``,
``predictions``), so its published files load by name. The torchvision head
(AdaptiveAvgPool2d(7, 7), Linear, ReLU, Dropout, ...) is the same function at
224x224 in inference, so torchvision checkpoints load into the same model.
"""

from __future__ import annotations

import functools

import keras

from multinet import layers
from multinet.models.base import build_model, check_rate, make_constructor, min_input_size
from multinet.registry import Family, ModelSpec, WeightsSpec, register_model, torchvision_weights

# Convolutions per block for each variant; the widths are shared.
DEPTHS = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
WIDTHS = (64, 128, 256, 512, 512)
TOP_SIZE = 224  # fc1 expects 7x7x512 features

PARAMS = {
    "vgg11": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
}

_KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/"
_TORCH_FILES = {
    "vgg11": "vgg11-8a719046.pth",
    "vgg13": "vgg13-19584684.pth",
    "vgg16": "vgg16-397923af.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
}
_KERAS_HASHES = {
    "vgg16": ("64373286793e3c8b2b4e3219cbf3544b", "6d6bbae143d832006294945121d1f1fc"),
    "vgg19": ("cbe5617147190e668d6c5d5026f83318", "253f8cb515780f3b799900260a226db6"),
}


def _output_size(size: int) -> int | None:
    for _ in WIDTHS:
        if size < 2:
            return None
        size //= 2
    return size


MIN_SIZE = min_input_size(_output_size)


def _features(x, fmt, depths):
    for block, (depth, width) in enumerate(zip(depths, WIDTHS), start=1):
        for conv in range(1, depth + 1):
            x = layers.Conv2D(
                width, 3, padding="same", activation="relu", data_format=fmt,
                name=f"block{block}_conv{conv}",
            )(x)
        x = layers.MaxPooling2D(2, strides=2, data_format=fmt, name=f"block{block}_pool")(x)
    return x


def _classifier(x, fmt, classes, activation, dropout):
    x = keras.layers.Flatten(data_format=fmt, name="flatten")(x)
    for name in ("fc1", "fc2"):
        x = keras.layers.Dense(4096, activation="relu", name=name)(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return keras.layers.Dense(classes, activation=activation, name="predictions")(x)


def _build(variant, *, include_top, input_tensor, input_shape, pooling, classes,
           classifier_activation, data_format, has_weights=False, dropout=0.0,
           compute_format=None, default_size=TOP_SIZE, name=None):
    dropout = check_rate(variant, "dropout", dropout)
    return build_model(
        variant,
        features=functools.partial(_features, depths=DEPTHS[variant]),
        classifier=functools.partial(_classifier, dropout=dropout),
        include_top=include_top, input_tensor=input_tensor, input_shape=input_shape,
        pooling=pooling, classes=classes, classifier_activation=classifier_activation,
        data_format=data_format, compute_format=compute_format,
        default_size=default_size, min_size=MIN_SIZE, fixed_top_size=TOP_SIZE,
        has_weights=has_weights, name=name, options={"dropout": dropout},
    )


def _weights(variant):
    entries = [torchvision_weights(_TORCH_FILES[variant])]
    if variant in _KERAS_HASHES:
        top_hash, notop_hash = _KERAS_HASHES[variant]
        base = f"{_KERAS_ORIGIN}{variant}/{variant}_weights_tf_dim_ordering_tf_kernels"
        entries.insert(0, WeightsSpec(
            name="keras",
            url=base + ".h5",
            file_hash=top_hash,
            hash_algorithm="md5",
            layout="keras_legacy_h5",
            preprocessing="caffe",
            input_size=224,
            notop_url=base + "_notop.h5",
            notop_file_hash=notop_hash,
            description="keras.applications ImageNet weights",
        ))
    return tuple(entries)


def torchvision_names(variant: str, options) -> dict[str, str]:
    """torchvision's ``features.N`` are the convolutions, each followed by a
    ReLU, and a pool after each block; ``classifier.0/3/6`` the Linear layers."""
    names, index = {}, 0
    for block, depth in enumerate(DEPTHS[variant], start=1):
        for conv in range(1, depth + 1):
            names[f"features.{index}"] = f"block{block}_conv{conv}"
            index += 2
        index += 1
    names.update({"classifier.0": "fc1", "classifier.3": "fc2", "classifier.6": "predictions"})
    return names


FAMILY = Family(
    name="vgg",
    head_layers=("fc1", "fc2", "predictions"),
    torchvision_names=torchvision_names,
    preprocessing={"torchvision": "torch", "keras_legacy_h5": "caffe"},
    description="VGG 11/13/16/19 with keras.applications layer names",
)

for _variant in DEPTHS:
    _entries = _weights(_variant)
    register_model(ModelSpec(
        name=_variant,
        family=FAMILY,
        fixed_top_size=TOP_SIZE,
        builder=functools.partial(_build, _variant),
        default_size=TOP_SIZE,
        min_size=MIN_SIZE,
        num_params=PARAMS[_variant],
        weights=_entries,
        default_weights=_entries[0].name,
        description=f"VGG-{_variant[3:]} with keras.applications layer names",
    ))

VGG11 = make_constructor("vgg11", "VGG11", "VGG-11 (configuration A).")
VGG13 = make_constructor("vgg13", "VGG13", "VGG-13 (configuration B).")
VGG16 = make_constructor("vgg16", "VGG16", "VGG-16 (configuration D), as keras.applications.VGG16.")
VGG19 = make_constructor("vgg19", "VGG19", "VGG-19 (configuration E), as keras.applications.VGG19.")
