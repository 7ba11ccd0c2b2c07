"""Damaged Keras weight files: every reader fails cleanly and changes nothing.

Property-based (hypothesis, derandomized, bounded): valid legacy Keras HDF5,
Keras 3 ``.weights.h5`` and ``.keras`` files for a small squeezenet1_1 are
damaged (attributes, datasets, dtypes, shapes, config.json, zip members,
truncation, flipped bytes), and random bytes are given every suffix. Each load
must end in one one-line ``WeightsLoadError`` naming the file (and the damaged
layer, where one was damaged), with the model's weights as they were: no other
exception, no hang (a watchdog ends the run), no crash.
"""

from __future__ import annotations

import faulthandler
import json
import shutil
import zipfile

import h5py
import numpy as np
import pytest
import weight_fixtures as wf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import multinet
from multinet.weights import WeightsLoadError

CLASSES = 10
FUZZ = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HANG_SECONDS = 300  # a whole test; each is meant to take seconds


@pytest.fixture(autouse=True)
def _watchdog():
    """A read that never returns ends the run with every thread's traceback."""
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def build():
    return multinet.create_model("squeezenet1_1", input_shape=(32, 32, 3), classes=CLASSES)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Valid files of each Keras layout, the layer names in each, and a work folder."""
    folder = tmp_path_factory.mktemp("fuzz")
    layers = wf.keras_squeezenet_layers(classes=CLASSES)
    legacy = folder / "legacy.h5"
    wf.write_legacy_h5(legacy, layers)
    wf.write_legacy_h5(folder / "legacy_chunked.h5", layers, chunks=3, model_weights=True)
    source = build()
    multinet.load_weights(source, legacy)
    source.save_weights(folder / "model.weights.h5")
    source.save(folder / "model.keras")
    with h5py.File(folder / "model.weights.h5", "r") as f:
        v3_keys = [k for k in f["layers"] if len(f["layers"][k]["vars"])]
    return {
        "folder": folder,
        "legacy": legacy,
        "legacy_chunked": folder / "legacy_chunked.h5",
        "weights_h5": folder / "model.weights.h5",
        "keras": folder / "model.keras",
        "legacy_layers": [name for name, arrays in layers if arrays],
        "v3_keys": v3_keys,
        "v3_names": dict(zip(multinet.weights.keras_h5.v3_keys(
            [type(layer).__name__ for layer in source.layers]),
            [layer.name for layer in source.layers])),
    }


@pytest.fixture(scope="module")
def model():
    """The model every damaged file is loaded into; it must never change."""
    return build()


def snapshot(model):
    return [np.array(w) for w in model.get_weights()]


def assert_rejected(model, path, names=()):
    """Loading ``path`` raises one one-line WeightsLoadError naming the file (and
    one of ``names``, when given) and leaves ``model`` as it was."""
    before = snapshot(model)
    with pytest.raises(WeightsLoadError) as info:
        multinet.load_weights(model, path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    if names:
        assert any(name in message for name in names), (names, message)
    after = model.get_weights()
    assert len(after) == len(before)
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)
    return message


def test_the_undamaged_files_load(files):
    """The fuzzed files are valid before they are damaged, and differ from a new model."""
    for key in ("legacy", "legacy_chunked", "weights_h5", "keras"):
        target = build()
        initial = snapshot(target)
        report = multinet.load_weights(target, files[key])
        assert len(report.loaded) == 26 and not report.skipped
        assert not np.array_equal(target.get_weights()[0], initial[0])


# -- legacy Keras HDF5 ----------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)
NOT_FLOAT = st.sampled_from(["S8", "int32", "int64", "uint8", "bool", "complex64", "complex128",
                             "vlen_str", "compound"])


def replace_dataset(group, name, data=None, **kwargs):
    del group[name]
    return group.create_dataset(name, data=data, **kwargs)


def non_float(kind, shape):
    if kind == "vlen_str":
        return np.full(shape, "0.5", dtype=object), {"dtype": h5py.string_dtype()}
    if kind == "compound":
        return np.zeros(shape, dtype=[("a", "f4"), ("b", "f4")]), {}
    if kind == "S8":
        return np.full(shape, b"0.5", dtype="S8"), {}
    return np.ones(shape, dtype=kind), {}


def layer_names(root):
    return multinet.weights.keras_h5.read_list_attr(root, "layer_names")


def set_layer_names(root, value, chunks=None):
    for key in [k for k in root.attrs if k.startswith("layer_names")]:
        del root.attrs[key]
    if chunks is None:
        root.attrs["layer_names"] = value
        return
    for index, part in chunks:
        root.attrs[f"layer_names{index}"] = part


def encode(names):
    return np.array([n.encode() for n in names])


def names_damage(root, layer, kind, draw):
    """Damage the layer list of ``root`` around ``layer`` (a weighted layer);
    returns the names the error may give (none: any)."""
    names = layer_names(root)
    both = (layer, multinet.weights.keras_h5.keras_layer_name(layer))
    if kind == "removed":
        set_layer_names(root, None, chunks=[])
        return ()
    if kind == "numeric":
        set_layer_names(root, np.arange(draw(st.integers(1, 60))))
    elif kind == "float":
        set_layer_names(root, np.linspace(0, 1, len(names)))
    elif kind == "empty":
        set_layer_names(root, np.array([], dtype="S1"))
    elif kind == "scalar":
        set_layer_names(root, layer.encode())
    elif kind == "unknown":
        extra = draw(st.lists(TEXT, min_size=1, max_size=3))
        set_layer_names(root, encode([f"zz{n}" for n in extra] + names))
    elif kind == "duplicated":
        set_layer_names(root, encode(names + [layer]))
        return both
    elif kind == "dropped":
        set_layer_names(root, encode([n for n in names if n != layer]))
        return both
    elif kind == "chunk_missing":  # layer_names0, 1, ... without the chunk holding ``layer``
        step = -(-len(names) // draw(st.integers(2, 6)))
        parts = [names[i:i + step] for i in range(0, len(names), step)]
        set_layer_names(root, None, chunks=[(i, encode(part)) for i, part in enumerate(parts)
                                            if layer not in part])
        return () if layer in parts[0] else both
    elif kind == "bad_text":
        bad = draw(st.sampled_from([layer + "\n", "", "\t" + layer, layer + "\x1b[2J", " "]))
        set_layer_names(root, encode([bad if n == layer else n for n in names]))
    elif kind == "bad_utf8":
        set_layer_names(root, np.array([b"\xff\xfe" + n.encode() for n in names]))
        return ("layer_names",)
    elif kind == "extra_layer":
        extra = root.create_group("zz_extra")
        extra.create_dataset("w:0", data=np.zeros((2, 2), "float32"))
        extra.attrs["weight_names"] = np.array([b"w:0"])
        set_layer_names(root, encode(names + ["zz_extra"]))
        return ("zz_extra",)
    else:
        raise AssertionError(kind)
    return ()


def weights_damage(root, layer, kind, draw):
    """Damage one weighted layer of ``root``; returns the names the error may give."""
    group = root[layer]
    weights = [w.decode() for w in group.attrs["weight_names"]]
    name = weights[draw(st.integers(0, len(weights) - 1))]
    if kind == "names_removed":
        del group.attrs["weight_names"]
    elif kind == "names_numeric":
        group.attrs["weight_names"] = np.arange(len(weights))
    elif kind == "names_empty":
        group.attrs["weight_names"] = np.array([], dtype="S1")
    elif kind == "names_unknown":
        group.attrs["weight_names"] = encode([f"zz{draw(TEXT)}", weights[1]])
    elif kind == "names_duplicated":
        group.attrs["weight_names"] = encode([name, name])
    elif kind == "names_reversed":
        group.attrs["weight_names"] = encode(weights[::-1])
    elif kind == "dataset_removed":
        del group[name]
    elif kind == "dataset_extra":
        group.create_dataset("extra:0", data=np.zeros(3, "float32"))
        group.attrs["weight_names"] = encode(weights + ["extra:0"])
    elif kind == "dtype":
        data, kwargs = non_float(draw(NOT_FLOAT), group[name].shape)
        replace_dataset(group, name, data, **kwargs)
    elif kind == "shape":
        replace_dataset(group, name, np.zeros(draw(other_shape(group[name].shape)), "float32"))
    elif kind == "scalar":
        replace_dataset(group, name, np.float32(1.0))
    elif kind == "weight_is_group":
        del group[name]
        group.create_group(name)
    elif kind == "layer_is_dataset":
        del root[layer]
        root.create_dataset(layer, data=np.zeros(4, "float32"))
    elif kind == "huge":  # a few bytes that declare four terabytes
        replace_dataset(group, name, shape=(1 << 40,), dtype="float32", chunks=(1 << 12,),
                        compression=draw(st.sampled_from([None, "gzip"])))
    elif kind == "empty_dataspace":
        replace_dataset(group, name, h5py.Empty("float32"))
    else:
        raise AssertionError(kind)
    return (layer, multinet.weights.keras_h5.keras_layer_name(layer))


def other_shape(shape):
    """Shapes that differ from ``shape``: one more axis, or one axis longer."""
    shape = list(shape)
    longer = st.integers(0, len(shape) - 1).flatmap(lambda axis: st.integers(1, 3).map(
        lambda more: [d + more * (i == axis) for i, d in enumerate(shape)]))
    extra_axis = st.integers(0, len(shape)).flatmap(lambda axis: st.integers(1, 3).map(
        lambda size: shape[:axis] + [size] + shape[axis:]))
    return st.one_of(longer, extra_axis).map(tuple)


NAMES_KINDS = ["removed", "numeric", "float", "empty", "scalar", "unknown", "duplicated",
               "dropped", "chunk_missing", "bad_text", "bad_utf8", "extra_layer"]
WEIGHTS_KINDS = ["names_removed", "names_numeric", "names_empty", "names_unknown",
                 "names_duplicated", "names_reversed", "dataset_removed", "dataset_extra",
                 "dtype", "shape", "scalar", "weight_is_group", "layer_is_dataset", "huge",
                 "empty_dataspace"]
EACH = settings(FUZZ, max_examples=3)


@EACH
@given(data=st.data())
@pytest.mark.parametrize("kind", NAMES_KINDS)
def test_legacy_layer_names_damage(files, model, kind, data):
    path = files["folder"] / "damaged.h5"
    shutil.copyfile(files["legacy"], path)
    layer = data.draw(st.sampled_from(files["legacy_layers"]))
    with h5py.File(path, "r+") as f:
        names = names_damage(f, layer, kind, data.draw)
    assert_rejected(model, path, names)


@EACH
@given(data=st.data())
@pytest.mark.parametrize("kind", WEIGHTS_KINDS)
def test_legacy_layer_damage(files, model, kind, data):
    path = files["folder"] / "damaged.h5"
    shutil.copyfile(files["legacy"], path)
    layer = data.draw(st.sampled_from(files["legacy_layers"]))
    with h5py.File(path, "r+") as f:
        names = weights_damage(f, layer, kind, data.draw)
    assert_rejected(model, path, names)


@FUZZ
@given(data=st.data())
def test_legacy_several_damages(files, model, data):
    """Up to three damaged layers and maybe a damaged layer list, in a file whose
    layers may sit in a model_weights group with layer_names split in chunks."""
    source = data.draw(st.sampled_from(["legacy", "legacy_chunked"]))
    path = files["folder"] / "several.h5"
    shutil.copyfile(files[source], path)
    kinds = data.draw(st.lists(st.sampled_from(WEIGHTS_KINDS), max_size=3))
    layers = data.draw(st.lists(st.sampled_from(files["legacy_layers"]), unique=True,
                                min_size=len(kinds) + 1, max_size=len(kinds) + 1))
    names_kind = data.draw(st.sampled_from(NAMES_KINDS) if not kinds
                           else st.none() | st.sampled_from(NAMES_KINDS))
    with h5py.File(path, "r+") as f:
        root = f["model_weights"] if "model_weights" in f else f
        for kind, layer in zip(kinds, layers):
            weights_damage(root, layer, kind, data.draw)
        if names_kind is not None:
            names_damage(root, layers[-1], names_kind, data.draw)
    assert_rejected(model, path)


# -- Keras 3 .weights.h5 and .keras -----------------------------------------------------

V3_KINDS = ["var_removed", "var_extra", "var_dtype", "var_shape", "var_scalar", "var_is_group",
            "vars_is_dataset", "layer_is_dataset", "layer_renamed", "layer_bad_name", "huge",
            "empty_dataspace", "layers_removed", "layers_is_dataset"]


def v3_damage(f, key, kind, draw, names):
    """Damage layer ``key`` (stored with variables) of a Keras 3 file, or its
    ``layers`` group; returns the names the error may give."""
    layers = f["layers"]
    group = layers[key]
    count = len(group["vars"])
    index = str(draw(st.integers(0, count - 1)))
    variables = group["vars"]
    if kind == "var_removed":
        del variables[index]
    elif kind == "var_extra":
        variables.create_dataset(str(count), data=np.zeros(3, "float32"))
    elif kind == "var_dtype":
        data, kwargs = non_float(draw(NOT_FLOAT), variables[index].shape)
        replace_dataset(variables, index, data, **kwargs)
    elif kind == "var_shape":
        replace_dataset(variables, index,
                        np.zeros(draw(other_shape(variables[index].shape)), "float32"))
    elif kind == "var_scalar":
        replace_dataset(variables, index, np.float32(0.5))
    elif kind == "var_is_group":
        del variables[index]
        variables.create_group(index)
    elif kind == "vars_is_dataset":
        del group["vars"]
        group.create_dataset("vars", data=np.zeros(count, "float32"))
    elif kind == "layer_is_dataset":
        del layers[key]
        layers.create_dataset(key, data=np.zeros(3, "float32"))
    elif kind == "layer_renamed":
        layers.move(key, f"zz{key}")
    elif kind == "layer_bad_name":
        layers.move(key, key + draw(st.sampled_from(["\n", "\t", "\x1b[2J", "\x7f"])))
    elif kind == "huge":
        replace_dataset(variables, index, shape=(1 << 40,), dtype="float32", chunks=(1 << 12,),
                        compression=draw(st.sampled_from([None, "gzip"])))
    elif kind == "empty_dataspace":
        replace_dataset(variables, index, h5py.Empty("float32"))
    elif kind == "layers_removed":
        del f["layers"]
        return ("layers",)
    elif kind == "layers_is_dataset":
        del f["layers"]
        f.create_dataset("layers", data=np.zeros(3, "float32"))
        return ("layers",)
    else:
        raise AssertionError(kind)
    return (f"layers/{key}", names[key])


@EACH
@given(data=st.data())
@pytest.mark.parametrize("kind", V3_KINDS)
def test_keras3_weights_h5_damage(files, model, kind, data):
    path = files["folder"] / "damaged.weights.h5"
    shutil.copyfile(files["weights_h5"], path)
    key = data.draw(st.sampled_from(files["v3_keys"]))
    with h5py.File(path, "r+") as f:
        names = v3_damage(f, key, kind, data.draw, files["v3_names"])
    assert_rejected(model, path, names)


def read_archive(path):
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def write_archive(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def is_json_object(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except ValueError:
        return False


ARCHIVE_KINDS = ["weights_missing", "config_missing", "config_garbage", "config_truncated",
                 "config_not_object", "config_layer_not_object", "config_layer_bad_name",
                 "config_layer_unknown_name", "config_layer_bad_class", "weights_garbage",
                 "weights_damaged"]
NOT_A_NAME = st.sampled_from([1, 2.5, "", " \n", "a\x00b", None, ["conv1"], {"name": "conv1"}])
NOT_AN_OBJECT = st.sampled_from([[], [1, 2], 1, "config", None, True])


def archive_damage(members, kind, draw, files):
    """Damage the members of a .keras archive; returns the names the error may give."""
    config = json.loads(members["config.json"])
    entries = config["config"]["layers"]
    weighted = [i for i, entry in enumerate(entries) if entry["name"] in files["v3_names"].values()
                and entry["class_name"] == "Conv2D"]
    index = draw(st.sampled_from(weighted))
    if kind == "weights_missing":
        del members["model.weights.h5"]
        return ()
    if kind == "config_missing":
        del members["config.json"]
        return ("config.json",)
    if kind == "config_garbage":
        members["config.json"] = draw(st.binary(max_size=64).filter(
            lambda b: not is_json_object(b)))
        return ("config.json",)
    if kind == "config_truncated":
        text = members["config.json"]
        members["config.json"] = text[:draw(st.integers(0, len(text) - 1))]
        return ("config.json",)
    if kind == "config_not_object":
        members["config.json"] = json.dumps(draw(NOT_AN_OBJECT)).encode()
        return ("config.json",)
    if kind == "config_layer_not_object":
        entries[index] = draw(NOT_AN_OBJECT)
    elif kind == "config_layer_bad_name":
        entries[index]["name"] = entries[index]["config"]["name"] = draw(NOT_A_NAME)
    elif kind == "config_layer_unknown_name":
        old = entries[index]["name"]
        entries[index]["name"] = entries[index]["config"]["name"] = f"zz{draw(TEXT)}"
        members["config.json"] = json.dumps(config).encode()
        return (old, f"layer {index}")
    elif kind == "config_layer_bad_class":
        entries[index]["class_name"] = draw(NOT_A_NAME.filter(lambda v: not isinstance(v, str)))
    elif kind == "weights_garbage":
        members["model.weights.h5"] = draw(st.binary(max_size=2048))
        return ()
    elif kind == "weights_damaged":
        path = files["folder"] / "member.h5"
        path.write_bytes(members["model.weights.h5"])
        with h5py.File(path, "r+") as f:
            names = v3_damage(f, draw(st.sampled_from(files["v3_keys"])),
                              draw(st.sampled_from(V3_KINDS)), draw, files["v3_names"])
        members["model.weights.h5"] = path.read_bytes()
        return names
    else:
        raise AssertionError(kind)
    members["config.json"] = json.dumps(config).encode()
    return (f"layer {index}",)


@EACH
@given(data=st.data())
@pytest.mark.parametrize("kind", ARCHIVE_KINDS)
def test_keras_archive_damage(files, model, kind, data):
    members = read_archive(files["keras"])
    names = archive_damage(members, kind, data.draw, files)
    path = files["folder"] / "damaged.keras"
    write_archive(path, members, data.draw(st.sampled_from([zipfile.ZIP_STORED,
                                                            zipfile.ZIP_DEFLATED])))
    assert_rejected(model, path, names)


def test_keras_archive_decompression_bomb_is_refused_unread(files, model):
    """A member that claims to expand past 100x its size (and 256 MiB) is not read."""
    members = read_archive(files["keras"])
    path = files["folder"] / "bomb.keras"
    write_archive(path, members, zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    name = b"model.weights.h5"
    central = data.rindex(b"PK\x01\x02\x14", 0, data.rindex(name))  # its central directory entry
    assert data[central + 46:central + 46 + len(name)] == name
    data[central + 24:central + 28] = (0xFFFF0000).to_bytes(4, "little")  # uncompressed size
    path.write_bytes(bytes(data))
    assert_rejected(model, path, ["model.weights.h5 would expand from", "decompression bomb"])


# -- truncation, flipped bytes, random bytes ----------------------------------------------

LAYOUTS = ["legacy", "legacy_chunked", "weights_h5", "keras"]
SUFFIXES = {"legacy": ".h5", "legacy_chunked": ".h5", "weights_h5": ".weights.h5",
            "keras": ".keras"}


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("layout", LAYOUTS)
def test_truncated_files(files, model, layout, data):
    whole = files[layout].read_bytes()
    size = data.draw(st.one_of(st.integers(0, len(whole) - 1), st.integers(0, 4096),
                               st.integers(len(whole) - 4096, len(whole) - 1)))
    path = files["folder"] / f"truncated{SUFFIXES[layout]}"
    path.write_bytes(whole[:size])
    assert_rejected(model, path)


def metadata_offsets(path):
    """Byte offsets of an HDF5 file outside its datasets' raw data: headers,
    attributes, B-trees, heaps, where a flipped bit changes the structure."""
    with h5py.File(path, "r") as f:
        size = f.id.get_filesize()
        spans = []
        f.visititems(lambda _, obj: spans.append((obj.id.get_offset(), obj.id.get_storage_size()))
                     if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None
                     else None)
    keep = np.ones(size, bool)
    for start, length in spans:
        keep[start:start + length] = False
    return np.flatnonzero(keep)


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("layout", LAYOUTS)
def test_flipped_bytes(files, model, layout, data):
    """Flipped bits end in a WeightsLoadError or a complete load. HDF5 keeps no
    checksums of the data, so a flip in a tensor can load; a .keras archive
    checks every member's CRC, so what it loads is what was saved."""
    whole = bytearray(files[layout].read_bytes())
    if layout == "keras":
        anywhere = st.integers(0, len(whole) - 1)
    else:
        meta = metadata_offsets(files[layout])
        anywhere = st.one_of(st.integers(0, len(whole) - 1),
                             st.sampled_from(meta.tolist()))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(anywhere)
        whole[position] ^= 1 << data.draw(st.integers(0, 7))
    path = files["folder"] / f"flipped{SUFFIXES[layout]}"
    path.write_bytes(bytes(whole))
    before = snapshot(model)
    try:
        report = multinet.load_weights(model, path)
    except WeightsLoadError as error:
        assert "\n" not in str(error) and str(path) in str(error)
        for a, b in zip(model.get_weights(), before):
            np.testing.assert_array_equal(a, b)
        return
    try:
        assert len(report.loaded) == 26 and not report.skipped
        if layout == "keras":
            reference = build()
            multinet.load_weights(reference, files["keras"])
            for a, b in zip(model.get_weights(), reference.get_weights()):
                np.testing.assert_array_equal(a, b)
    finally:
        model.set_weights(before)


