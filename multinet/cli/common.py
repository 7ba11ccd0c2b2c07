"""What the commands share: errors, argument types, output helpers, and how
to read a weights source (entry or file) before any model is built.

Nothing here imports Keras at import time: ``multinet --help`` works without
a usable backend. The commands name no model family: what a family needs is
read from the registry (``ModelSpec``, ``Family``, ``WeightsSpec``).
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import os
import sys
from typing import TYPE_CHECKING

import multinet

if TYPE_CHECKING:
    from multinet.registry import ModelSpec, WeightsSpec

RANDOM_WEIGHTS = "random"
# multinet.backend.DATA_FORMATS, which imports Keras.
DATA_FORMATS = ("channels_last", "channels_first")
PREPROCESSING_MODES = ("caffe", "torch", "tf")  # multinet.preprocessing.MODES
IMAGENET_CLASSES = 1000
# Arguments every builder takes; the rest of its signature are the family options.
_COMMON_BUILDER_ARGS = {
    "include_top", "input_tensor", "input_shape", "pooling", "classes",
    "classifier_activation", "data_format", "has_weights", "default_size", "name",
}
MULTINET_ATTRS = "multinet_metadata"  # HDF5 root attribute written by `multinet convert`
_MAX_MESSAGE = 600
_MAX_NAMES = 5


class CommandError(Exception):
    """A user mistake or an unmet condition: reported as one line, exit 1."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``multinet predict: error: ...``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def top_k(text: str) -> int:
    value = positive_int(text)
    if value > IMAGENET_CLASSES:
        raise argparse.ArgumentTypeError(f"expected 1 to 1000 (the ImageNet classes), got {text}")
    return value


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def one_line(text, limit: int = _MAX_MESSAGE) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        cut = text[:limit].rsplit("; ", 1)[0]
        text = f"{cut}; ... (--debug shows the rest)"
    return text


