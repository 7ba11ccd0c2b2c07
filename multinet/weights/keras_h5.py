"""Keras weight files: legacy Keras 1/2 HDF5, Keras 3 ``.weights.h5`` and ``.keras``.

Legacy files list their layers in the root attribute ``layer_names`` (split
into ``layer_names0``, ``layer_names1``, ... when large), possibly under a
``model_weights`` group; each layer group lists its datasets in
``weight_names`` (trainable first, then non-trainable). Names are read, never
guessed. A '/' in a layer name (``Conv/BatchNorm``) is a nested group in the
file and ``_`` in multinet (``Conv_BatchNorm``).

Keras 3 files store each layer's variables under ``layers/<key>/vars/<i>``,
where ``<key>`` is the snake-cased class name numbered in layer order
(``conv2d``, ``conv2d_1``, ...); a ``.keras`` archive also carries the layer
names in ``config.json``.

The readers trust nothing in a file: every name must be printable text, every
group a group, every weight a dataset of real floating-point numbers (or of the
target variable's kind, in a Keras 3 file) whose data is stored in the file. A
problem raises one ``ValueError`` naming the layer and the weight, which
``load_weights`` reports as a ``WeightsLoadError`` naming the file.
"""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np

from multinet.weights.source import SourceWeights

# A compressed dataset or zip member may not declare more than this many times
# the bytes it stores, past the floor (Keras refuses zip members the same way):
# a few stored bytes that would fill all memory are a bomb, not weights.
_MAX_EXPANSION = 100
_EXPANSION_FLOOR = 1 << 28  # 256 MiB


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def read_list_attr(group, name: str) -> list[str] | None:
    """An attribute list of names, joined from its numbered chunks (``name0``,
    ``name1``, ...) when it was split; None when there is none."""
    attrs = group.attrs
    if name in attrs:
        parts = [name]
    else:
        parts = []
        while f"{name}{len(parts)}" in attrs:
            parts.append(f"{name}{len(parts)}")
    if not parts:
        return None
    names = []
    for part in parts:
        try:
            names.extend(_text(v) for v in np.asarray(attrs[part]).ravel())
        except Exception as error:
            raise ValueError(f"attribute {part!r} of {group.name!r} cannot be read as names "
                             f"({_one_line(error)})") from error
    return names


def _check_name(name, what: str) -> str:
    """``name`` if it is non-empty printable text (it ends up in messages and
    is matched against layer names)."""
    if not isinstance(name, str) or not name or not name.isprintable():
        raise ValueError(f"{what} {name!r}, which is not a layer name (non-empty printable text)")
    return name


def _read_tensor(dataset, where: str, kinds: str = "f") -> np.ndarray:
    """The array of one weight: a dataset whose numbers are in the file.

    ``kinds`` are the numpy dtype kinds accepted (floating point by default).
    Sizes are checked before anything is read, so a few bytes that declare a
    huge tensor (unwritten chunks, a compression bomb, data in another file)
    are refused instead of filling memory.
    """
    import h5py

    if not isinstance(dataset, h5py.Dataset):
        raise ValueError(f"{where} is a {type(dataset).__name__}, not a dataset")
    try:
        shape, dtype = dataset.shape, dataset.dtype
        stored = dataset.id.get_storage_size()
        compressed = dataset.id.get_create_plist().get_nfilters() > 0
    except Exception as error:  # a datatype numpy has no equivalent for, a damaged header
        raise ValueError(f"{where} cannot be read ({_one_line(error)})") from error
    if shape is None:
        raise ValueError(f"{where} holds no data (an empty dataspace)")
    if dtype.kind not in kinds or dtype.names is not None:
        expected = "floating point" if kinds == "f" else f"a {'/'.join(kinds)} kind"
        raise ValueError(f"{where} has dtype {dtype}, expected {expected}")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    limit = max(_MAX_EXPANSION * stored, _EXPANSION_FLOOR) if compressed else stored
    if declared > limit:
        raise ValueError(
            f"{where} declares shape {tuple(shape)} ({declared:,} bytes) but the file "
            f"stores {stored:,} bytes of it")
    try:
        return np.asarray(dataset[()])
    except Exception as error:
        raise ValueError(f"{where} cannot be read ({_one_line(error)})") from error


def legacy_root(h5file):
    """The group holding ``layer_names`` in a legacy file, or None."""
    import h5py

    for group in (h5file, h5file.get("model_weights")):
        if isinstance(group, h5py.Group) and read_list_attr(group, "layer_names") is not None:
            return group
    return None


