"""``.safetensors`` files read into numpy, without the safetensors package.

The format: an 8-byte little-endian header length N, N bytes of a JSON object
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}``, then the tensors' raw little-endian bytes, ``data_offsets``
counting from the end of the header. Every tensor's bytes are checked to lie
in the file, to match its shape and dtype, and to tile the data exactly (no
overlap, no gap, nothing after the last tensor), as the safetensors package
itself requires.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

# safetensors dtype names and the numpy dtypes of their bytes (BF16 widened to float32 on read).
DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "u1",
}
# The safetensors package refuses headers larger than this.
MAX_HEADER_BYTES = 100_000_000


class SafetensorsError(ValueError):
    """A ``.safetensors`` file that cannot be read; the message is one line."""


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise SafetensorsError(f"the header names {key!r:.80} twice")
        seen[key] = value
    return seen


def read_header(path) -> tuple[dict, int]:
    """The tensors' entries of the header and the byte offset where data starts."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{size} bytes, too short for the 8-byte header length")
        length = int.from_bytes(head, "little")
        if length > size - 8:
            raise SafetensorsError(
                f"the header length {length} runs past the end of the file ({size} bytes)"
            )
        if length > MAX_HEADER_BYTES:
            raise SafetensorsError(f"the header length {length} exceeds {MAX_HEADER_BYTES} bytes")
        raw = fh.read(length)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except SafetensorsError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        reason = " ".join(str(error).split())[:120]
        raise SafetensorsError(f"the header is not JSON ({reason})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"the header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict):
        raise SafetensorsError(
            f"the header's __metadata__ is a {type(metadata).__name__}, not an object")
    return header, 8 + length


def _entry(name: str, entry, data_size: int) -> tuple[np.dtype, tuple[int, ...], int, int, str]:
    where = f"tensor {name!r:.80}"
    if not isinstance(entry, dict):
        raise SafetensorsError(f"{where}: the header entry is not an object")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
    if missing:
        raise SafetensorsError(f"{where}: the header entry has no {', '.join(missing)}")
    kind = entry["dtype"]
    if not isinstance(kind, str) or kind not in DTYPES:
        raise SafetensorsError(
            f"{where}: unsupported dtype {kind!r:.40} (supported: {', '.join(DTYPES)})")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise SafetensorsError(f"{where}: shape {shape!r:.80} is not a list of sizes")
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(
            isinstance(n, int) and not isinstance(n, bool) for n in offsets)):
        raise SafetensorsError(f"{where}: data_offsets {offsets!r:.80} is not [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise SafetensorsError(f"{where}: data_offsets [{begin}, {end}] are out of order")
    if end > data_size:
        raise SafetensorsError(
            f"{where}: data_offsets [{begin}, {end}] run past the end of the data "
            f"({data_size} bytes)"
        )
    dtype = np.dtype(DTYPES[kind])
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise SafetensorsError(
            f"{where}: shape {shape} of {kind} is {expected} bytes, data_offsets "
            f"[{begin}, {end}] hold {end - begin}"
        )
    return dtype, tuple(shape), begin, end, kind


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Every tensor of the ``.safetensors`` file at ``path``, name to numpy array,
    as saved (BF16 as float32). Raises ``SafetensorsError`` (a ``ValueError``)
    with one line for a bad header length, a header that is not JSON, an
    unknown dtype, offsets outside the data, overlapping or missing bytes, or a
    shape that does not match its bytes.
    """
    header, start = read_header(path)
    data_size = os.path.getsize(path) - start
    entries = {str(name): _entry(str(name), entry, data_size) for name, entry in header.items()}
    position = 0
    for name, (_, _, begin, end, _) in sorted(entries.items(), key=lambda e: e[1][2:4]):
        if begin < position:
            raise SafetensorsError(f"tensor {name!r:.80} overlaps the tensor before it "
                                   f"(data_offsets begin at {begin}, before {position})")
        if begin > position:
            raise SafetensorsError(f"bytes {position} to {begin} of the data belong to no tensor")
        position = end
    if position != data_size:
        raise SafetensorsError(
            f"bytes {position} to {data_size} of the data belong to no tensor")
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read(data_size)
    if len(data) != data_size:
        raise SafetensorsError(f"the file ended after {start + len(data)} bytes while reading")
    tensors = {}
    for name, (dtype, shape, begin, end, kind) in entries.items():
        if end > begin:
            array = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize,
                                  offset=begin).astype(dtype.newbyteorder("=")).reshape(shape)
        else:
            array = np.empty(shape, dtype=dtype.newbyteorder("="))
        if kind == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        elif kind == "BOOL":
            array = array != 0
        tensors[name] = array
    return tensors
