"""The PyTorch (zip) and safetensors readers: no framework needed, nothing run.

Fidelity: bit for bit against ``torch.load(weights_only=True)`` (torch
session) and ``safetensors.numpy.load_file``. Files without PyTorch come from
``helpers.write_torch_zip``, checked against ``torch.load`` where it exists.
Damaged files of every kind end in ``WeightsLoadError`` with the model as it was.
"""

from __future__ import annotations

import collections
import importlib.util
import io
import json
import pickle
import struct
import sys
import zipfile

import keras
import numpy as np
import pytest
import weight_fixtures as wf
from helpers import TorchStorage, TorchTensor, torch_zip_state, write_torch_zip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import multinet
from multinet.weights import WeightsLoadError
from multinet.weights.pytorch import read_checkpoint
from multinet.weights.safetensors import read_safetensors

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
MUTATIONS = settings(PROPERTY, max_examples=120)


def same_bits(ours, expected):
    """dtype, shape and every byte equal."""
    expected = np.asarray(expected)
    assert ours.dtype == expected.dtype and ours.shape == expected.shape
    np.testing.assert_array_equal(np.ascontiguousarray(ours).reshape(-1).view(np.uint8),
                                  np.ascontiguousarray(expected).reshape(-1).view(np.uint8))


def as_numpy(tensor):
    import torch

    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.contiguous().numpy()


def assert_matches_torch(ours, theirs):
    assert list(ours) == list(theirs)
    for name, tensor in theirs.items():
        same_bits(ours[name], as_numpy(tensor))


@pytest.fixture(scope="module")
def model():
    """One model for the module: every test snapshots it before it loads."""
    return multinet.create_model("squeezenet1_1", input_shape=(64, 64, 3))


def snapshot(model):
    return [np.array(w) for w in model.get_weights()]


def assert_unchanged(model, before):
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


# -- against torch.load (torch session) -----------------------------------------


def torch_tensors(torch):
    gen = torch.Generator().manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    shared = torch.randn(10, generator=gen)
    specials = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-40, 3e38])
    return {
        "float32": torch.randn(3, 5, generator=gen),
        "float64": torch.randn(4, dtype=torch.float64, generator=gen),
        "float16": torch.cat([torch.randn(6, generator=gen), specials[:5]]).half(),
        "bfloat16": torch.cat([torch.randn(2, 3, generator=gen).reshape(-1), specials]).bfloat16(),
        "int64": torch.tensor([-2**63, 2**63 - 1, 0, -1]),
        "int32": torch.tensor([-2**31, 2**31 - 1, 5], dtype=torch.int32),
        "int16": torch.tensor([-2**15, 2**15 - 1], dtype=torch.int16),
        "int8": torch.tensor([-128, 127, 0], dtype=torch.int8),
        "uint8": torch.tensor([0, 255, 17], dtype=torch.uint8),
        "bool": torch.tensor([[True, False], [False, True]]),
        "transposed": base.T,
        "sliced": base[1:3, ::2],
        "row": base[2],
        "column": base[:, 4],
        "shared_head": shared[:4],
        "shared_tail": shared[3:],
        "shared_2d": shared.view(2, 5),
        "scalar": torch.tensor(3.25),
        "scalar_int": torch.tensor(7),
        "scalar_view": base[3, 5],
        "empty": torch.zeros(0, 3),
        "empty_view": base[:, 6:],
        "expanded": torch.arange(3.0).expand(4, 3),
        "parameter": torch.nn.Parameter(torch.randn(2, generator=gen)),
    }


def test_reader_matches_torch_load(tmp_path):
    torch = pytest.importorskip("torch")
    tensors = torch_tensors(torch)
    path = tmp_path / "tensors.pth"
    torch.save(tensors, path)
    ours = read_checkpoint(path)
    assert_matches_torch(ours, torch.load(path, weights_only=True))
    same_bits(ours["transposed"], np.arange(24, dtype="float32").reshape(4, 6).T)


