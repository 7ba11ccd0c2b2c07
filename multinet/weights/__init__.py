"""Weights: load any supported file or mapping into a model; published weights.

- ``load_weights(model, source, skip_mismatch=False)`` reads Keras 3, legacy
  Keras 1/2 HDF5, torchvision ``.pth``/``.safetensors`` files and mappings.
- ``cached_path(entry, include_top)`` finds a published file in the cache.
"""

from __future__ import annotations

from multinet.weights.download import cache_dir, cached_path, fetch
from multinet.weights.loader import (
    detect_layout,
    inspect_source,
    load_weights,
    loaded_weights,
    remember,
)
from multinet.weights.report import LoadReport, WeightsLoadError, WeightsUnavailableError

__all__ = [
    "LoadReport",
    "WeightsLoadError",
    "WeightsUnavailableError",
    "cache_dir",
    "cached_path",
    "detect_layout",
    "inspect_source",
    "fetch",
    "load_weights",
    "loaded_weights",
    "remember",
]