def keras_layer_name(name: str) -> str:
    """multinet's name for a legacy layer name ('/' is not allowed in Keras 3)."""
    return name.replace("/", "_")


def nested_layers(layer_name: str, weight_names, arrays) -> list:
    """``[(layer, arrays), ...]`` of one group of a legacy file: the group's
    own layer, or, for a model nested in the saved one (a tf.keras
    ``Sequential`` inside a functional model, as keras.applications' ConvNeXt
    stem), the inner layers whose weights the group holds, named
    ``<inner layer>/<variable>``, in the file's order. A group is a nested
    model's when its weights come from two or more layers, none of them the
    group's own name or a scope under it."""
    prefixes = [str(w).rsplit("/", 1)[0] if "/" in str(w) else None for w in weight_names]
    own = [p is None or p == layer_name or p.startswith(layer_name + "/") for p in prefixes]
    if any(own) or len(set(prefixes)) < 2:
        return [(layer_name, list(arrays))]
    groups: dict[str, list] = {}
    for prefix, array in zip(prefixes, arrays):
        groups.setdefault(prefix, []).append(array)
    return list(groups.items())


def read_legacy(root) -> SourceWeights:
    import h5py

    tensors, labels = {}, {}
    for layer_name in read_list_attr(root, "layer_names"):
        where = f"layer {layer_name!r}"
        _check_name(layer_name, "layer_names lists")
        try:
            group = root.get(layer_name)
        except Exception as error:
            raise ValueError(f"{where} cannot be opened ({_one_line(error)})") from error
        if group is None:
            raise ValueError(f"{where} is listed in layer_names but has no group")
        if not isinstance(group, h5py.Group):
            raise ValueError(f"{where} is a {type(group).__name__}, not a group")
        weight_names = read_list_attr(group, "weight_names") or []
        if not weight_names:
            continue  # input, pooling, activation, ... layers
        if len(set(weight_names)) != len(weight_names):
            raise ValueError(f"{where} lists a weight twice in weight_names: {weight_names!r}")
        arrays = []
        for weight_name in weight_names:
            try:
                dataset = group.get(weight_name)
            except Exception as error:
                raise ValueError(f"{where}, weight {weight_name!r} cannot be opened "
                                 f"({_one_line(error)})") from error
            if dataset is None:
                raise ValueError(f"{where} lists weight {weight_name!r}, which is not in the file")
            # Keras 2's integer weights are counters (Normalization's count:0).
            short = weight_name.rsplit("/", 1)[-1].split(":")[0]
            arrays.append(_read_tensor(dataset, f"{where}, weight {weight_name!r}",
                                       "fiu" if short == "count" else "f"))
        for inner, inner_arrays in nested_layers(layer_name, weight_names, arrays):
            name = keras_layer_name(inner)
            if name in tensors:
                raise ValueError(f"layer {name!r} appears twice in the file")
            tensors[name] = inner_arrays
            labels[name] = layer_name if inner == layer_name else f"{layer_name}/{inner}"
    # The input mode these weights expect is the family's to say.
    return SourceWeights("keras_legacy_h5", tensors, labels)


def _snake_case(name: str) -> str:
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def v3_keys(class_names) -> list[str]:
    """The keys Keras 3 stores a layer list under: class names, numbered."""
    used, keys = {}, []
    for class_name in class_names:
        key = _snake_case(class_name.rsplit(">", 1)[-1])
        if key in used:
            used[key] += 1
            key = f"{key}_{used[key]}"
        else:
            used[key] = 0
        keys.append(key)
    return keys


def is_v3(h5file) -> bool:
    return "layers" in h5file or "vars" in h5file


def _kinds(variable) -> str:
    """The numpy dtype kinds a stored value for ``variable`` may have."""
    dtype = str(getattr(variable, "dtype", "float32"))
    if "float" in dtype:
        return "f"
    return "b" if dtype == "bool" else "iu"


