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
import time
import urllib.parse
import warnings
from pathlib import Path

from multinet.weights.report import WeightsUnavailableError

ENV_OFFLINE = "MULTINET_OFFLINE"
ENV_MIRROR = "MULTINET_WEIGHTS_MIRROR"
CACHE_SUBDIR = "models"
# A staging folder this old was left by a process that was killed mid-download.
STALE_STAGING_SECONDS = 24 * 3600

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

    Downloads go through ``keras.utils.get_file`` into a staging folder of
    this call's own inside the cache folder, are hash-checked (the full md5 of
    keras files, the sha256 prefix of torchvision's), and only then moved into
    place with one atomic ``os.replace``, so the cache never holds a partial
    or corrupt file, whatever else runs: processes fetching the same file at
    once each stage their own copy and the last identical copy to land wins,
    and a download cut short is deleted with its staging folder (one left by
    a killed process is removed a day later). A file without a published hash
    is accepted with a warning giving its sha256.

    A cached copy with the wrong hash is rejected: it is downloaded again with
    a warning that says so, or, offline or when the download fails, the error
    says so. Raises ``WeightsUnavailableError`` (one line: the file, its URL,
    the cache path to put it at, and why).
    """
    name, url, file_hash, algorithm = file_for(entry, include_top)
    folder = cache_dir()
    target = folder / name
    what = f"{model_name} with weights {entry.name!r}"
    rejected = None  # why a cached copy was not used
    if target.is_file():
        actual = None if file_hash is None else _wrong_digest(target, file_hash, algorithm)
        if actual is None:
            return target
        rejected = (f"the cached copy at {target} has {algorithm} {actual}, expected "
                    f"{file_hash}")
        if offline():
            raise _unavailable(
                what, name, url, target,
                f"{rejected}, so it was rejected; replace it, or unset {ENV_OFFLINE} to "
                "download it again")
    if offline():
        raise _unavailable(what, name, url, target,
                           f"offline mode ({ENV_OFFLINE}=1) and it is not in the cache")
    mirror = os.environ.get(ENV_MIRROR, "").strip()
    source = f"{mirror.rstrip('/')}/{urllib.parse.quote(name)}" if mirror else url
    also = f"; {rejected}, so it was rejected" if rejected else ""
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(folder)
    staging = tempfile.mkdtemp(prefix=".download-", dir=folder)
    try:
        import keras

        try:
            keras.utils.get_file(name, source, cache_dir=staging, cache_subdir="")
        except Exception as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            where = f" (mirror {mirror})" if mirror else ""
            raise _unavailable(what, name, url, target,
                               f"download from {source}{where} failed: {reason}{also}") from None
        downloaded = Path(staging) / name
        if not downloaded.is_file():  # get_file fell back to another folder
            raise _unavailable(what, name, url, target,
                               f"the download from {source} did not land in {staging}{also}")
        if file_hash is not None:
            ok, actual = hash_matches(downloaded, file_hash, algorithm)
            if not ok:
                raise _unavailable(
                    what, name, url, target,
                    f"the file downloaded from {source} is corrupt: {algorithm} {actual} does "
                    f"not match the published {file_hash}; it was deleted{also}")
        else:
            warnings.warn(
                f"{name} (from {source}) has no published hash; its sha256 is "
                f"{file_digest(downloaded, 'sha256')}; check it against a source you trust",
                UserWarning, stacklevel=3,
            )
        os.replace(downloaded, target)
        if rejected:
            warnings.warn(f"{name}: {rejected}; it was replaced by a fresh download from "
                          f"{source}", UserWarning, stacklevel=3)
        if file_hash is not None:
            _remember_verified(target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_staging(folder: Path) -> None:
    cutoff = time.time() - STALE_STAGING_SECONDS
    for staging in folder.glob(".download-*"):
        try:
            if staging.is_dir() and staging.stat().st_mtime < cutoff:
                shutil.rmtree(staging, ignore_errors=True)
        except OSError:  # removed meanwhile by another process
            pass


def _wrong_digest(path: Path, file_hash: str, algorithm: str) -> str | None:
    """None if the file at ``path`` has the hash (checked once per version of
    the file), else the digest it has."""
    stat = path.stat()
    if (str(path), stat.st_size, stat.st_mtime_ns) in _VERIFIED:
        return None
    ok, actual = hash_matches(path, file_hash, algorithm)
    if ok:
        _remember_verified(path, stat)
        return None
    return actual


def _remember_verified(path: Path, stat=None) -> None:
    stat = stat or path.stat()
    _VERIFIED.add((str(path), stat.st_size, stat.st_mtime_ns))
