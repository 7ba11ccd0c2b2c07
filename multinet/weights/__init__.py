"""Weights: load any supported file or mapping into a model; published weights.

- ``load_weights(model, source, skip_mismatch=False)`` reads Keras 3, legacy
  Keras 1/2 HDF5, torchvision ``.pth``/``.safetensors`` files and mappings.
- ``apply_weights`` is what ``create_model(weights=...)`` calls.
- ``cached_path(entry, include_top)`` finds a published file in the cache.
"""

from __future__ import annotations

from multinet.weights.download import cache_dir, cached_path, fetch
from multinet.weights.loader import detect_layout, load_weights, loaded_weights, remember
from multinet.weights.report import LoadReport, WeightsLoadError, WeightsUnavailableError

__all__ = [
    "LoadReport",
    "WeightsLoadError",
    "WeightsUnavailableError",
    "apply_weights",
    "cache_dir",
    "cached_path",
    "detect_layout",
    "fetch",
    "load_weights",
    "loaded_weights",
]


def apply_weights(model, spec, weights, *, entry=None, include_top: bool = True) -> LoadReport:
    """Load ``weights`` (an entry of ``spec``, a path or a mapping) into ``model``,
    built by ``create_model``, and remember what was loaded."""
    if entry is not None:
        path = fetch(entry, include_top=include_top, model_name=spec.name)
        report = load_weights(model, path)
        remember(model, entry=entry.name, layout=report.layout,
                 preprocessing=entry.preprocessing, source=str(path))
        return report
    return load_weights(model, weights)