def test_reader_matches_torch_load_on_a_module_state_dict(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                              torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1), torch.nn.BatchNorm2d(4))
    net(torch.randn(2, 3, 8, 8))  # training mode: running stats move, batches are counted
    state = net.state_dict()
    path = tmp_path / "net.pth"
    torch.save(state, path)
    ours = read_checkpoint(path)
    assert_matches_torch(ours, torch.load(path, weights_only=True))
    assert ours["1.num_batches_tracked"].dtype == np.int64 and ours["1.num_batches_tracked"] == 1
    assert ours._metadata == state._metadata  # what load_state_dict reads, kept as saved
    wrapped = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": state, "epoch": 3, "losses": [0.5, 0.25], "tag": "x"}, wrapped)
    ours = read_checkpoint(wrapped)
    assert (ours["epoch"], ours["losses"], ours["tag"]) == (3, [0.5, 0.25], "x")
    assert_matches_torch(ours["state_dict"], state)


# -- the hand-written zip layout ------------------------------------------------


def hand_written():
    """(the object to write, the arrays it must read back as)."""
    rng = np.random.default_rng(0)
    flat = rng.standard_normal(12).astype("float32")
    storage = TorchStorage(flat)
    bfloat16_bits = np.array([0x3F80, 0xC000, 0x7F80, 0xFF80, 0x7FC0, 0x8000, 0x0001, 0x4049],
                             dtype="uint16")
    arrays = {
        "float64": rng.standard_normal((2, 3)),
        "float16": rng.standard_normal(5).astype("float16"),
        "int64": np.array([-2**63, 2**63 - 1, 3]),
        "int32": np.array([-7, 2**31 - 1], dtype="int32"),
        "int16": np.array([-2, 300], dtype="int16"),
        "int8": np.array([-128, 127], dtype="int8"),
        "uint8": np.array([0, 255], dtype="uint8"),
        "bool": np.array([[True], [False]]),
        "scalar": np.float32(2.5),
        "empty": np.zeros((0, 4), dtype="float32"),
    }
    obj = collections.OrderedDict((k, TorchTensor.of(v)) for k, v in arrays.items())
    obj["bfloat16"] = TorchTensor.of(bfloat16_bits, "BFloat16Storage")
    obj["matrix"] = TorchTensor(storage, 0, (3, 4))
    obj["transposed"] = TorchTensor(storage, 0, (4, 3), (1, 4))
    obj["window"] = TorchTensor(storage, 5, (2, 2), (4, 2))
    obj["repeated"] = TorchTensor(storage, 1, (3, 2), (0, 1))
    expected = dict(arrays)
    expected["bfloat16"] = (bfloat16_bits.astype("uint32") << 16).view("float32")
    expected["matrix"] = flat.reshape(3, 4)
    expected["transposed"] = flat.reshape(3, 4).T
    expected["window"] = flat[[[5, 7], [9, 11]]]
    expected["repeated"] = np.stack([flat[1:3]] * 3)
    return obj, expected


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_hand_written_checkpoint_reads_back(byteorder, tmp_path):
    obj, expected = hand_written()
    path = write_torch_zip(tmp_path / "hand.pth", obj, byteorder=byteorder)
    ours = read_checkpoint(path)
    assert list(ours) == list(expected)
    for name, array in expected.items():
        same_bits(ours[name], array)
    assert ours["bfloat16"][:4].tolist() == [1.0, -2.0, np.inf, -np.inf]
    assert np.isnan(ours["bfloat16"][4])
    if byteorder == "big":  # the bytes in the file really are big-endian
        with zipfile.ZipFile(path) as archive:
            assert archive.read("archive/data/0") == expected["float64"].astype(">f8").tobytes()


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_torch_reads_the_hand_written_checkpoint_the_same(byteorder, tmp_path):
    torch = pytest.importorskip("torch")
    obj, _ = hand_written()
    path = write_torch_zip(tmp_path / "hand.pth", obj, byteorder=byteorder)
    assert_matches_torch(read_checkpoint(path), torch.load(path, weights_only=True))


