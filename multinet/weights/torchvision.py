"""torchvision state dicts onto multinet models.

Which torchvision module feeds which layer is the family's knowledge
(``Family.torchvision_names`` in ``multinet/models/<family>.py``). How a
module's tensors become the layer's variables is decided here, by the type of
the layer that receives them:

- ``Conv2D``: weight OIHW becomes HWIO; a Linear weight (out, in) feeding a
  1x1 convolution becomes (1, 1, in, out).
- ``DepthwiseConv2D``: weight (channels * multiplier, 1, kh, kw) becomes
  (kh, kw, channels, multiplier).
- ``Dense``: weight (out, in) becomes (in, out). After a ``Flatten`` of a
  feature map, PyTorch's inputs are in (C, H, W) order and Keras' in
  (H, W, C) order (Keras' Flatten moves channels_first data to channels_last
  first), so the rows are permuted.
- ``BatchNormalization``: weight, bias, running_mean, running_var become
  gamma, beta, moving_mean, moving_variance; ``num_batches_tracked`` is
  ignored.
- ``LayerNormalization``: weight, bias become gamma, beta.
- Any other layer converts its own tensors with a ``from_torchvision(params)``
  method returning its weights in order.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from multinet.weights.source import SourceWeights

IGNORED_PARAMS = ("num_batches_tracked",)
_VARIABLE_PARAMS = {
    "kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
    "moving_mean": "running_mean", "moving_variance": "running_var",
}


def to_numpy(value) -> np.ndarray:
    """A numpy array of an array or tensor (PyTorch tensors included)."""
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
            value = value.float()
        return value.numpy().copy()
    return np.asarray(value)


def is_state_dict(mapping) -> bool:
    return isinstance(mapping, Mapping) and any(
        isinstance(k, str) and (k.endswith(".weight") or k.endswith(".bias")) for k in mapping
    )


def unwrap_checkpoint(obj):
    """The state dict inside a checkpoint saved as ``{"state_dict": ...}``."""
    if isinstance(obj, Mapping) and not is_state_dict(obj):
        for key in ("state_dict", "model_state_dict", "model"):
            if is_state_dict(obj.get(key)):
                return obj[key]
    return obj


def group_modules(state: Mapping) -> dict[str, dict[str, object]]:
    """``{module: {param: tensor}}``; ``num_batches_tracked`` is dropped."""
    modules: dict[str, dict[str, object]] = {}
    for key, value in state.items():
        module, _, param = str(key).rpartition(".")
        if param in IGNORED_PARAMS:
            continue
        modules.setdefault(module, {})[param] = value
    return modules


def _flatten_input(layer):
    """(channels, height, width) of the feature map a Flatten feeds into this
    Dense layer, or None where the Dense layer does not follow a Flatten."""
    import keras

    try:
        node_layer = layer.input._keras_history.operation
        while isinstance(node_layer, keras.layers.Dropout):
            node_layer = node_layer.input._keras_history.operation
    except (AttributeError, ValueError):
        return None
    if not isinstance(node_layer, keras.layers.Flatten):
        return None
    shape = tuple(node_layer.input.shape[1:])
    if len(shape) != 3 or None in shape:
        return None
    if node_layer.data_format == "channels_first":
        return shape
    height, width, channels = shape
    return channels, height, width


def _dense_kernel(weight: np.ndarray, layer) -> np.ndarray:
    chw = _flatten_input(layer)
    out, features = weight.shape
    if chw is not None and int(np.prod(chw)) == features:
        # (out, C, H, W) -> (H, W, C, out) -> (H*W*C, out), in one copy.
        weight = weight.reshape(out, *chw).transpose(2, 3, 1, 0)
        return np.ascontiguousarray(weight).reshape(features, out)
    return np.ascontiguousarray(weight.T)


def _conv_kernel(weight: np.ndarray, layer) -> np.ndarray:
    import keras

    if isinstance(layer, keras.layers.DepthwiseConv2D):
        if weight.ndim != 4:
            raise ValueError(f"a {weight.ndim}D weight for a depthwise convolution")
        # (C * m, 1, kh, kw) -> (kh, kw, C, m)
        channels = int(layer.kernel.shape[2])
        total, _, kh, kw = weight.shape
        multiplier = total // channels if channels and total % channels == 0 else total
        weight = weight.reshape(channels, multiplier, kh, kw).transpose(2, 3, 0, 1)
        return np.ascontiguousarray(weight)
    if weight.ndim == 2:  # a Linear feeding a 1x1 convolution
        return np.ascontiguousarray(weight.T)[None, None]
    if weight.ndim != 4:
        raise ValueError(f"a {weight.ndim}D weight for a convolution")
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))  # OIHW -> HWIO


def convert_module(module: str, params: Mapping, layer) -> list[np.ndarray]:
    """The arrays for ``layer``'s weights, in order, from one torch module's params."""
    import keras

    params = {k: to_numpy(v) for k, v in params.items()}
    if layer is None:  # not in this model (a head left out): keep as read
        return list(params.values())
    if hasattr(layer, "from_torchvision"):
        return [np.asarray(a) for a in layer.from_torchvision(params)]
    known = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense,
             keras.layers.BatchNormalization, keras.layers.LayerNormalization)
    if not isinstance(layer, known):
        raise ValueError(f"no torchvision conversion for a {type(layer).__name__} layer")
    arrays = []
    for variable in layer.weights:
        key = variable.name.rsplit("/", 1)[-1]
        param = _VARIABLE_PARAMS.get(key)
        if param is None or param not in params:
            raise ValueError(
                f"has no {param or key!r} for the layer's {key} "
                f"(has {', '.join(sorted(params)) or 'nothing'})")
        value = params[param]
        if key == "kernel":
            if isinstance(layer, keras.layers.Dense):
                if value.ndim != 2:
                    raise ValueError(f"a {value.ndim}D weight for a Dense layer")
                value = _dense_kernel(value, layer)
            else:
                value = _conv_kernel(value, layer)
        arrays.append(value)
    extra = set(params) - {_VARIABLE_PARAMS[v.name.rsplit("/", 1)[-1]] for v in layer.weights
                           if v.name.rsplit("/", 1)[-1] in _VARIABLE_PARAMS}
    if extra:
        raise ValueError(f"unexpected {', '.join(sorted(extra))} for a {type(layer).__name__}")
    return arrays


def read_state_dict(state: Mapping, model) -> SourceWeights:
    """Map a torchvision-layout state dict onto ``model``'s layers, by the
    mapping its family declares."""
    from multinet.layers import model_info
    from multinet.registry import get_model_spec

    info = model_info(model)
    family = get_model_spec(info["model"]).family if info.get("model") else None
    if family is None or family.torchvision_names is None:
        what = f"family {family.name!r}" if family else "a model multinet did not build"
        raise ValueError(
            f"torchvision weights need a multinet model whose family has a torchvision "
            f"layout; {model.name!r} is {what}")
    names = family.torchvision_names(info["model"], info.get("options") or {})
    layers = {layer.name: layer for layer in model.layers}
    tensors, labels, head, problems = {}, {}, set(), {}
    for module, params in group_modules(state).items():
        target = names.get(module)
        if target is None:  # not this family's: reported as unexpected
            for param, value in params.items():
                key = f"{module}.{param}" if module else param
                tensors[key] = [to_numpy(value)]
            continue
        labels[target] = module
        try:
            tensors[target] = convert_module(module, params, layers.get(target))
        except ValueError as error:
            problems[target] = str(error)
            continue
        if target in family.head_layers:
            head.add(target)
    preprocessing = family.preprocessing_for("torchvision", info.get("options"))
    return SourceWeights("torchvision", tensors, labels, head=head, preprocessing=preprocessing,
                         problems=problems)


def _bicubic_matrix(size_in: int, size_out: int, a: float = -0.75) -> np.ndarray:
    """(size_out, size_in): PyTorch's 1D bicubic interpolation with
    ``align_corners=True`` as a matrix (cubic convolution, A = -0.75, indices
    clamped at the borders), as ``torch.nn.functional.interpolate`` computes it."""

    def near(t):  # |t| <= 1
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t):  # 1 < |t| < 2
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    matrix = np.zeros((size_out, size_in), np.float64)
    for out in range(size_out):
        real = scale * out
        index = int(np.floor(real))
        t = real - index
        for offset, weight in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            matrix[out, min(max(index + offset, 0), size_in - 1)] += weight
    return matrix


def interpolate_bicubic(grid: np.ndarray, size) -> np.ndarray:
    """``grid`` (height, width, channels) resized to ``size`` (height, width)
    as ``torch.nn.functional.interpolate(mode="bicubic", align_corners=True)``
    does (computed in float64; returned in the grid's dtype)."""
    height, width = size
    rows = _bicubic_matrix(grid.shape[0], height)
    cols = _bicubic_matrix(grid.shape[1], width)
    out = np.einsum("ih,hwc,jw->ijc", rows, grid.astype(np.float64), cols)
    return out.astype(grid.dtype)
