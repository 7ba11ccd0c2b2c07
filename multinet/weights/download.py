"""Published weights files: the cache, hash-checked atomic downloads, offline use.

Files live in ``$KERAS_HOME/models`` (``~/.keras/models`` by default), where
keras.applications keeps the same files. Environment:

- ``MULTINET_OFFLINE=1``: never download; only the cache is used.
- ``MULTINET_WEIGHTS_MIRROR=<base url>``: download ``<base url>/<file name>``
  instead of the publisher's URL.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.parse
import warnings
from pathlib import Path

from multinet.weights.report import WeightsUnavailableError

ENV_OFFLINE = "MULTINET_OFFLINE"
ENV_MIRROR = "MULTINET_WEIGHTS_MIRROR"
CACHE_SUBDIR = "models"

_VERIFIED: set = set()  # (path, size, mtime) of cached files whose hash was checked


def offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("", "0", "false", "no")


def cache_dir() -> Path:
    """``$KERAS_HOME/models``, or ``~/.keras/models``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / CACHE_SUBDIR


def safe_filename(name: str) -> str:
    """``name`` if it is a plain file name that stays inside the cache folder."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or os.path.isabs(name)
        or name != name.strip()
        or name.startswith(".")
    ):
        raise ValueError(f"refusing weights file name {name!r}: not a plain file name")
    return name


def file_for(entry, include_top: bool = True) -> tuple[str, str, str | None, str | None]:
    """(file name, origin URL, hash, hash algorithm) of an entry's file."""
    if not include_top and entry.notop_url:
        url, file_hash = entry.notop_url, entry.notop_file_hash
    else:
        url, file_hash = entry.url, entry.file_hash
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    return safe_filename(name), url, file_hash, entry.hash_algorithm if file_hash else None


def cached_path(entry, include_top: bool = True) -> Path | None:
    """Where the entry's file is in the cache, or None if it is not there."""
    name = file_for(entry, include_top)[0]
    path = cache_dir() / name
    return path if path.is_file() else None


def file_digest(path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_matches(path, file_hash: str, algorithm: str) -> tuple[bool, str]:
    """Whether the file's hash is ``file_hash`` (a full hex digest, or a prefix of
    one, as torchvision publishes); also returns the computed digest."""
    actual = file_digest(path, algorithm)
    expected = file_hash.lower()
    return (actual == expected if len(expected) >= len(actual) else
            actual.startswith(expected)), actual


def _unavailable(what: str, name: str, url: str, target: Path, reason: str):
    return WeightsUnavailableError(
        f"{what} needs the weights file {name} ({reason}). Download it from {url} and "
        f"save it as {target}, or pass a local copy with weights=PATH"
    )


def fetch(entry, include_top: bool = True, *, model_name: str = "this model") -> Path:
    """The entry's file in the cache, downloaded first if needed.

    Downloads go to a temporary name in the cache folder through
    ``keras.utils.get_file``, are hash-checked (the full md5 of keras files,
    the sha256 prefix of torchvision's), and only then moved into place, so
    the cache never holds a partial or corrupt file. A file without a
    published hash is accepted with a warning giving its sha256.
    """
    name, url, file_hash, algorithm = file_for(entry, include_top)
    folder = cache_dir()
    target = folder / name
    what = f"{model_name} with weights {entry.name!r}"
    if target.is_file():
        if file_hash is None:
            return target
        stat = target.stat()
        key = (str(target), stat.st_size, stat.st_mtime_ns)
        if key in _VERIFIED:
            return target
        ok, actual = hash_matches(target, file_hash, algorithm)
        if ok:
            _VERIFIED.add(key)
            return target
        if offline():
            raise _unavailable(
                what, name, url, target,
                f"the cached copy has {algorithm} {actual}, expected {file_hash}; "
                f"replace it, or unset {ENV_OFFLINE} to download it again")
    if offline():
        raise _unavailable(what, name, url, target,
                           f"offline mode ({ENV_OFFLINE}=1) and it is not in the cache")
    mirror = os.environ.get(ENV_MIRROR, "").strip()
    source = f"{mirror.rstrip('/')}/{urllib.parse.quote(name)}" if mirror else url
    folder.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".download-", dir=folder)
    try:
        import keras

        try:
            keras.utils.get_file(name, source, cache_dir=staging, cache_subdir="")
        except Exception as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            where = f" (mirror {mirror})" if mirror else ""
            raise _unavailable(what, name, url, target,
                               f"download from {source}{where} failed: {reason}") from None
        downloaded = Path(staging) / name
        if file_hash is not None:
            ok, actual = hash_matches(downloaded, file_hash, algorithm)
            if not ok:
                raise _unavailable(
                    what, name, url, target,
                    f"the file downloaded from {source} is corrupt: {algorithm} {actual} does "
                    f"not match the published {file_hash}; it was deleted")
        else:
            warnings.warn(
                f"{name} (from {source}) has no published hash; its sha256 is "
                f"{file_digest(downloaded, 'sha256')}; check it against a source you trust",
                UserWarning, stacklevel=3,
            )
        os.replace(downloaded, target)
        stat = target.stat()
        _VERIFIED.add((str(target), stat.st_size, stat.st_mtime_ns))
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)