TORCH_MAGIC = multinet.weights.loader.TORCH_LEGACY_MAGIC
PREFIXES = [b"", b"\x89HDF\r\n\x1a\n", b"PK\x03\x04", b"PK\x05\x06", b"\x80\x02", b"\x80\x04",
            b"\x8a\x0a", b"\x80\x02" + TORCH_MAGIC, (20).to_bytes(8, "little") + b'{"a": {"dt',
            b"{"]


def has_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@FUZZ
@given(prefix=st.sampled_from(PREFIXES), body=st.binary(max_size=4096),
       suffix=st.sampled_from([".h5", ".weights.h5", ".keras", ".pth", ".safetensors", ""]))
def test_random_bytes_with_any_suffix(files, model, prefix, body, suffix):
    """Random bytes, after each format's magic bytes or none, named like each format.
    Only bytes that start as torch.save's pickles do need PyTorch to be read:
    without it the error is the ImportError that says so."""
    path = files["folder"] / f"random{suffix}"
    path.write_bytes(prefix + body)
    try:
        assert_rejected(model, path)
    except ImportError as error:
        assert not has_torch() and "PyTorch" in str(error)
        assert (prefix + body).startswith(b"\x80\x02" + TORCH_MAGIC)


@pytest.mark.parametrize("head,layout", [
    (b"\x80\x02" + TORCH_MAGIC + b".", "torch"),  # torch.save(..., pickle_protocol=2)
    (b"\x80\x04\x95" + bytes(8) + TORCH_MAGIC + b".", "torch"),  # pickle_protocol=4
    (b"\x80\x02}q\x00.", None),  # a pickle, but not one torch.save wrote
    (b"\x80\x48" + bytes(30), None),  # an HDF5 signature with its first bits flipped
    (b"\x8a\x0a" + bytes(10), None),
])
def test_only_torch_save_pickles_are_read_as_torch(files, head, layout):
    path = files["folder"] / "pickle.bin"
    path.write_bytes(head)
    if layout:
        assert multinet.weights.detect_layout(path) == layout
    else:
        # Not read as a checkpoint: a pickle is told what to do, other bytes are unknown.
        expected = ("a pickle that is not a PyTorch checkpoint" if head[:1] == b"\x80"
                    else "unrecognized weights format")
        with pytest.raises(ValueError, match=expected):
            multinet.weights.detect_layout(path)


def test_a_real_pre_zip_torch_save_file_is_refused_with_what_to_do(files):
    """torch.save(..., _use_new_zipfile_serialization=False) writes the pre-1.6
    format; it is recognised as such (not as an unknown file) and refused in one
    line that says how to re-save it, leaving the model as it was."""
    torch = pytest.importorskip("torch")
    state = {k: torch.from_numpy(v)
             for k, v in wf.torchvision_state_dict("squeezenet1_1", classes=CLASSES).items()}
    path = files["folder"] / "old_format.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    target = build()
    before = snapshot(target)
    with pytest.raises(WeightsLoadError) as info:
        multinet.load_weights(target, path)
    message = str(info.value)
    assert "\n" not in message and "old_format.pth" in message
    assert "legacy (pre-1.6)" in message and "re-save" in message and ".safetensors" in message
    after = snapshot(target)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
