"""SqueezeNet 1.0 and 1.1 (Iandola et al., 2016), as in torchvision.

``ceil_mode=True`` (the default) pools as torchvision and Caffe do;
``ceil_mode=False`` floors, as Keras' ``MaxPooling2D`` and the classic
keras-squeezenet port do. Layer names follow keras-squeezenet with '_' for
its '/' (``fire2_squeeze1x1``), which Keras 3 forbids in layer names.
"""

from __future__ import annotations

import functools

import keras

from multinet import layers
from multinet.models.base import build_model, check_rate, make_constructor, min_input_size
from multinet.registry import Family, ModelSpec, WeightsSpec, register_model, torchvision_weights

# Per variant: first conv (filters, kernel), then the feature stack, where an
# int is a Fire module's (squeeze, expand) row index and "pool" a 3x3/2 pool.
VARIANTS = {
    "squeezenet1_0": {
        "conv1": (96, 7),
        "stack": ("pool", (16, 64), (16, 64), (32, 128), "pool",
                  (32, 128), (48, 192), (48, 192), (64, 256), "pool", (64, 256)),
        "params": 1_248_424,
    },
    "squeezenet1_1": {
        "conv1": (64, 3),
        "stack": ("pool", (16, 64), (16, 64), "pool", (32, 128), (32, 128), "pool",
                  (48, 192), (48, 192), (64, 256), (64, 256)),
        "params": 1_235_496,
    },
}
DEFAULT_SIZE = 224

_TORCH_FILES = {
    "squeezenet1_0": "squeezenet1_0-b66bff10.pth",
    "squeezenet1_1": "squeezenet1_1-b8a52dc0.pth",
}
_KERAS_SQUEEZENET = (
    "https://github.com/rcmalli/keras-squeezenet/releases/download/v1.0/"
    "squeezenet_weights_tf_dim_ordering_tf_kernels"
)


def _pool_size(size, ceil_mode):
    # Floor pooling needs a full window; ceil mode (as in PyTorch) only needs
    # the last window to start inside the input.
    if size < (1 if ceil_mode else 3):
        return None
    out = layers.pool_output_size(size, 3, 2, ceil_mode)
    return out if out >= 1 else None


