"""multinet: a backend-agnostic model library on Keras 3.

Importing multinet first settles Keras' backend (``multinet.backend_select``):
where it would be Keras' default, TensorFlow, and TensorFlow is not installed,
an installed backend is used instead and one line on stderr says which. Then
it registers its Keras layers (so ``keras.saving.load_model`` reads ``.keras``
files that use them); the rest of the public names load on first use. Where
the backend chosen cannot be loaded (not installed, or a misspelled name),
``import multinet`` still succeeds and the first use raises an ImportError
whose one-line message says what to do.
"""

from __future__ import annotations

import importlib

# Before anything imports Keras: Keras reads its backend once, at import.
from multinet import backend_select as _backend_select

_BACKEND_PROBLEM = _backend_select.configure().problem

__version__ = "0.1.0"

_EXPORTS = {
    "ExportError": "multinet.deploy",
    "Family": "multinet.registry",
    "LoadReport": "multinet.weights",
    "ModelSpec": "multinet.registry",
    "WeightsSpec": "multinet.registry",
    "WeightsUnavailableError": "multinet.weights",
    "compile_inference": "multinet.backend",
    "create_model": "multinet.registry",
    "decode_predictions": "multinet.preprocessing",
    "evaluate": "multinet.training",
    "export": "multinet.deploy",
    "get_model_spec": "multinet.registry",
    "list_models": "multinet.registry",
    "load_image": "multinet.preprocessing",
    "load_weights": "multinet.weights",
    "model_info": "multinet.layers",
    "preprocess_input": "multinet.preprocessing",
    "train": "multinet.training",
}
_SUBMODULES = {"backend", "benchmark", "deploy", "distribute", "layers", "models",
               "preprocessing", "registry", "training", "weights"}

__all__ = sorted([*_EXPORTS, "__version__", "layers", "models"])

if _BACKEND_PROBLEM is None:
    try:
        from multinet import layers  # noqa: F401  (registers the serializable layers)
    except ImportError:  # Keras' backend fails to load: reported on first use
        pass


def __getattr__(name: str):
    if _BACKEND_PROBLEM is not None and (name in _EXPORTS or name in _SUBMODULES):
        raise ImportError(_BACKEND_PROBLEM)
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
