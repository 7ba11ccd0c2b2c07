"""torchvision state dicts: module names to multinet layer names, and layouts.

The mapping is by order, per family:

- VGG: the convolutions ``features.N`` in index order are ``block1_conv1``,
  ``block1_conv2``, ...; the Linear layers ``classifier.N`` are ``fc1``,
  ``fc2``, ``predictions``.
- SqueezeNet: ``features.0`` is ``conv1``; the Fire modules ``features.N``
  in index order are ``fire2`` ... ``fire9`` (``squeeze``, ``expand1x1``,
  ``expand3x3`` become ``fireK_squeeze1x1``, ``fireK_expand1x1``,
  ``fireK_expand3x3``); ``classifier.1`` is ``conv10``.

Layouts: convolution weights OIHW become HWIO, Linear weights (out, in)
become (in, out), and the first Linear after the flatten, whose inputs are in
(C, H, W) order in PyTorch, gets its rows permuted to Keras' (H, W, C) order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np

from multinet.weights.source import SourceWeights

_FIRE_PARTS = {"squeeze": "squeeze1x1", "expand1x1": "expand1x1", "expand3x3": "expand3x3"}
HEADS = {"vgg": ("fc1", "fc2", "predictions"), "squeezenet": ("conv10",)}


def family(model) -> str | None:
    names = {layer.name for layer in model.layers}
    if "block1_conv1" in names:
        return "vgg"
    if "fire2_squeeze1x1" in names:
        return "squeezenet"
    return None


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


def _module_key(module: str):
    # Indices sort as numbers and before names: "features.x" and "features.3" still compare.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in module.split("."))


def _group_modules(state: Mapping) -> tuple[dict[str, dict[str, object]], list[str]]:
    """{module: {"weight": w, "bias": b}} and the keys that are neither."""
    modules, other = {}, []
    for key, value in state.items():
        module, _, param = str(key).rpartition(".")
        if param in ("weight", "bias") and module:
            modules.setdefault(module, {})[param] = value
        else:
            other.append(str(key))
    return modules, other


def _target_names(model, fam: str) -> tuple[list[str], list[str]]:
    """(feature layer names in torchvision order, head layer names)."""
    names = [layer.name for layer in model.layers]
    if fam == "vgg":
        convs = [n for n in names if re.fullmatch(r"block\d+_conv\d+", n)]
        convs.sort(key=lambda n: tuple(int(d) for d in re.findall(r"\d+", n)))
        return convs, list(HEADS["vgg"])
    fires = sorted(
        {int(m.group(1)) for n in names if (m := re.fullmatch(r"fire(\d+)_squeeze1x1", n))}
    )
    convs = ["conv1"] + [f"fire{k}_{part}" for k in fires for part in _FIRE_PARTS.values()]
    return convs, list(HEADS["squeezenet"])


def _source_modules(modules, fam: str) -> tuple[list[str], list[str], list[str]]:
    """(feature modules in order, head modules in order, modules that fit neither)."""
    features, head, other = [], [], []
    for module in sorted(modules, key=_module_key):
        parts = module.split(".")
        if parts[0] == "features" and len(parts) >= 2 and parts[1].isdigit():
            if len(parts) == 2 or (
                fam == "squeezenet" and len(parts) == 3 and parts[2] in _FIRE_PARTS
            ):
                features.append(module)
                continue
        if parts[0] == "classifier" and len(parts) == 2 and parts[1].isdigit():
            head.append(module)
            continue
        other.append(module)
    if fam == "squeezenet":
        order = list(_FIRE_PARTS)
        features.sort(key=lambda m: (_module_key(m)[:2], order.index(m.split(".")[2])
                                     if m.count(".") == 2 else -1))
    return features, head, other


def _flatten_channels(model) -> int | None:
    """Channel count entering the flatten (VGG: the last convolution's filters)."""
    for layer in reversed(model.layers):
        if re.fullmatch(r"block\d+_conv\d+", layer.name):
            return int(layer.kernel.shape[-1])
    return None


def _convert(module: str, params: dict, *, after_flatten_channels: int | None):
    weight = params.get("weight")
    bias = params.get("bias")
    if weight is None:
        raise ValueError(f"{module}: has a bias but no weight")
    weight = to_numpy(weight)
    arrays = []
    if weight.ndim == 4:
        arrays.append(np.ascontiguousarray(weight.transpose(2, 3, 1, 0)))  # OIHW -> HWIO
    elif weight.ndim == 2:
        if after_flatten_channels:
            out, features = weight.shape
            channels = after_flatten_channels
            side = math.isqrt(features // channels) if features % channels == 0 else 0
            if side * side * channels != features:
                raise ValueError(
                    f"{module}: {features} inputs are not {channels} channels of a "
                    f"square feature map, as the flatten before it gives"
                )
            # (out, C, H, W) -> (H, W, C, out) -> (H*W*C, out), in one copy.
            weight = weight.reshape(out, channels, side, side).transpose(2, 3, 1, 0)
            arrays.append(np.ascontiguousarray(weight).reshape(features, out))
        else:
            arrays.append(np.ascontiguousarray(weight.T))  # (out, in) -> (in, out)
    else:
        raise ValueError(f"{module}.weight: a {weight.ndim}D tensor is not a Conv2d or Linear")
    if bias is not None:
        arrays.append(to_numpy(bias))
    return arrays


def read_state_dict(state: Mapping, model) -> SourceWeights:
    """Map a torchvision-layout state dict onto ``model``'s layer names."""
    fam = family(model)
    if fam is None:
        raise ValueError(
            f"torchvision weights map onto multinet VGG and SqueezeNet models only; "
            f"model {model.name!r} has neither's layer names"
        )
    modules, odd_keys = _group_modules(state)
    features, head, other = _source_modules(modules, fam)
    target_features, target_head = _target_names(model, fam)
    tensors, labels = {}, {}
    channels = _flatten_channels(model) if fam == "vgg" else None

    def add(name, module, arrays):
        tensors[name] = arrays
        labels[name] = module

    for i, module in enumerate(features):
        name = target_features[i] if i < len(target_features) else module
        add(name, module, _convert(module, modules[module], after_flatten_channels=None))
    for i, module in enumerate(head):
        name = target_head[i] if i < len(target_head) else module
        flatten = channels if (fam == "vgg" and i == 0) else None
        add(name, module, _convert(module, modules[module], after_flatten_channels=flatten))
    for module in other:
        add(module, module, [to_numpy(v) for v in modules[module].values()])
    for key in odd_keys:
        add(key, key, [to_numpy(state[key])])
    heads = {target_head[i] for i in range(min(len(head), len(target_head)))}
    return SourceWeights("torchvision", tensors, labels, head=heads, preprocessing="torch")