def test_hand_written_pth_loads_with_torch_blocked(tmp_path, monkeypatch):
    state = wf.torchvision_state_dict("squeezenet1_1")
    path = write_torch_zip(tmp_path / "squeezenet1_1.pth", torch_zip_state(state))
    from_file = multinet.create_model("squeezenet1_1", input_shape=(64, 64, 3))
    from_mapping = multinet.create_model("squeezenet1_1", input_shape=(64, 64, 3))
    with monkeypatch.context() as blocked:
        blocked.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
        report = multinet.load_weights(from_file, path)
    assert report.layout == "torchvision" and report.num_values == from_file.count_params()
    multinet.load_weights(from_mapping, state)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    out = keras.ops.convert_to_numpy(from_file(x))
    np.testing.assert_array_equal(out, keras.ops.convert_to_numpy(from_mapping(x)))
    for a, b in zip(from_file.get_weights(), from_mapping.get_weights(), strict=True):
        same_bits(a, b)
    if importlib.util.find_spec("torch") is not None:  # the torch session: torch reads it too
        import torch

        loaded = torch.load(path, weights_only=True)
        assert list(loaded) == list(state)
        for name, array in state.items():
            same_bits(as_numpy(loaded[name]), array)


# -- what the PyTorch reader refuses ----------------------------------------------


def test_legacy_format_says_what_to_do(tmp_path, model):
    legacy = tmp_path / "legacy.pth"  # torch.save before 1.6: pickles one after another
    legacy.write_bytes(pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
                       + pickle.dumps({"features.0.weight": [1.0]}, protocol=2))
    plain = tmp_path / "plain.pth"
    plain.write_bytes(pickle.dumps({"features.0.weight": [1.0]}, protocol=2))
    before = snapshot(model)
    for path, kind in ((legacy, "legacy"), (plain, "not a zip file")):
        with pytest.raises(WeightsLoadError) as info:
            multinet.load_weights(model, path)
        message = str(info.value)
        assert "\n" not in message and path.name in message and kind in message
        assert "re-save" in message and "torch.save" in message and ".safetensors" in message
    assert_unchanged(model, before)


def _raw_pickle(*ops):
    return b"\x80\x02" + b"".join(ops) + b"."


GOOD = TorchTensor.of(np.ones(3, dtype="float32"))


@pytest.mark.parametrize("case,match", [
    ("quantized storage", r"refused global torch\.QInt8Storage"),
    ("storage too short", r"storage archive/data/0 \(4 x FloatStorage\) holds 12 bytes, "
                          r"expected 16"),
    ("view past storage", r"reaches element 3 of storage data/0, which has 3"),
    ("missing storage", r"storage archive/data/0 \(3 x FloatStorage\) is missing"),
    ("bad byteorder", r"archive/byteorder is b'middle'"),
    ("not a mapping", r"holds a list, not a mapping"),
    ("unknown persistent id", r"unknown persistent id \('module'"),
    ("torchscript", r"TorchScript archive"),
    ("two pickles", r"2 data\.pkl files"),
    ("truncated pickle", r"archive/data\.pkl is not a valid pickle"),
    ("damaged pickle", r"archive/data\.pkl cannot be unpickled \(UnpicklingError: Memo value "
                       r"not found at index 5\)"),
    ("huge repeat", r"repeats the 3 elements of storage data/0 into more than"),
    ("huge memo index", r"LONG_BINPUT 16777216 at byte 3 is past the end of the 9-byte pickle"),
    ("huge frame", r"FRAME 1099511627776 at byte 2 is past the end of the 12-byte pickle"),
])
def test_malformed_checkpoints_are_named(case, match, tmp_path, model):
    path = tmp_path / "bad.pth"
    if case == "quantized storage":
        write_torch_zip(path, {"w": TorchTensor(TorchStorage(np.zeros(3, "int8"), "QInt8Storage"))})
    elif case == "storage too short":
        write_torch_zip(path, {"w": TorchTensor.of(np.zeros(4, "float32"))})
        rewrite(path, data=lambda key, raw: raw[:12])
    elif case == "view past storage":
        write_torch_zip(path, {"w": TorchTensor(TorchStorage(np.zeros(3, "float32")), 1, (3,))})
    elif case == "missing storage":
        write_torch_zip(path, {"w": GOOD})
        rewrite(path, drop={"archive/data/0"})
    elif case == "bad byteorder":
        write_torch_zip(path, {"w": GOOD}, byteorder="little")
        rewrite(path, extra={"archive/byteorder": b"middle"})
    elif case == "not a mapping":
        write_torch_zip(path, [GOOD])
    elif case == "unknown persistent id":
        write_torch_zip(path, {"w": GOOD})
        rewrite(path, pickle_bytes=lambda raw: raw.replace(
            b"X\x07\x00\x00\x00storage", b"X\x06\x00\x00\x00module", 1))
    elif case == "torchscript":
        write_torch_zip(path, {"w": GOOD})
        rewrite(path, extra={"archive/constants.pkl": _raw_pickle(b")")})
    elif case == "two pickles":
        write_torch_zip(path, {"w": GOOD})
        rewrite(path, extra={"other/data.pkl": _raw_pickle(b"}")})
    elif case == "truncated pickle":
        write_torch_zip(path, {"w": GOOD})
        rewrite(path, pickle_bytes=lambda raw: raw[:-30])
    elif case == "damaged pickle":  # valid opcodes, but a memo entry that was never stored
        write_torch_zip(path, {"w": GOOD})
        rewrite(path, pickle_bytes=lambda raw: b"\x80\x02h\x05.")
    elif case == "huge repeat":
        write_torch_zip(path, {"w": TorchTensor(TorchStorage(np.zeros(3, "float32")), 0,
                                                (2**20, 2**10, 3), (0, 0, 1))})
    elif case == "huge memo index":  # the C unpickler would size its memo by the index
        write_torch_zip(path, {"w": GOOD})
        rewrite(path, pickle_bytes=lambda raw: b"\x80\x02}r" + (2**24).to_bytes(4, "little") + b".")
    else:  # a protocol 4 frame longer than the pickle
        write_torch_zip(path, {"w": GOOD})
        rewrite(path, pickle_bytes=lambda raw: b"\x80\x04\x95" + (2**40).to_bytes(8, "little")
                + b".")
    before = snapshot(model)
    with pytest.raises(WeightsLoadError, match=match) as info:
        multinet.load_weights(model, path)
    assert "bad.pth" in str(info.value) and "\n" not in str(info.value)
    assert_unchanged(model, before)


