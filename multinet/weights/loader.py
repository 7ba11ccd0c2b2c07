"""``load_weights``: read any supported source, check it all, then assign."""

from __future__ import annotations

import os
import weakref
import zipfile
from collections.abc import Mapping

import numpy as np

from multinet.weights import keras_h5, torchvision
from multinet.weights.report import LoadReport, WeightsLoadError, format_shapes
from multinet.weights.source import SourceWeights

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# torch.save's non-zip format opens with a pickled magic number (a 10-byte long)
# after the pickle's protocol header.
TORCH_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

# What each model was last loaded with: entry name, layout, preprocessing.
_LOADED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def loaded_weights(model) -> dict | None:
    """``{"entry", "layout", "preprocessing", "source"}`` of the weights last
    loaded into ``model`` by multinet, or None."""
    return _LOADED.get(model)


def remember(model, *, entry=None, layout=None, preprocessing=None, source=None):
    _LOADED[model] = {
        "entry": entry, "layout": layout, "preprocessing": preprocessing, "source": source,
    }


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 2 <= header_len <= size - 8 and head[8:9] == b"{"


def detect_layout(path) -> str:
    """The layout of the file at ``path``, from its content (not its suffix):
    ``keras_legacy_h5``, ``keras_v3``, ``keras_archive``, ``safetensors`` or
    ``torch``."""
    import h5py

    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(32)
    if head.startswith(HDF5_SIGNATURE) or h5py.is_hdf5(path):
        with h5py.File(path, "r") as h5file:
            if keras_h5.legacy_root(h5file) is not None:
                return "keras_legacy_h5"
            if keras_h5.is_v3(h5file):
                return "keras_v3"
        raise ValueError("an HDF5 file with no Keras weights (no layer_names, no layers group)")
    if head.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if "model.weights.h5" in names:
            return "keras_archive"
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "torch"
        raise ValueError("a zip file that is neither a .keras archive nor a PyTorch checkpoint")
    if _is_safetensors(head, size):
        return "safetensors"
    if head[:1] in (b"\x80", b"\x8a") and TORCH_LEGACY_MAGIC in head:  # old torch.save
        return "torch"
    raise ValueError(
        "unrecognized weights format (expected Keras HDF5, .keras, .safetensors or a "
        "PyTorch checkpoint)"
    )


def _read_path(path: str, model) -> SourceWeights:
    layout = detect_layout(path)
    if layout in ("keras_legacy_h5", "keras_v3"):
        import h5py

        with h5py.File(path, "r") as h5file:
            if layout == "keras_legacy_h5":
                return keras_h5.read_legacy(keras_h5.legacy_root(h5file))
            return keras_h5.read_v3(h5file, model)
    if layout == "keras_archive":
        return keras_h5.read_keras_archive(path, model)
    if layout == "safetensors":
        from safetensors.numpy import load_file

        return _read_mapping(load_file(path), model)
    from multinet import backend

    return _read_mapping(torchvision.unwrap_checkpoint(backend.load_torch_checkpoint(path)),
                         model)


def _read_mapping(mapping: Mapping, model) -> SourceWeights:
    mapping = torchvision.unwrap_checkpoint(mapping)
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError("expected a mapping of tensor names to arrays (a state dict)")
    if torchvision.is_state_dict(mapping):
        return torchvision.read_state_dict(mapping, model)
    # {layer name: [arrays]} in Keras layouts, as model.get_layer(n).get_weights() gives.
    tensors = {}
    for name, value in mapping.items():
        arrays = value if isinstance(value, (list, tuple)) else [value]
        tensors[str(name)] = [torchvision.to_numpy(a) for a in arrays]
    return SourceWeights("keras_layers", tensors)


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, Mapping):
        return f"a {type(source).__name__} of {len(source)} tensors"
    return f"a {type(source).__name__}"