def names_list(names, limit: int = _MAX_NAMES) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def model_spec(name: str) -> ModelSpec:
    """The registered model ``name``, or a CommandError suggesting close names."""
    names = multinet.list_models()
    if name in names:
        return multinet.get_model_spec(name)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    close += [n for n in names if name and name.lower() in n and n not in close][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise CommandError(f"unknown model {name!r}{hint} ('multinet list' shows all {len(names)})")


def family_options(spec: ModelSpec) -> dict:
    """The family options of a model's builder and their defaults (from its signature)."""
    options = {}
    for param in inspect.signature(spec.builder).parameters.values():
        if param.kind is param.KEYWORD_ONLY and param.name not in _COMMON_BUILDER_ARGS:
            options[param.name] = None if param.default is param.empty else param.default
    return options


def options_for(spec: ModelSpec, arch_options: dict) -> dict:
    known = family_options(spec)
    return {k: v for k, v in arch_options.items() if k in known}


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def print_json(data) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def entry_label(spec: ModelSpec, entry) -> str:
    return entry.name + ("*" if entry.name == spec.default_weights else "")


def default_entry(spec: ModelSpec) -> WeightsSpec | None:
    return spec.get_weights("imagenet") if spec.default_weights else None


def resolve_entry(spec: ModelSpec, weights: str) -> WeightsSpec | None:
    """The weights entry ``-w`` names, None for a file path; a CommandError
    (with a close name, if any) for an unknown entry."""
    from multinet.registry import resolve_weights

    try:
        return resolve_weights(spec, weights)
    except ValueError as error:
        message = str(error).replace("or pass a file path", "a weights file, or 'random'")
        raise CommandError(message) from None


# --- weights files ------------------------------------------------------------


def read_file_metadata(path) -> dict:
    """What ``multinet convert`` recorded in a .weights.h5 file, or {}."""
    import h5py

    try:
        with h5py.File(path, "r") as h5file:
            raw = h5file.attrs.get(MULTINET_ATTRS)
    except (OSError, ValueError):
        return {}
    if raw is None:
        return {}
    try:
        data = json.loads(raw if isinstance(raw, str) else bytes(raw).decode())
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _check_torchvision_modules(spec: ModelSpec, path: str, names, arch_options: dict) -> None:
    """A torchvision checkpoint whose modules the family does not map is made
    for another model: say so before any model is built."""
    family = spec.family
    if family.torchvision_names is None:
        raise CommandError(f"weights file {path} is a torchvision checkpoint, and the "
                           f"{family.name} family has no torchvision layout")
    options = {**family_options(spec), **arch_options}
    known = family.torchvision_names(spec.name, options)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise CommandError(
            f"weights file {path} does not fit {spec.name}: its torchvision modules "
            f"{names_list(unknown)} are not in {spec.name} (is the file made for another "
            f"model?)")


def describe_weights_file(spec: ModelSpec, path: str) -> dict:
    """How to build ``spec``'s model for a weights file, read from the file
    alone, before any model is built.

    Returns ``layout``, ``entry`` (the registry entry of that layout, if any),
    ``arch_options``, ``preprocessing``, ``input_size``, ``resize_size``,
    ``interpolation`` and ``classes`` (None where unknown). A missing or
    unreadable file, a layout multinet does not read, a torchvision checkpoint
    of another model and a file converted for another model are CommandErrors.
    """
    from multinet.weights import WeightsLoadError, detect_layout, inspect_source

    if not os.path.exists(path):
        raise CommandError(f"weights file not found: {path}")
    if not os.path.isfile(path):
        raise CommandError(f"weights path is not a file: {path}")
    try:
        layout = detect_layout(path)
        source_layout, names = inspect_source(path)
    except (ValueError, OSError, WeightsLoadError) as error:
        reason = str(error).replace(f"cannot read weights from {path}: ", "")
        raise CommandError(f"cannot read weights file {path}: {one_line(reason)}") from error
    arch_options = spec.family.source_options(source_layout, names)
    if source_layout == "torchvision":
        _check_torchvision_modules(spec, path, names, arch_options)
    entry = next((e for e in spec.weights if e.layout == source_layout), None)
    info = {"layout": layout, "entry": entry, "arch_options": arch_options,
            "preprocessing": spec.family.preprocessing_for(source_layout, arch_options),
            "input_size": None,
            "resize_size": None, "interpolation": "bilinear", "classes": None}
    if entry is not None:
        info.update(preprocessing=entry.preprocessing, input_size=entry.input_size,
                    resize_size=entry.resize_size, interpolation=entry.interpolation)
    if layout == "keras_v3":
        meta = read_file_metadata(path)
        if meta.get("model") not in (None, spec.name):
            raise CommandError(
                f"weights file {path} was converted for {meta['model']}, not {spec.name}")
        for key in ("arch_options", "preprocessing", "input_size", "resize_size",
                    "interpolation", "classes"):
            if key in meta:
                info[key] = meta[key]
    return info


# --- a model's classifier against a file's --------------------------------------


def classifier_layer(spec: ModelSpec, model):
    """The model's last classifier layer with weights (the one whose units
    are the classes), or None for a model built without its top."""
    head = [layer for layer in model.layers
            if layer.name in spec.family.head_layers and layer.weights]
    return head[-1] if head else None


def compare_head(spec: ModelSpec, model, path: str) -> dict:
    """How the classifier in the file at ``path`` compares with ``model``'s
    (built with its top): ``{"present", "layer", "label", "file_classes",
    "model_classes", "file_shapes", "model_shapes"}``."""
    from multinet.weights.loader import read_source
    from multinet.weights.report import format_shapes

    layer = classifier_layer(spec, model)
    found = read_source(path, model)
    head = [n for n in spec.family.head_layers if n in found.tensors]
    arrays = found.tensors.get(layer.name) if layer is not None else None
    return {
        "present": bool(head),
        "layer": layer.name if layer is not None else None,
        "label": found.label(layer.name) if layer is not None else None,
        "file_classes": int(arrays[0].shape[-1]) if arrays else None,
        "model_classes": int(layer.weights[0].shape[-1]) if layer is not None else None,
        "file_shapes": format_shapes(a.shape for a in arrays) if arrays else None,
        "model_shapes": format_shapes(v.shape for v in layer.weights) if layer else None,
    }


def head_mismatch(head: dict) -> bool:
    return (head["present"] and head["file_classes"] is not None
            and head["file_classes"] != head["model_classes"])


def image_options_for(entry: WeightsSpec | None, info: dict | None, size: int) -> dict:
    """``load_image`` arguments: the evaluation transform of the weights entry
    (or of the file, as far as it says), at input size ``size``."""
    from multinet.preprocessing import image_options

    source = info if info is not None else {
        "resize_size": entry.resize_size if entry else None,
        "interpolation": entry.interpolation if entry else "bilinear",
    }
    return image_options(size, source.get("resize_size"),
                         source.get("interpolation") or "bilinear")