def rewrite(path, *, pickle_bytes=None, data=None, drop=(), extra=None):
    """Rewrite the zip at ``path``: transform data.pkl or storages, drop or add entries."""
    with zipfile.ZipFile(path) as archive:
        entries = [(n, archive.read(n)) for n in archive.namelist()]
    entries = [(n, raw) for n, raw in entries if n not in drop]
    extra = dict(extra or {})
    with zipfile.ZipFile(path, "w") as archive:
        for name, raw in entries:
            if name in extra:
                raw = extra.pop(name)
            elif name.endswith("/data.pkl") and pickle_bytes:
                raw = pickle_bytes(raw)
            elif "/data/" in name and data:
                raw = data(name, raw)
            archive.writestr(name, raw)
        for name, raw in extra.items():
            archive.writestr(name, raw)


# -- safetensors -----------------------------------------------------------------

NUMPY_DTYPES = ["float64", "float32", "float16", "int64", "int32", "int16", "int8",
                "uint64", "uint32", "uint16", "uint8", "bool"]


def numpy_tensors():
    rng = np.random.default_rng(0)
    tensors = {}
    for dtype in NUMPY_DTYPES:
        if dtype == "bool":
            values = rng.integers(0, 2, (3, 4)).astype(bool)
        elif dtype.startswith("float"):
            values = rng.standard_normal((3, 4)).astype(dtype)
            values.reshape(-1)[:4] = [np.inf, -np.inf, np.nan, -0.0]
        else:
            info = np.iinfo(dtype)
            values = rng.integers(info.min, info.max, (3, 4), dtype=dtype, endpoint=True)
            values.reshape(-1)[:2] = [info.min, info.max]
        tensors[dtype] = values
        tensors[f"{dtype}_scalar"] = np.array(values.reshape(-1)[5])
        tensors[f"{dtype}_empty"] = values[:0]
    return tensors