def load_weights(model, source, *, skip_mismatch: bool = False) -> LoadReport:
    """Load weights into ``model`` from a file path or an in-memory mapping.

    Reads, by content: Keras 3 ``.weights.h5`` and ``.keras``; legacy Keras 1/2
    HDF5 (keras.applications, keras-squeezenet); torchvision checkpoints as
    ``.pth``/``.pt`` (needs PyTorch) or ``.safetensors`` (does not); a mapping
    of torchvision names to arrays or tensors (``module.state_dict()``), or of
    layer names to lists of arrays in Keras layouts.

    Everything is read and checked before any variable is assigned: a missing
    tensor, an unexpected tensor or a shape mismatch raises one
    ``WeightsLoadError`` (a ``ValueError``) naming every offending layer, and
    leaves the model as it was. With ``skip_mismatch=True``, layers whose
    shapes differ are skipped (and reported) and the rest loads. A model
    built with ``include_top=False`` ignores the classifier of a full file.
    Returns a ``LoadReport``.

    Raises, always before any variable is assigned:

    - ``WeightsLoadError`` (a ``ValueError``), one line naming the file: the
      file is unreadable (truncated, corrupt, not a weights file, a structure
      or dtype Keras never writes, a tensor larger than the data it stores),
      or its tensors do not fit the model. Every other exception raised while
      reading becomes this one.
    - ``FileNotFoundError`` when ``source`` is a path to no file.
    - ``TypeError`` when ``source`` is neither a path nor a mapping.
    - ``ImportError`` when a ``.pth`` file needs PyTorch and it is not installed.
    """
    described = _describe(source)
    is_path = isinstance(source, (str, os.PathLike))
    if not is_path and not isinstance(source, Mapping):
        raise TypeError(
            f"weights source must be a file path or a mapping, got {type(source).__name__}"
        )
    if is_path and not os.path.isfile(source):
        raise FileNotFoundError(f"weights file not found: {os.fspath(source)}")
    try:
        found = _read_path(os.fspath(source), model) if is_path else _read_mapping(source, model)
    except ImportError:  # PyTorch, to read a .pth
        raise
    except Exception as error:  # unreadable: truncated, garbage, wrong structure
        reason = " ".join(str(error).split()) or type(error).__name__
        raise WeightsLoadError(f"cannot read weights from {described}: {reason}") from error
    return _assign(model, found, described, skip_mismatch=skip_mismatch)


def _assign(model, found: SourceWeights, described: str, *, skip_mismatch: bool) -> LoadReport:
    report = LoadReport(described, found.layout, model.name, preprocessing=found.preprocessing)
    targets = {layer.name: layer for layer in model.layers if layer.weights}
    fam = torchvision.family(model)
    head_names = set(torchvision.HEADS.get(fam, ()))
    model_has_head = bool(head_names & set(targets))
    # A keras_v3 file matched by class order: extra layers beyond the model's
    # (a full file into an include_top=False model) are that file's head.
    if found.layout == "keras_v3" and not model_has_head and head_names:
        extras = [n for n in found.tensors if n not in targets]
        if len(extras) == len(head_names):
            found.head = set(extras)
    else:
        found.head |= head_names & set(found.tensors)

    problems, plan = [], []
    for name, layer in targets.items():
        variables = layer.weights
        expected = [tuple(v.shape) for v in variables]
        arrays = found.tensors.get(name)
        if arrays is None:
            problems.append(f"{name}: missing (expected {format_shapes(expected)})")
            continue
        got = [tuple(a.shape) for a in arrays]
        if got != expected:
            reason = (f"shape mismatch, expected {format_shapes(expected)}, "
                      f"found {format_shapes(got)}")
            if skip_mismatch:
                origin = found.labels.get(name)
                where = f" (file: {origin})" if origin and origin != name else ""
                report.skipped[name] = reason + where
            else:
                problems.append(f"{found.label(name)}: {reason}")
            continue
        plan.append((name, variables, arrays))
    for name, arrays in found.tensors.items():
        if name in targets:
            continue
        shapes = format_shapes(a.shape for a in arrays)
        if name in found.head and not model_has_head:
            report.skipped[found.label(name)] = (
                f"classifier tensors ({shapes}); the model has no top (include_top=False)")
        else:
            problems.append(f"{found.label(name)}: unexpected, not in the model ({shapes})")
    if problems:
        raise WeightsLoadError(
            f"cannot load weights from {described} into {model.name}: "
            f"{len(problems)} problem{'s' * (len(problems) > 1)}: " + "; ".join(problems)
        )
    converted = []
    for name, variables, arrays in plan:
        values = []
        for variable, array in zip(variables, arrays):
            value = np.asarray(array, dtype=variable.dtype)
            if not np.all(np.isfinite(value)):
                raise WeightsLoadError(
                    f"cannot load weights from {described} into {model.name}: "
                    f"{found.label(name)} holds NaN or infinite values"
                )
            values.append(value)
        converted.append((name, variables, values))
    for name, variables, values in converted:
        for variable, value in zip(variables, values):
            variable.assign(value)
        report.loaded.append(name)
        report.num_values += sum(int(v.size) for v in values)
    remember(model, layout=found.layout, preprocessing=found.preprocessing, source=described)
    return report
