"""What every multinet model builder shares: input resolution and validation,
the data-format plumbing, the pooling and classifier heads."""

from __future__ import annotations

from collections.abc import Callable

import keras

from multinet import backend
from multinet.layers import (
    INFO_LAYER,
    Model,
    ModelInfo,
    image_shape,
    resolve_compute_format,
    standardize_data_format,
    to_data_format,
)

POOLINGS = (None, "avg", "max")


def min_input_size(output_size: Callable[[int], int | None], limit: int = 1024) -> int:
    """Smallest square input for which ``output_size`` gives a valid feature map."""
    for size in range(1, limit):
        out = output_size(size)
        if out is not None and out >= 1:
            return size
    raise ValueError("no valid input size below the limit")


def check_rate(model_name: str, option: str, value) -> float:
    """A dropout-like rate in [0, 1), or a ValueError naming the model and option."""
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = -1.0
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{model_name}: {option} must be in [0, 1), got {value!r}")
    return rate


def _format_shape(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def resolve_input_shape(
    model_name: str,
    input_shape,
    input_tensor,
    *,
    data_format: str,
    default_size: int,
    min_size: int,
    include_top: bool,
    fixed_top_size: int | None,
    has_weights: bool,
) -> tuple:
    """The (channels included) input shape to build with, validated.

    Errors name the model, what was given and what is allowed.
    """
    layout = "(channels, height, width)" if data_format == backend.CHANNELS_FIRST else (
        "(height, width, channels)")
    if input_shape is None and input_tensor is not None:
        input_shape = tuple(input_tensor.shape[1:])
    if input_shape is None:
        size = default_size if include_top else None
        if fixed_top_size and include_top:
            size = fixed_top_size
        input_shape = image_shape(size, data_format)
    try:
        shape = tuple(None if d is None else int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"{model_name}: input_shape must be a tuple of 3 integers {layout}, "
            f"got {input_shape!r}"
        ) from None
    if len(shape) != 3:
        raise ValueError(
            f"{model_name}: input_shape must have 3 dimensions {layout} for "
            f"{data_format}, got {len(shape)}: {_format_shape(shape)}"
        )
    if data_format == backend.CHANNELS_FIRST:
        channels, height, width = shape
    else:
        height, width, channels = shape
    if channels is None:
        raise ValueError(
            f"{model_name}: the channel count must be known, got input_shape "
            f"{_format_shape(shape)} ({data_format})"
        )
    if has_weights and channels != 3:
        raise ValueError(
            f"{model_name}: pretrained weights need 3 input channels, got "
            f"{channels} in input_shape {_format_shape(shape)} ({data_format})"
        )
    if channels < 1:
        raise ValueError(f"{model_name}: channel count must be >= 1, got {channels}")
    for dim in (height, width):
        if dim is not None and dim < min_size:
            raise ValueError(
                f"{model_name}: input_shape {_format_shape(shape)} is too small; "
                f"height and width must be at least {min_size} ({data_format})"
            )
    if include_top and fixed_top_size and (height, width) != (fixed_top_size, fixed_top_size):
        raise ValueError(
            f"{model_name}: include_top=True needs a {fixed_top_size}x{fixed_top_size} "
            f"input, got input_shape {_format_shape(shape)} ({data_format}); pass "
            f"include_top=False for other sizes"
        )
    if input_tensor is not None and tuple(input_tensor.shape[1:]) != shape:
        raise ValueError(
            f"{model_name}: input_tensor has shape {_format_shape(input_tensor.shape[1:])}"
            f" but input_shape is {_format_shape(shape)}"
        )
    return shape


def build_model(
    model_name: str,
    *,
    features: Callable,
    classifier: Callable,
    include_top: bool,
    input_tensor,
    input_shape,
    pooling,
    classes: int,
    classifier_activation,
    data_format,
    compute_format,
    default_size: int,
    min_size: int,
    fixed_top_size: int | None,
    has_weights: bool,
    name: str | None,
    options: dict | None = None,
    notop_head: Callable | None = None,
    pool: Callable | None = None,
) -> keras.Model:
    """Assemble a functional model from a family's ``features`` and ``classifier``.

    ``features(x, fmt)`` and ``classifier(x, fmt, classes, activation)`` get
    tensors in ``fmt``, the compute format (see
    ``backend.preferred_compute_format``); the model takes and returns data in
    ``data_format``. ``options`` are the family's architecture options
    (``ceil_mode``...), recorded with the registry name in the model's
    ``ModelInfo`` layer (see ``multinet.model_info``). ``notop_head(x, fmt)``,
    where given, follows the pooling (or the features, ``pooling=None``) of a
    model built with ``include_top=False``: keras.applications' ConvNeXt
    normalizes its features there. ``pool(x, fmt, pooling)``, where given,
    makes the ``include_top=False`` output of a family whose features are not a
    spatial map (a transformer's tokens); otherwise ``pooling`` pools the map
    globally or the map is returned.
    """
    data_format = standardize_data_format(data_format)
    compute_format = resolve_compute_format(compute_format)
    if pooling not in POOLINGS:
        raise ValueError(f"{model_name}: pooling must be one of {POOLINGS}, got {pooling!r}")
    if not isinstance(classes, int) or classes < 1:
        raise ValueError(f"{model_name}: classes must be a positive integer, got {classes!r}")
    shape = resolve_input_shape(
        model_name,
        input_shape,
        input_tensor,
        data_format=data_format,
        default_size=default_size,
        min_size=min_size,
        include_top=include_top,
        fixed_top_size=fixed_top_size,
        has_weights=has_weights,
    )
    if input_tensor is None:
        inputs = keras.Input(shape=shape, name="input_layer")
        model_inputs = inputs
    else:
        inputs = input_tensor
        model_inputs = keras.utils.get_source_inputs(input_tensor)
    x = to_data_format(inputs, data_format, compute_format, name="to_" + compute_format)
    x = features(x, compute_format)
    if include_top:
        x = classifier(x, compute_format, classes, classifier_activation)
    elif pool is not None:
        x = pool(x, compute_format, pooling)
    else:
        if pooling == "avg":
            x = keras.layers.GlobalAveragePooling2D(data_format=compute_format,
                                                    name="avg_pool")(x)
        elif pooling == "max":
            x = keras.layers.GlobalMaxPooling2D(data_format=compute_format, name="max_pool")(x)
        if notop_head is not None:
            x = notop_head(x, compute_format)
        if pooling is None:
            x = to_data_format(x, compute_format, data_format, name="to_" + data_format)
    info = {"model": model_name, "options": dict(options or {}), "weights": None}
    x = ModelInfo(info, name=INFO_LAYER)(x)
    return Model(model_inputs, x, name=name or model_name)


def make_constructor(model_name: str, public_name: str, summary: str):
    """A keras.applications-style constructor for one registered model.

    Its ``weights`` default is ``"imagenet"``, as in keras.applications;
    ``create_model``'s is None (random weights), as timm's ``pretrained=False``.
    """

    def constructor(
        include_top: bool = True,
        weights="imagenet",
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes: int = 1000,
        classifier_activation="softmax",
        name: str | None = None,
        data_format: str | None = None,
        **model_kwargs,
    ) -> keras.Model:
        from multinet.registry import create_model

        return create_model(
            model_name, weights=weights, include_top=include_top,
            input_tensor=input_tensor, input_shape=input_shape, pooling=pooling,
            classes=classes, classifier_activation=classifier_activation,
            data_format=data_format, name=name, **model_kwargs,
        )

    constructor.__name__ = constructor.__qualname__ = public_name
    constructor.__doc__ = (
        f"{summary}\n\nSame arguments as keras.applications, plus ``data_format`` and "
        f"the family options; see ``multinet.create_model({model_name!r}, ...)``.\n\n"
        f"``weights`` defaults to ``\"imagenet\"``, as in keras.applications: the "
        f"model's default pretrained entry, downloaded once into ``$KERAS_HOME/models`` "
        f"(``MULTINET_OFFLINE=1``: read from there only). It also takes another entry's "
        f"name or a weights file path; ``weights=None`` gives random initialization, "
        f"which is ``create_model``'s default."
    )
    return constructor