def test_safetensors_reader_matches_the_safetensors_package(tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = numpy_tensors()
    path = tmp_path / "all.safetensors"
    save_file(tensors, str(path), metadata={"format": "np"})
    ours, theirs = read_safetensors(path), load_file(str(path))
    assert sorted(ours) == sorted(theirs) == sorted(tensors)
    for name in tensors:
        same_bits(ours[name], theirs[name])
        same_bits(ours[name], tensors[name])


def safetensors_bytes(header: dict, data: bytes, *, pad=True) -> bytes:
    raw = json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def test_safetensors_bfloat16_widens_exactly(tmp_path):
    bits = np.array([0x3F80, 0xC000, 0x7F80, 0x7FC1, 0x0001, 0x8000], dtype="<u2")
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(safetensors_bytes(
        {"x": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]}}, bits.tobytes()))
    ours = read_safetensors(path)["x"]
    assert ours.dtype == np.float32 and ours.shape == (2, 3)
    np.testing.assert_array_equal(ours.reshape(-1).view("uint32"), bits.astype("uint32") << 16)


def squeezenet_safetensors(path, classes=1000):
    from safetensors.numpy import save_file

    save_file(wf.torchvision_state_dict("squeezenet1_1", classes=classes), str(path))
    return path


def split_safetensors(raw: bytes):
    length = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def first_two(header):
    """The names of the first two tensors in the data, by offset."""
    names = sorted((k for k in header if k != "__metadata__"),
                   key=lambda k: header[k]["data_offsets"])
    return names[0], names[1]


def damage_safetensors(raw: bytes, damage: str) -> bytes:
    header, data = split_safetensors(raw)
    a, b = first_two(header)
    if damage == "length past the end":
        return struct.pack("<Q", len(raw)) + raw[8:]
    if damage == "not JSON":
        return safetensors_bytes({}, b"")[:8] + b"{not json" + raw[17:]
    if damage == "offsets past the end":
        begin, end = header[b]["data_offsets"]
        header[b]["data_offsets"] = [len(data) + 8, len(data) + 8 + end - begin]
    elif damage == "overlapping":
        header[b]["data_offsets"] = [x - 4 for x in header[b]["data_offsets"]]
    elif damage == "gap":
        data = data + b"\0" * 4
    elif damage == "shape mismatch":
        header[a]["shape"] = header[a]["shape"][:-1] + [header[a]["shape"][-1] + 1]
    elif damage == "unknown dtype":
        header[a]["dtype"] = "F8_E9M9"
    elif damage == "duplicate name":
        text = json.dumps(header)
        return _with_length(
            "{" + json.dumps(a) + ": " + json.dumps(header[a]) + ", " + text[1:], data)
    return safetensors_bytes(header, data)


def _with_length(text: str, data: bytes) -> bytes:
    return struct.pack("<Q", len(text.encode())) + text.encode() + data


SAFETENSORS_DAMAGE = {
    "length past the end": r"header length \d+ runs past the end of the file \(\d+ bytes\)",
    "not JSON": r"the header is not JSON",
    "offsets past the end": r"data_offsets \[\d+, \d+\] run past the end of the data",
    "overlapping": r"overlaps the tensor before it",
    "gap": r"bytes \d+ to \d+ of the data belong to no tensor",
    "shape mismatch": r"shape \[[\d, ]+\] of F32 is \d+ bytes, data_offsets \[\d+, \d+\] hold",
    "unknown dtype": r"unsupported dtype 'F8_E9M9'",
    "duplicate name": r"the header names '[\w.]+' twice",
}


@pytest.mark.parametrize("damage", list(SAFETENSORS_DAMAGE))
def test_damaged_safetensors_are_named_and_change_nothing(damage, tmp_path, model):
    raw = squeezenet_safetensors(tmp_path / "good.safetensors").read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(damage_safetensors(raw, damage))
    before = snapshot(model)
    with pytest.raises(WeightsLoadError, match=SAFETENSORS_DAMAGE[damage]) as info:
        multinet.load_weights(model, bad)
    assert "bad.safetensors" in str(info.value) and "\n" not in str(info.value)
    assert_unchanged(model, before)
    multinet.load_weights(model, tmp_path / "good.safetensors")  # the intact file loads


def test_safetensors_loads_without_the_package(tmp_path, monkeypatch, model):
    path = squeezenet_safetensors(tmp_path / "sq.safetensors")
    state = wf.torchvision_state_dict("squeezenet1_1")
    other = multinet.create_model("squeezenet1_1", input_shape=(64, 64, 3))
    with monkeypatch.context() as blocked:
        blocked.setitem(sys.modules, "safetensors", None)
        blocked.setitem(sys.modules, "safetensors.numpy", None)
        multinet.load_weights(model, path)
    multinet.load_weights(other, state)
    for a, b in zip(model.get_weights(), other.get_weights(), strict=True):
        same_bits(a, b)


