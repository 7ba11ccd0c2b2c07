"""Small helpers shared by the tests."""

from __future__ import annotations

import re

import numpy as np

# Lines TensorFlow writes to stderr at import whatever TF_CPP_MIN_LOG_LEVEL says.
_FRAMEWORK_NOISE = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} |To enable the "
                              r"following instructions)")


def own_lines(stderr: str) -> list[str]:
    """The non-empty lines of a subprocess' stderr that are not a framework's start-up noise."""
    return [line for line in stderr.splitlines() if line.strip() and
            not _FRAMEWORK_NOISE.match(line)]


def images(rng, batch, size, data_format, channels=3):
    """A float32 image batch in the given format."""
    x = rng.uniform(0.0, 1.0, size=(batch, size, size, channels)).astype("float32")
    return x if data_format == "channels_last" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def to_channels_last(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


def rel_error(a, b):
    a, b = np.asarray(a, dtype="float64"), np.asarray(b, dtype="float64")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))
