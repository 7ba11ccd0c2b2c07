"""``load_weights``: read any supported source, check it all, then assign."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping

import numpy as np

from multinet.layers import info_layer, model_info
from multinet.weights import keras_h5, pytorch, safetensors, torchvision
from multinet.weights.report import LoadReport, WeightsLoadError, format_shapes
from multinet.weights.source import SourceWeights

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# torch.save's non-zip format opens with a pickled magic number (a 10-byte long)
# after the pickle's protocol header.
TORCH_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

def loaded_weights(model) -> dict | None:
    """``{"entry", "layout", "preprocessing", "source"}`` of the weights last
    loaded into ``model`` by multinet, or None (see ``multinet.model_info``)."""
    return model_info(model).get("weights")


def remember(model, *, entry=None, layout=None, preprocessing=None, source=None):
    """Record in the model's ``ModelInfo`` layer what was loaded into it, so it
    travels with the model through ``.keras`` files and ``clone_model``."""
    layer = info_layer(model)
    if layer is None:  # a model multinet did not build: nothing to record in
        return
    layer.info = {**layer.info, "weights": {
        "entry": entry, "layout": layout, "preprocessing": preprocessing, "source": source,
    }}


def model_family(model):
    """The ``Family`` of a model multinet built, or None."""
    from multinet.registry import get_model_spec, list_models

    name = model_info(model).get("model")
    if name not in list_models():
        return None
    return get_model_spec(name).family


def _is_safetensors(head: bytes) -> bool:
    # An 8-byte header length, then the JSON header; its length is checked on read.
    return head[8:9] == b"{"


def detect_layout(path) -> str:
    """The layout of the file at ``path``, from its content (not its suffix):
    ``keras_legacy_h5``, ``keras_v3``, ``keras_archive``, ``safetensors`` or
    ``torch``."""
    import h5py

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
    if _is_safetensors(head):
        return "safetensors"
    if head[:1] in (b"\x80", b"\x8a") and TORCH_LEGACY_MAGIC in head:  # old torch.save
        return "torch"
    if head[:1] == b"\x80":
        raise ValueError(
            "a pickle that is not a PyTorch checkpoint (not a zip file, no torch.save magic "
            "number); re-save the tensors with a current torch.save, or convert them to "
            ".safetensors")
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
    return _read_mapping(_read_tensor_file(path, layout), model)


def inspect_source(path) -> tuple[str, frozenset]:
    """``(layout, names)`` of a weights file, read before any model is built:
    the layout (``keras_legacy_h5``, ``keras_v3``, ``torchvision``) and the
    layer names of a legacy Keras file ('/' read as '_') or the module names
    of a torchvision checkpoint; what a family needs to choose its
    architecture options (``Family.source_options``).

    Raises ``FileNotFoundError`` or ``WeightsLoadError`` for a file that is
    missing or unreadable, so a bad file fails before a slow model build.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        layout = detect_layout(path)
        if layout == "keras_legacy_h5":
            import h5py

            with h5py.File(path, "r") as h5file:
                names = keras_h5.read_list_attr(keras_h5.legacy_root(h5file), "layer_names")
            return layout, frozenset(keras_h5.keras_layer_name(n) for n in names)
        if layout in ("safetensors", "torch"):
            state = torchvision.unwrap_checkpoint(_read_tensor_file(path, layout))
            if not torchvision.is_state_dict(state):
                return "keras_layers", frozenset(str(k) for k in state)
            modules = torchvision.group_modules(state)
            return "torchvision", frozenset(modules)
        return ("keras_v3", frozenset())
    except ImportError:
        raise
    except Exception as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise WeightsLoadError(f"cannot read weights from {path}: {reason}") from error


def _read_tensor_file(path: str, layout: str):
    """The mapping of names to arrays (or tensors) in a .safetensors or PyTorch file."""
    if layout == "safetensors":
        return safetensors.read_safetensors(path)
    return pytorch.read_checkpoint(path)


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
    ``.pth``/``.pt`` or ``.safetensors`` (neither needs PyTorch); a mapping
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


def _name_for_family(found: SourceWeights, family, model) -> None:
    """Rename a legacy file's layers to the family's names, where they differ."""
    if family is not None and found.layout == "keras_legacy_h5" and family.keras_names:
        info = model_info(model)
        found.rename(family.keras_names(info["model"], info.get("options") or {}))


def read_source(path, model) -> SourceWeights:
    """What the weights file at ``path`` holds for ``model``, assigning nothing:
    the tensors keyed by the model's layer names as ``load_weights`` matches
    them (the file's own names in ``labels``); tensors that match no layer
    keep the file's names. Raises ``WeightsLoadError`` for an unreadable file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        found = _read_path(path, model)
    except ImportError:
        raise
    except Exception as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise WeightsLoadError(f"cannot read weights from {path}: {reason}") from error
    _name_for_family(found, model_family(model), model)
    return found


def _assign(model, found: SourceWeights, described: str, *, skip_mismatch: bool) -> LoadReport:
    targets = {layer.name: layer for layer in model.layers if layer.weights}
    family = model_family(model)
    if family is not None:
        _name_for_family(found, family, model)
        if found.preprocessing is None:
            found.preprocessing = family.preprocessing_for(
                found.layout, model_info(model).get("options"))
    report = LoadReport(described, found.layout, model.name, preprocessing=found.preprocessing)
    head_names = set(family.head_layers) if family is not None else set()
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
        if name in found.problems:
            problems.append(f"{name} (file: {found.labels.get(name, name)}): "
                            f"{found.problems[name]}")
            continue
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
            try:
                value = np.asarray(array, dtype=variable.dtype)
            except (TypeError, ValueError) as error:
                reason = " ".join(str(error).split()) or type(error).__name__
                raise WeightsLoadError(
                    f"cannot load weights from {described} into {model.name}: "
                    f"{found.label(name)} holds {np.asarray(array).dtype} values that are not "
                    f"numbers of {variable.dtype} ({reason})"
                ) from error
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