# -- properties: damaged files never escape as anything but WeightsLoadError --------


@pytest.fixture(scope="module")
def property_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("property")
    state = wf.torchvision_state_dict("squeezenet1_1", classes=10)
    pth = write_torch_zip(root / "good.pth", torch_zip_state(state))
    with zipfile.ZipFile(pth) as archive:
        entries = {n: archive.read(n) for n in archive.namelist()}
    safetensors = squeezenet_safetensors(root / "good.safetensors", classes=10).read_bytes()
    model = multinet.create_model("squeezenet1_1", input_shape=(64, 64, 3), classes=10)
    return root, entries, safetensors, model


def zip_bytes(entries) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, raw in entries.items():
            archive.writestr(name, raw)
    return buffer.getvalue()


def load_damaged(model, path, raw, *, may_load=False):
    """Load ``raw`` from ``path``: a ``WeightsLoadError`` that changes nothing, or
    (``may_load``: a damage that still leaves a valid file) a complete load."""
    path.write_bytes(raw)
    before = snapshot(model)
    try:
        multinet.load_weights(model, path)
    except WeightsLoadError as error:
        assert "\n" not in str(error) and path.name in str(error)
        assert_unchanged(model, before)
        return
    assert may_load, "a damaged file loaded"


@MUTATIONS
@given(data=st.data())
def test_mutated_pickles_fail_cleanly(property_files, data):
    root, entries, _, model = property_files
    pickled = bytearray(entries["archive/data.pkl"])
    if data.draw(st.booleans(), label="truncate"):
        pickled = pickled[: data.draw(st.integers(0, len(pickled) - 1), label="length")]
    else:
        flips = data.draw(st.lists(st.tuples(st.integers(0, len(pickled) - 1),
                                             st.integers(1, 255)), min_size=1, max_size=4))
        for position, xor in flips:
            pickled[position] ^= xor
    # A flip inside a name or a value can leave a valid pickle, which then loads.
    load_damaged(model, root / "mutated.pth",
                 zip_bytes({**entries, "archive/data.pkl": bytes(pickled)}), may_load=True)


@PROPERTY
@given(data=st.data())
def test_missing_storages_fail_cleanly(property_files, data):
    root, entries, _, model = property_files
    storages = sorted(n for n in entries if "/data/" in n)
    missing = data.draw(st.sets(st.sampled_from(storages), min_size=1, max_size=5))
    kept = {n: raw for n, raw in entries.items() if n not in missing}
    load_damaged(model, root / "missing.pth", zip_bytes(kept))


@PROPERTY
@given(data=st.data())
def test_truncated_archives_fail_cleanly(property_files, data):
    root, entries, _, model = property_files
    raw = zip_bytes(entries)
    length = data.draw(st.one_of(st.integers(0, 64), st.integers(0, len(raw) - 1)))
    load_damaged(model, root / "truncated.pth", raw[:length])


@MUTATIONS
@given(data=st.data())
def test_mutated_safetensors_headers_fail_cleanly(property_files, data):
    root, _, raw, model = property_files
    length = struct.unpack("<Q", raw[:8])[0]
    mutated = bytearray(raw)
    flips = data.draw(st.lists(st.tuples(st.integers(0, 8 + length - 1), st.integers(1, 255)),
                               min_size=1, max_size=4))
    for position, xor in flips:
        mutated[position] ^= xor
    load_damaged(model, root / "mutated.safetensors", bytes(mutated), may_load=True)


@PROPERTY
@given(data=st.data())
def test_safetensors_offsets_past_the_end_fail_cleanly(property_files, data):
    root, _, raw, model = property_files
    header, body = split_safetensors(raw)
    names = sorted(k for k in header if k != "__metadata__")
    name = data.draw(st.sampled_from(names))
    begin = data.draw(st.integers(0, len(body) + 64))
    end = data.draw(st.integers(max(begin, len(body) + 1), len(body) + 2**40))
    header[name]["data_offsets"] = [begin, end]
    load_damaged(model, root / "offsets.safetensors", safetensors_bytes(header, body))
