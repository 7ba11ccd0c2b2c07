"""Small helpers shared by the tests."""

from __future__ import annotations

import numpy as np


def images(rng, batch, size, data_format, channels=3):
    """A float32 image batch in the given format."""
    x = rng.uniform(0.0, 1.0, size=(batch, size, size, channels)).astype("float32")
    return x if data_format == "channels_last" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def distinct_images(rng, size, data_format):
    """Two float32 images a network with any weights answers differently:
    uniform noise, and bright diagonal stripes with unequal channels."""
    noise = rng.uniform(0.0, 1.0, size=(size, size, 3))
    i, j = np.mgrid[:size, :size]
    stripes = np.stack([((i + j) // 3 % 2) * 2.0, (i % 5 == 0) * 1.5,
                        np.full((size, size), -0.5)], axis=-1)
    x = np.stack([noise, stripes]).astype("float32")
    return x if data_format == "channels_last" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def to_channels_last(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


def rel_error(a, b):
    a, b = np.asarray(a, dtype="float64"), np.asarray(b, dtype="float64")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))
