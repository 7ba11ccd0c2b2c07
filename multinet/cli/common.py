"""What the commands share: errors, argument types, output helpers, and how
to read a weights file's layout and recorded metadata."""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import os
import sys

import multinet
from multinet.registry import ModelSpec

RANDOM_WEIGHTS = "random"
# Arguments every builder takes; the rest of its signature are the family options.
_COMMON_BUILDER_ARGS = {
    "include_top", "input_tensor", "input_shape", "pooling", "classes",
    "classifier_activation", "data_format", "has_weights", "default_size", "name",
}
MULTINET_ATTRS = "multinet_metadata"  # HDF5 root attribute written by `multinet convert`
_MAX_MESSAGE = 600


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
    if value > 1000:
        raise argparse.ArgumentTypeError(f"expected 1 to 1000 (the ImageNet classes), got {text}")
    return value


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        cut = text[:limit].rsplit("; ", 1)[0]
        text = f"{cut}; ... (--debug shows the rest)"
    return text


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
    """The family options of a model's builder and their defaults (``ceil_mode``...)."""
    options = {}
    for param in inspect.signature(spec.builder).parameters.values():
        if param.kind is param.KEYWORD_ONLY and param.name not in _COMMON_BUILDER_ARGS:
            options[param.name] = None if param.default is param.empty else param.default
    return options


def spatial(model) -> tuple[int, int]:
    shape = model.input_shape
    channels_first = shape[1] == 3 and shape[-1] != 3
    return tuple(shape[2:4]) if channels_first else tuple(shape[1:3])


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


def describe_weights_file(spec: ModelSpec, path: str) -> dict:
    """How to build ``spec``'s model for a weights file, from its content.

    Returns ``layout``, ``entry`` (the registry entry of that layout, if any),
    ``arch_options``, ``preprocessing`` and ``input_size`` (None if unknown).
    """
    from multinet.weights import detect_layout, inspect_source

    if not os.path.exists(path):
        raise CommandError(f"weights file not found: {path}")
    if not os.path.isfile(path):
        raise CommandError(f"weights path is not a file: {path}")
    try:
        layout = detect_layout(path)
        source_layout, names = inspect_source(path)
    except (ValueError, OSError) as error:
        raise CommandError(f"cannot read weights file {path}: {one_line(error)}") from error
    entry = next((e for e in spec.weights if e.layout == source_layout), None)
    info = {"layout": layout, "entry": entry,
            "arch_options": spec.family.source_options(source_layout, names),
            "preprocessing": spec.family.preprocessing.get(source_layout), "input_size": None}
    if entry is not None:
        info.update(preprocessing=entry.preprocessing, input_size=entry.input_size)
    if layout == "keras_v3":
        meta = read_file_metadata(path)
        if meta.get("model") not in (None, spec.name):
            raise CommandError(
                f"weights file {path} was converted for {meta['model']}, not {spec.name}")
        for key in ("arch_options", "preprocessing", "input_size"):
            if meta.get(key) is not None:
                info[key] = meta[key]
    return info


def options_for(spec: ModelSpec, arch_options: dict) -> dict:
    known = family_options(spec)
    return {k: v for k, v in arch_options.items() if k in known}
