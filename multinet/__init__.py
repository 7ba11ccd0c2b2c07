"""multinet: a backend-agnostic model library on Keras 3.

Importing multinet registers its Keras layers (so ``keras.saving.load_model``
reads ``.keras`` files that use them); the rest of the public names load on
first use. Where Keras' backend is not installed, ``import multinet`` still
succeeds and the first use raises the ImportError, so the ``multinet``
command can say what to do instead of failing inside Keras' own import.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Family": "multinet.registry",
    "LoadReport": "multinet.weights",
    "ModelSpec": "multinet.registry",
    "WeightsSpec": "multinet.registry",
    "WeightsUnavailableError": "multinet.weights",
    "compile_inference": "multinet.backend",
    "create_model": "multinet.registry",
    "decode_predictions": "multinet.preprocessing",
    "get_model_spec": "multinet.registry",
    "list_models": "multinet.registry",
    "load_image": "multinet.preprocessing",
    "load_weights": "multinet.weights",
    "model_info": "multinet.layers",
    "preprocess_input": "multinet.preprocessing",
}
_SUBMODULES = {"backend", "benchmark", "layers", "models", "preprocessing", "registry", "weights"}

__all__ = sorted([*_EXPORTS, "__version__", "layers", "models"])

try:
    from multinet import layers  # noqa: F401  (registers the serializable layers)
except ImportError:  # Keras' backend is missing: reported on first use
    pass


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"multinet.{name}")
    else:
        raise AttributeError(f"module 'multinet' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})
