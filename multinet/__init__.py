"""multinet: a backend-agnostic model library on Keras 3."""

__version__ = "0.1.0"

from multinet import layers, models  # noqa: E402  (registers the models)
from multinet.backend import compile_inference  # noqa: E402
from multinet.preprocessing import decode_predictions, load_image, preprocess_input  # noqa: E402
from multinet.registry import ModelSpec, WeightsSpec, create_model, get_model_spec, list_models  # noqa: E402
from multinet.weights import LoadReport, WeightsUnavailableError, load_weights  # noqa: E402

__all__ = [
    "LoadReport",
    "ModelSpec",
    "WeightsSpec",
    "WeightsUnavailableError",
    "__version__",
    "compile_inference",
    "create_model",
    "decode_predictions",
    "get_model_spec",
    "layers",
    "list_models",
    "load_image",
    "load_weights",
    "models",
    "preprocess_input",
]
