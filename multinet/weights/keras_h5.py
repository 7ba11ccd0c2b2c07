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
"""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np

from multinet.weights.source import SourceWeights


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_list_attr(group, name: str) -> list[str] | None:
    """An attribute list, joined from its numbered chunks when it was split."""
    if name in group.attrs:
        return [_text(v) for v in np.asarray(group.attrs[name]).ravel()]
    chunks, index = [], 0
    while f"{name}{index}" in group.attrs:
        chunks.extend(_text(v) for v in np.asarray(group.attrs[f"{name}{index}"]).ravel())
        index += 1
    return chunks if index else None


def legacy_root(h5file):
    """The group holding ``layer_names`` in a legacy file, or None."""
    for group in (h5file, h5file.get("model_weights")):
        if group is not None and read_list_attr(group, "layer_names") is not None:
            return group
    return None


def keras_layer_name(name: str) -> str:
    """multinet's name for a legacy layer name ('/' is not allowed in Keras 3)."""
    return name.replace("/", "_")


def read_legacy(root) -> SourceWeights:
    tensors, labels = {}, {}
    for layer_name in read_list_attr(root, "layer_names"):
        if layer_name not in root:
            raise ValueError(f"layer {layer_name!r} is listed in layer_names but has no group")
        group = root[layer_name]
        weight_names = read_list_attr(group, "weight_names") or []
        if not weight_names:
            continue  # input, pooling, activation, ... layers
        arrays = []
        for weight_name in weight_names:
            if weight_name not in group:
                raise ValueError(
                    f"layer {layer_name!r} lists weight {weight_name!r}, which is not in the file"
                )
            arrays.append(np.asarray(group[weight_name]))
        name = keras_layer_name(layer_name)
        if name in tensors:
            raise ValueError(f"layer {name!r} appears twice in the file")
        tensors[name] = arrays
        labels[name] = layer_name
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


def _layer_vars(group) -> list[np.ndarray]:
    variables = group.get("vars")
    if variables is None:
        return []
    return [np.asarray(variables[str(i)]) for i in range(len(variables))]


def read_v3(h5file, model, config_layers=None) -> SourceWeights:
    """Read a Keras 3 weights file for ``model``.

    ``config_layers`` (from a ``.keras`` archive) gives each stored layer its
    real name; without it, stored layers are matched to the model's layers by
    class and order, as Keras itself does.
    """
    stored = h5file.get("layers")
    if stored is None:
        raise ValueError("a Keras 3 weights file without a 'layers' group")
    if config_layers is not None:
        keys = v3_keys([cls for cls, _ in config_layers])
        key_names = {key: name for key, (_, name) in zip(keys, config_layers)}
    else:
        keys = v3_keys([type(layer).__name__ for layer in model.layers])
        key_names = {key: layer.name for key, layer in zip(keys, model.layers)}
    tensors, labels = {}, {}
    for key in stored:
        arrays = _layer_vars(stored[key])
        if not arrays:
            continue
        name = key_names.get(key, key)
        tensors[name] = arrays
        labels[name] = f"layers/{key}"
    return SourceWeights("keras_v3", tensors, labels)


def read_keras_archive(path, model) -> SourceWeights:
    import h5py

    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        data = archive.read("model.weights.h5")
    layers = (config.get("config") or {}).get("layers")
    config_layers = None
    if isinstance(layers, list):
        config_layers = [
            (entry.get("class_name", ""),
             entry.get("name") or (entry.get("config") or {}).get("name", ""))
            for entry in layers
        ]
    with h5py.File(io.BytesIO(data), "r") as h5file:
        found = read_v3(h5file, model, config_layers)
    # A multinet model saved whole says in its ModelInfo layer what its
    # weights expect.
    for entry in layers if isinstance(layers, list) else ():
        if isinstance(entry, dict) and entry.get("class_name") == "ModelInfo":
            weights = ((entry.get("config") or {}).get("info") or {}).get("weights") or {}
            if isinstance(weights, dict) and isinstance(weights.get("preprocessing"), str):
                found.preprocessing = weights["preprocessing"]
    return found
