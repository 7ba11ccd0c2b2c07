"""PyTorch checkpoints (``torch.save``'s zip format) read into numpy, without PyTorch.

The zip holds ``<prefix>/data.pkl`` (a pickle of the saved object in which
every tensor is a call to ``torch._utils._rebuild_tensor_v2`` on a storage),
one ``<prefix>/data/<key>`` file of raw bytes per storage, and
``<prefix>/byteorder`` (``little`` or ``big``; little when absent, as
``torch.load`` assumes).

A pickle can call any importable function while it loads, so ``data.pkl`` is
read by an unpickler that knows only the names a saved state dict uses: the
tensor and parameter rebuild functions, ``collections.OrderedDict`` and the
storage types. Each of them is a stand-in here (a storage type is a numpy
dtype, a rebuild function builds a numpy array); any other global, such as
``os.system``, is refused before it is looked up, so nothing is imported or
run. Storages are the only persistent ids, read from the zip.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import warnings
import zipfile
from collections import OrderedDict

import numpy as np

# numpy dtypes of the storage types torch.save writes (byte order added on read).
_STORAGE_DTYPES = {
    "FloatStorage": "f4",
    "DoubleStorage": "f8",
    "HalfStorage": "f2",
    "BFloat16Storage": "u2",  # raw bits, widened to float32 after reading
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "u1",
}
# torch.save wrote this pickle of the magic number first in its pre-1.6 format.
LEGACY_MAGIC = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
# A view whose elements repeat (stride 0, as from expand) is copied; past this
# size, when larger than its storage, it is refused instead of allocated.
_MAX_EXPANDED_BYTES = 1 << 30


class CheckpointError(ValueError):
    """A PyTorch checkpoint that cannot be read; the message is one line."""


class _Frozen:
    """No attributes can be set: a pickle's BUILD cannot alter a stand-in."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"cannot set {name}")


class _StorageType(_Frozen):
    __slots__ = ("name", "dtype", "bfloat16", "bool")

    def __init__(self, name: str):
        for attr, value in (("name", name), ("dtype", np.dtype(_STORAGE_DTYPES[name])),
                            ("bfloat16", name == "BFloat16Storage"),
                            ("bool", name == "BoolStorage")):
            object.__setattr__(self, attr, value)


class _Storage(_Frozen):
    """The elements of one ``data/<key>`` file, in native byte order."""

    __slots__ = ("key", "type", "array")

    def __init__(self, key: str, storage_type: _StorageType, array: np.ndarray):
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "type", storage_type)
        object.__setattr__(self, "array", array)


def _as_index(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"{what} is {value!r}, not a non-negative integer")
    return value


