"""multinet: a backend-agnostic model library on Keras 3."""

__version__ = "0.1.0"

from multinet import layers, models  # noqa: E402  (registers the models)
from multinet.registry import ModelSpec, WeightsSpec, create_model, get_model_spec, list_models  # noqa: E402

__all__ = [
    "ModelSpec",
    "WeightsSpec",
    "__version__",
    "create_model",
    "get_model_spec",
    "layers",
    "list_models",
    "models",
]