def feature_sizes(variant: str, size: int, ceil_mode: bool = True) -> list[int] | None:
    """Spatial sizes after conv1 and after each pool, or None if too small."""
    filters, kernel = VARIANTS[variant]["conv1"]
    if size < kernel:
        return None
    sizes = [(size - kernel) // 2 + 1]
    for item in VARIANTS[variant]["stack"]:
        if item == "pool":
            out = _pool_size(sizes[-1], ceil_mode)
            if out is None:
                return None
            sizes.append(out)
    return sizes


def fire_module(x, fire_id: int, squeeze: int, expand: int, fmt: str):
    """Fire: squeeze 1x1 + ReLU, then expand 1x1 and expand 3x3 (+ ReLU),
    concatenated on channels with the 1x1 branch first."""
    prefix = f"fire{fire_id}_"
    x = layers.Conv2D(squeeze, 1, activation="relu", data_format=fmt,
                      name=prefix + "squeeze1x1")(x)
    left = layers.Conv2D(expand, 1, activation="relu", data_format=fmt,
                         name=prefix + "expand1x1")(x)
    right = layers.Conv2D(expand, 3, padding="same", activation="relu", data_format=fmt,
                          name=prefix + "expand3x3")(x)
    return keras.layers.Concatenate(axis=layers.channel_axis(fmt), name=prefix + "concat")(
        [left, right])


def _features(x, fmt, variant, ceil_mode):
    filters, kernel = VARIANTS[variant]["conv1"]
    x = layers.Conv2D(filters, kernel, strides=2, activation="relu", data_format=fmt,
                      name="conv1")(x)
    block = 1  # keras-squeezenet numbers pools after the block they follow
    for item in VARIANTS[variant]["stack"]:
        if item == "pool":
            x = layers.MaxPooling2D(3, strides=2, data_format=fmt, ceil_mode=ceil_mode,
                                    name=f"pool{block}")(x)
        else:
            block += 1
            x = fire_module(x, block, *item, fmt=fmt)
    return x


def _classifier(x, fmt, classes, activation, dropout):
    x = keras.layers.Dropout(dropout, name="drop9")(x)
    x = layers.Conv2D(classes, 1, activation="relu", data_format=fmt, name="conv10")(x)
    x = keras.layers.GlobalAveragePooling2D(data_format=fmt, name="avg_pool")(x)
    if activation is not None:
        x = keras.layers.Activation(activation, name="predictions")(x)
    return x


def _build(variant, *, include_top, input_tensor, input_shape, pooling, classes,
           classifier_activation, data_format, has_weights=False, ceil_mode=True,
           dropout=0.5, compute_format=None, default_size=DEFAULT_SIZE, name=None):
    dropout = check_rate(variant, "dropout", dropout)
    return build_model(
        variant,
        features=functools.partial(_features, variant=variant, ceil_mode=bool(ceil_mode)),
        classifier=functools.partial(_classifier, dropout=dropout),
        include_top=include_top, input_tensor=input_tensor, input_shape=input_shape,
        pooling=pooling, classes=classes, classifier_activation=classifier_activation,
        data_format=data_format, compute_format=compute_format,
        default_size=default_size,
        min_size=_min_size(variant, bool(ceil_mode)),
        fixed_top_size=None, has_weights=has_weights, name=name,
        options={"ceil_mode": bool(ceil_mode), "dropout": dropout},
    )


@functools.cache
def _min_size(variant, ceil_mode):
    return min_input_size(
        lambda size: (feature_sizes(variant, size, ceil_mode) or [None])[-1])


def _weights(variant):
    entries = [torchvision_weights(_TORCH_FILES[variant], arch_options={"ceil_mode": True})]
    if variant == "squeezenet1_1":
        entries.append(WeightsSpec(
            name="keras-squeezenet",
            url=_KERAS_SQUEEZENET + ".h5",
            file_hash=None,
            hash_algorithm=None,
            layout="keras_legacy_h5",
            preprocessing="caffe",
            input_size=227,
            arch_options={"ceil_mode": False},
            notop_url=_KERAS_SQUEEZENET + "_notop.h5",
            description="the classic keras-squeezenet port (floor pooling, 227x227)",
        ))
    return tuple(entries)


def torchvision_names(variant: str, options) -> dict[str, str]:
    """torchvision's modules: ``features.0`` is ``conv1``; ``features.N`` are
    the pools and Fire modules in order (after conv1 and its ReLU at 0 and 1),
    whose ``squeeze``/``expand1x1``/``expand3x3`` are ``fireK_squeeze1x1``...;
    ``classifier.1`` is ``conv10``."""
    names = {"features.0": "conv1", "classifier.1": "conv10"}
    fire = 1
    for index, item in enumerate(VARIANTS[variant]["stack"], start=2):
        if item != "pool":
            fire += 1
            names[f"features.{index}.squeeze"] = f"fire{fire}_squeeze1x1"
            names[f"features.{index}.expand1x1"] = f"fire{fire}_expand1x1"
            names[f"features.{index}.expand3x3"] = f"fire{fire}_expand3x3"
    return names


def source_options(layout: str, names: frozenset) -> dict:
    # torchvision pools in ceil mode; the keras-squeezenet port, the one
    # Keras 1/2 SqueezeNet file in the wild, floors as Keras does.
    if layout == "torchvision":
        return {"ceil_mode": True}
    if layout == "keras_legacy_h5":
        return {"ceil_mode": False}
    return {}


FAMILY = Family(
    name="squeezenet",
    head_layers=("conv10",),
    torchvision_names=torchvision_names,
    source_options=source_options,
    # keras-squeezenet was trained in Caffe: BGR, mean subtracted.
    preprocessing={"torchvision": "torch", "keras_legacy_h5": "caffe"},
    description="SqueezeNet 1.0/1.1: Fire modules, torchvision or keras-squeezenet pooling",
)

for _variant, _facts in VARIANTS.items():
    register_model(ModelSpec(
        name=_variant,
        family=FAMILY,
        builder=functools.partial(_build, _variant),
        default_size=DEFAULT_SIZE,
        min_size=_min_size(_variant, True),
        num_params=_facts["params"],
        weights=_weights(_variant),
        default_weights="torchvision",
        description=f"SqueezeNet {_variant[10]}.{_variant[12]} (torchvision topology)",
    ))

SqueezeNet1_0 = make_constructor("squeezenet1_0", "SqueezeNet1_0", "SqueezeNet 1.0.")
SqueezeNet1_1 = make_constructor("squeezenet1_1", "SqueezeNet1_1", "SqueezeNet 1.1.")


def SqueezeNet(version: str = "1_1", *args, **kwargs) -> keras.Model:
    """SqueezeNet ``version`` "1_0" or "1_1" ("1.0"/"1.1" work too); other
    arguments as keras.applications models (``weights="imagenet"`` by default;
    ``weights=None`` for random initialization), plus ``ceil_mode`` and
    ``dropout``."""
    key = str(version).replace(".", "_")
    constructors = {"1_0": SqueezeNet1_0, "1_1": SqueezeNet1_1}
    if key not in constructors:
        raise ValueError(f"SqueezeNet version must be '1_0' or '1_1', got {version!r}")
    return constructors[key](*args, **kwargs)