def _as_shape(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise CheckpointError(f"{what} is a {type(value).__name__}, not a tuple of integers")
    return tuple(_as_index(v, what) for v in value)


def rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2``: the view (offset, size, stride) of a
    storage, as a contiguous numpy array (bfloat16 widened to float32)."""
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"a tensor's storage is a {type(storage).__name__}")
    offset = _as_index(storage_offset, "a storage offset")
    shape = _as_shape(size, "a tensor size")
    strides = _as_shape(stride, "a tensor stride")
    if len(strides) != len(shape):
        raise CheckpointError(f"a tensor of size {shape} has stride {strides}")
    data = storage.array
    numel = math.prod(shape)
    if numel:
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
        if last >= data.size:
            raise CheckpointError(
                f"a tensor of size {shape}, stride {strides} at offset {offset} reaches element "
                f"{last} of storage data/{storage.key}, which has {data.size}"
            )
        if numel > data.size and numel * data.itemsize > _MAX_EXPANDED_BYTES:
            raise CheckpointError(
                f"a tensor of size {shape} repeats the {data.size} elements of storage "
                f"data/{storage.key} into more than {_MAX_EXPANDED_BYTES} bytes"
            )
        view = np.lib.stride_tricks.as_strided(
            data[offset:], shape=shape, strides=[s * data.itemsize for s in strides],
            writeable=False,
        )
        array = np.array(view, order="C")
    else:
        array = np.empty(shape, dtype=data.dtype)
    if storage.type.bfloat16:
        array = (array.astype(np.uint32) << 16).view(np.float32)
    elif storage.type.bool:
        array = array != 0
    return array


def rebuild_parameter(data, *_ignored):
    """``torch._utils._rebuild_parameter`` (and ``..._with_state``): the tensor."""
    if not isinstance(data, np.ndarray):
        raise CheckpointError(f"a parameter holds a {type(data).__name__}, not a tensor")
    return data


class _Call(_Frozen):
    """A frozen callable, so that the unpickler hands out nothing mutable."""

    __slots__ = ("function",)

    def __init__(self, function):
        object.__setattr__(self, "function", function)

    def __call__(self, *args):
        return self.function(*args)


def _new_ordered_dict(*args):
    if args:  # torch.save writes OrderedDict() and fills it with SETITEMS
        raise CheckpointError("an OrderedDict built with arguments")
    return OrderedDict()


_REBUILD = {
    ("torch._utils", "_rebuild_tensor_v2"): _Call(rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Call(rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Call(rebuild_parameter),
    ("collections", "OrderedDict"): _Call(_new_ordered_dict),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl``: the globals of ``_REBUILD`` and the storage
    types, storages from ``read_storage(key, storage_type, numel)``; nothing else."""

    def __init__(self, file, read_storage):
        super().__init__(file)
        self._read_storage = read_storage
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        found = _REBUILD.get((module, name))
        if found is not None:
            return found
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(
            f"refused global {module}.{name}: a PyTorch weights file holds only tensors "
            "and containers, and nothing else in it is run"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise CheckpointError(f"unknown persistent id {pid!r:.80}, expected a storage")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"a storage of type {storage_type!r:.80}")
        if isinstance(key, bytes):
            key = key.decode("ascii", "replace")
        if not isinstance(key, str) or not key:
            raise CheckpointError(f"a storage key {key!r:.80}")
        numel = _as_index(numel, f"the size of storage data/{key}")
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(key, storage_type, self._read_storage(key, storage_type, numel))
            self._storages[key] = storage
        elif storage.type.name != storage_type.name or storage.array.size != numel:
            raise CheckpointError(
                f"storage data/{key} is used as {storage.type.name} of {storage.array.size} "
                f"and as {storage_type.name} of {numel} elements"
            )
        return storage


def _prefix(archive: zipfile.ZipFile) -> str:
    names = archive.namelist()
    pickles = sorted({n[: -len("data.pkl")] for n in names
                      if n.endswith("/data.pkl") and n.count("/") == 1})
    if not pickles:
        raise CheckpointError("a zip file with no <name>/data.pkl: not a torch.save checkpoint")
    if len(pickles) > 1:
        raise CheckpointError(f"a zip file with {len(pickles)} data.pkl files: "
                              + ", ".join(p + "data.pkl" for p in pickles))
    prefix = pickles[0]
    if f"{prefix}constants.pkl" in names or any(n.startswith(f"{prefix}code/") for n in names):
        raise CheckpointError(
            "a TorchScript archive (torch.jit.save), not a state dict: save "
            "model.state_dict() with torch.save, or convert it to .safetensors"
        )
    return prefix


def _read_entry(archive: zipfile.ZipFile, name: str, archive_size: int, *,
                size: int | None = None, what: str = "") -> bytes:
    """The bytes of one entry, its directory sizes checked against the file (and
    against ``size`` when given) before anything is read or decompressed."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{what or name} is missing from the archive") from None
    most = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else 1100)
    if info.compress_size > archive_size or info.file_size > most:
        raise CheckpointError(
            f"{name} claims {info.file_size} bytes in {info.compress_size} bytes of a "
            f"{archive_size}-byte archive"
        )
    if size is not None and info.file_size != size:
        raise CheckpointError(f"{what or name} holds {info.file_size} bytes, expected {size}")
    try:
        return archive.read(info)
    except Exception as error:  # a damaged entry: bad CRC, bad compressed data
        raise CheckpointError(f"{name} cannot be read ({error})") from error


def _byte_order(archive: zipfile.ZipFile, prefix: str, archive_size: int) -> str:
    name = f"{prefix}byteorder"
    try:
        info = archive.getinfo(name)
    except KeyError:
        return "<"  # torch.load's default for files saved before the mark existed
    if info.file_size > 8:
        raise CheckpointError(f"{name} holds {info.file_size} bytes, expected b'little' or b'big'")
    mark = _read_entry(archive, name, archive_size)
    if mark not in (b"little", b"big"):
        raise CheckpointError(f"{name} is {mark!r}, expected b'little' or b'big'")
    return "<" if mark == b"little" else ">"


_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}


def check_opcodes(pickled: bytes, name: str) -> None:
    """Walk the pickle's opcodes without running them: every length within the data,
    no memo index or frame larger than the pickle (the C unpickler sizes its memo and
    buffers by those numbers before it reads what follows)."""
    size = len(pickled)
    try:
        with warnings.catch_warnings():  # a text STRING with a bad escape warns as it decodes
            warnings.simplefilter("ignore", DeprecationWarning)
            for opcode, arg, position in pickletools.genops(pickled):
                if opcode.name in _MEMO_OPS and arg > size or (
                        opcode.name == "FRAME" and arg > size - position):
                    raise CheckpointError(
                        f"{name}: {opcode.name} {arg} at byte {position} is past the end of "
                        f"the {size}-byte pickle")
    except CheckpointError:
        raise
    except Exception as error:  # an unknown opcode, a truncated argument
        reason = " ".join(str(error).split())[:200]
        raise CheckpointError(f"{name} is not a valid pickle ({reason})") from error


def legacy_format_error() -> CheckpointError:
    return CheckpointError(
        "a PyTorch checkpoint in the legacy (pre-1.6) pickle format, which is not read: "
        "load it with torch.load and re-save it with a current torch.save (which writes the "
        "zip format), or convert it to .safetensors"
    )


def read_checkpoint(path):
    """The object ``torch.save`` wrote to ``path`` (a state dict, or a dict that
    holds one), with every tensor a numpy array: float32, float64, float16,
    int64, int32, int16, int8, uint8 and bool as saved, bfloat16 as float32.

    Raises ``CheckpointError`` (a ``ValueError``) with one line for anything
    else: a refused global, a missing or short storage, a tensor outside its
    storage, a damaged pickle or archive, the legacy non-zip format. Only a
    file that cannot be opened raises ``OSError``.
    """
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            head = fh.read(32)
        if LEGACY_MAGIC in head[:16]:
            raise legacy_format_error()
        raise CheckpointError(
            "not a zip file: torch.save has written zip checkpoints since PyTorch 1.6; "
            "re-save the file with a current torch.save or convert it to .safetensors"
        )
    archive_size = os.path.getsize(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as error:
        raise CheckpointError(f"a damaged zip archive ({error})") from error
    with archive:
        prefix = _prefix(archive)
        order = _byte_order(archive, prefix, archive_size)

        def read_storage(key, storage_type, numel):
            name = f"{prefix}data/{key}"
            raw = _read_entry(archive, name, archive_size,
                              size=numel * storage_type.dtype.itemsize,
                              what=f"storage {name} ({numel} x {storage_type.name})")
            stored = storage_type.dtype.newbyteorder(order)
            return np.frombuffer(raw, dtype=stored).astype(stored.newbyteorder("="), copy=False)

        pickled = _read_entry(archive, f"{prefix}data.pkl", archive_size)
        check_opcodes(pickled, f"{prefix}data.pkl")
        try:
            with warnings.catch_warnings():  # as in check_opcodes
                warnings.simplefilter("ignore", DeprecationWarning)
                obj = RestrictedUnpickler(io.BytesIO(pickled), read_storage).load()
        except CheckpointError:
            raise
        except Exception as error:  # a damaged pickle: every kind of failure, one type
            reason = " ".join(str(error).split())[:200] or "no details"
            raise CheckpointError(
                f"{prefix}data.pkl cannot be unpickled ({type(error).__name__}: {reason})"
            ) from error
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"the checkpoint holds a {type(obj).__name__}, not a mapping of names to tensors"
        )
    return obj