def _layer_vars(group, where: str, variables=()) -> list[np.ndarray]:
    """A Keras 3 layer's stored variables ``vars/0``, ``vars/1``, ...; ``variables``
    are the target layer's, which give the dtype kind each must have."""
    import h5py

    if not isinstance(group, h5py.Group):
        raise ValueError(f"{where} is a {type(group).__name__}, not a group")
    stored = group.get("vars")
    if stored is None:
        return []
    if not isinstance(stored, h5py.Group):
        raise ValueError(f"{where}/vars is a {type(stored).__name__}, not a group")
    keys = list(stored)
    if sorted(keys) != sorted(str(i) for i in range(len(keys))):
        expected = [str(i) for i in range(len(keys))]
        raise ValueError(f"{where}/vars holds {sorted(keys)!r}, expected {expected!r}")
    variables = list(variables)
    return [_read_tensor(stored[str(i)], f"{where}/vars/{i}",
                         _kinds(variables[i]) if i < len(variables) else "fiub")
            for i in range(len(keys))]


def read_v3(h5file, model, config_layers=None) -> SourceWeights:
    """Read a Keras 3 weights file for ``model``.

    ``config_layers`` (from a ``.keras`` archive) gives each stored layer its
    real name; without it, stored layers are matched to the model's layers by
    class and order, as Keras itself does.
    """
    import h5py

    stored = h5file.get("layers")
    if stored is None:
        raise ValueError("a Keras 3 weights file without a 'layers' group")
    if not isinstance(stored, h5py.Group):
        raise ValueError(f"'layers' is a {type(stored).__name__}, not a group")
    if config_layers is not None:
        keys = v3_keys([cls for cls, _ in config_layers])
        key_names = {key: name for key, (_, name) in zip(keys, config_layers)}
    else:
        keys = v3_keys([type(layer).__name__ for layer in model.layers])
        key_names = {key: layer.name for key, layer in zip(keys, model.layers)}
    model_vars = {layer.name: layer.weights for layer in model.layers}
    tensors, labels = {}, {}
    for key in stored:
        label = f"layers/{key}"
        name = _check_name(key_names.get(key, key), label + " is stored for")
        arrays = _layer_vars(stored[key], label, model_vars.get(name, ()))
        if not arrays:
            continue
        if name in tensors:
            raise ValueError(f"{label} and {labels[name]} are both layer {name!r}")
        tensors[name] = arrays
        labels[name] = label
    return SourceWeights("keras_v3", tensors, labels)


def _archive_layers(config) -> list[tuple[str, str]] | None:
    """(class name, layer name) of each layer in a ``.keras`` config, or None
    when the config lists no layers."""
    if not isinstance(config, dict):
        raise ValueError("config.json does not hold an object")
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list):
        return None
    found = []
    for index, entry in enumerate(layers):
        if not isinstance(entry, dict):
            raise ValueError(f"config.json: layer {index} is not an object")
        layer_config = entry.get("config")
        name = entry.get("name") or (
            layer_config.get("name") if isinstance(layer_config, dict) else None)
        class_name = entry.get("class_name", "")
        if not isinstance(class_name, str):
            raise ValueError(f"config.json: layer {index} has class_name {class_name!r}")
        found.append((class_name, _check_name(name, f"config.json: layer {index} has name")))
    return found


def _read_member(archive, name: str) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > max(_MAX_EXPANSION * info.compress_size, _EXPANSION_FLOOR):
        raise ValueError(f"{name} would expand from {info.compress_size:,} to "
                         f"{info.file_size:,} bytes; refusing a decompression bomb")
    return archive.read(name)


def read_keras_archive(path, model) -> SourceWeights:
    import h5py

    with zipfile.ZipFile(path) as archive:
        text = _read_member(archive, "config.json")
        try:
            config = json.loads(text)
        except ValueError as error:  # bad JSON or bad UTF-8
            raise ValueError(f"config.json is not valid JSON ({_one_line(error)})") from error
        data = _read_member(archive, "model.weights.h5")
    config_layers = _archive_layers(config)
    with h5py.File(io.BytesIO(data), "r") as h5file:
        found = read_v3(h5file, model, config_layers)
    # A multinet model saved whole says in its ModelInfo layer what its
    # weights expect.
    layers = (config.get("config") or {}).get("layers") if isinstance(config, dict) else None
    for entry in layers if isinstance(layers, list) else ():
        if isinstance(entry, dict) and entry.get("class_name") == "ModelInfo":
            info = (entry.get("config") or {}).get("info") if isinstance(
                entry.get("config"), dict) else None
            weights = info.get("weights") if isinstance(info, dict) else None
            if isinstance(weights, dict) and isinstance(weights.get("preprocessing"), str):
                found.preprocessing = weights["preprocessing"]
    return found
