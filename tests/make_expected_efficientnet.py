"""Reference outputs of EfficientNet-B0 from torchvision and tf-keras, for
tests/test_efficientnet.py where a reference cannot run.

    KERAS_BACKEND=torch python tests/make_expected_efficientnet.py torchvision
    KERAS_BACKEND=tensorflow python tests/make_expected_efficientnet.py keras

Each writes ``tests/data/efficientnet_b0_<source>.npz`` holding what rebuilds
the same weights file without the reference: the file's structure
(torchvision state-dict keys and shapes; the tf-keras layer names with their
weight names and shapes), the BatchNorm statistics the reference calibrated
(and, for keras, the values of its in-model ``Normalization``), and the
reference's logits on ``structured_images`` at 224 and 199 (even and odd
sizes tell keras' ``correct_pad`` from symmetric padding). Convolution, dense
and BatchNorm scale/shift values are regenerated from seeds
(``make_expected_mobilenet.parameter_value``), the same in every session.

The reference runs its own pipeline on the raw images: torchvision's
``normalize`` (torch mode) before the model; keras' pass-through
``efficientnet.preprocess_input`` and the model's own ``Rescaling`` and
``Normalization``. Calibration runs the reference in training mode with its
drop-connect / stochastic depth and dropout rates set to 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from make_expected_mobilenet import (  # noqa: E402
    TORCH_MEAN,
    TORCH_STD,
    calibration_images,
    parameter_value,
    torchvision_pipeline,
    torchvision_state,
    write_tf_keras_h5,
)
from references import (  # noqa: E402
    DATA,
    assert_inputs_matter,
    structured_images,
    tf_keras_applications,
    torchvision_models,
)

MODELS = ("efficientnet_b0",)
SOURCES = ("torchvision", "keras")
SIZES = (224, 199)
IMAGES = 2
KERAS_CONSTRUCTORS = {"efficientnet_b0": "EfficientNetB0"}
# The in-model Normalization of the keras files: ImageNet's mean and, as the
# published files store it, the squared stddev as the variance.
NORMALIZATION = {"mean": np.array([0.485, 0.456, 0.406], np.float32),
                 "variance": np.array([0.229, 0.224, 0.225], np.float32) ** 2,
                 "count": np.array(1281167, np.int64)}


def npz_path(model: str, source: str) -> Path:
    return DATA / f"{model}_{source}.npz"


def load_expected(model: str, source: str) -> dict:
    """The stored structure, statistics and logits: ``structure`` (decoded
    JSON), ``stats`` ({name: array}) and ``logits`` ({size: array})."""
    with np.load(npz_path(model, source)) as data:
        stats = {key[5:]: data[key] for key in data.files if key.startswith("stat:")}
        logits = {int(key[7:]): data[key] for key in data.files if key.startswith("logits_")}
        structure = json.loads(str(data["structure"]))
    return {"structure": structure, "stats": stats, "logits": logits}


def keras_layers(structure, stats) -> list:
    """``[(layer name, [(weight name, array), ...]), ...]`` for
    ``write_tf_keras_h5``, every layer of the tf-keras model in order."""
    layers = []
    for layer_name, weights in structure:
        arrays = []
        for weight_name, shape in weights:
            short = weight_name.rsplit("/", 1)[-1].split(":")[0]
            if weight_name in stats:
                value = np.asarray(stats[weight_name])
                value = value.astype(np.int64 if short == "count" else np.float32)
            elif short == "depthwise_kernel":
                value = parameter_value(weight_name, shape, "depthwise")
            elif short == "kernel":
                value = parameter_value(weight_name, shape, "conv_keras")
            elif short in ("gamma", "beta", "bias"):
                value = parameter_value(weight_name, shape, short)
            elif short in ("moving_mean", "moving_variance"):  # before calibration
                value = np.full(shape, float(short == "moving_variance"), np.float32)
            elif short in NORMALIZATION:
                value = NORMALIZATION[short].copy()
            else:
                raise ValueError(f"no rule for {weight_name}")
            arrays.append((weight_name, value))
        layers.append((layer_name, arrays))
    return layers


def write_keras_file(path, model: str) -> None:
    """The tf-keras weights file of ``model``, rebuilt from the stored data."""
    expected = load_expected(model, "keras")
    write_tf_keras_h5(path, keras_layers(expected["structure"], expected["stats"]))


# --- torchvision (the torch session) -----------------------------------------


def torchvision_module(model: str, state: dict | None = None):
    """torchvision's ``model`` in eval mode, with ``state`` loaded if given."""
    import torch

    module = getattr(torchvision_models(), model)()
    if state is not None:
        module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return module.eval()


def make_torchvision(model: str) -> dict:
    import torch

    module = torchvision_module(model)
    structure = [(key, list(value.shape)) for key, value in module.state_dict().items()]
    state = torchvision_state(structure, {})
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    # Calibrate: cumulative averages over one training-mode pass, with
    # stochastic depth and dropout off.
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None
        elif hasattr(layer, "p") and isinstance(layer.p, float):  # StochasticDepth, Dropout
            layer.p = 0.0
    module.train()
    import torchvision.transforms.functional as F  # after torchvision_models()' stub

    calibration = calibration_images()
    x = torch.from_numpy(np.ascontiguousarray(calibration.transpose(0, 3, 1, 2))) / 255.0
    with torch.no_grad():
        module(F.normalize(x, TORCH_MEAN, TORCH_STD))
    module.eval()
    stats = {key: value.numpy().copy() for key, value in module.state_dict().items()
             if key.endswith(("running_mean", "running_var"))}
    logits = {size: torchvision_pipeline(module, structured_images(size, IMAGES))
              for size in SIZES}
    return {"structure": structure, "stats": stats, "logits": logits}


# --- tf-keras (the tensorflow session) -----------------------------------------


def tf_keras_model(model: str, size: int):
    """tf-keras' ``model`` for ``size`` x ``size`` inputs, logits out, built
    in a fresh session so its auto-named layers (``normalization``) have the
    names of the published files."""
    applications = tf_keras_applications()
    import tf_keras

    tf_keras.backend.clear_session()
    constructor = getattr(applications, KERAS_CONSTRUCTORS[model])
    return constructor(input_shape=(size, size, 3), weights=None, classifier_activation=None)


def keras_pipeline(keras_model, raw_nhwc: np.ndarray) -> np.ndarray:
    """keras.applications' own pipeline: ``efficientnet.preprocess_input``
    (a pass-through; the model rescales and normalizes), then the model."""
    x = tf_keras_applications().efficientnet.preprocess_input(
        raw_nhwc.astype(np.float32, copy=True))
    return keras_model.predict(x, verbose=0)


def keras_structure(keras_model) -> list:
    return [(layer.name, [(w.name, list(w.shape)) for w in layer.weights])
            for layer in keras_model.layers]


def set_keras_weights(keras_model, structure, stats) -> None:
    """Give the tf-keras model the values of ``keras_layers`` (by layer order)."""
    values = keras_layers(structure, stats)
    if len(values) != len(keras_model.layers):
        raise ValueError("the tf-keras model does not match the stored structure")
    for layer, (_, weights) in zip(keras_model.layers, values):
        if weights:
            layer.set_weights([array for _, array in weights])


def make_keras(model: str) -> dict:
    import tensorflow as tf
    import tf_keras

    keras_model = tf_keras_model(model, 224)
    structure = keras_structure(keras_model)
    set_keras_weights(keras_model, structure, {})
    # Calibrate: one training-mode pass with momentum 0 sets each moving
    # statistic to the batch statistic its layer saw; no drop-connect.
    norms = [layer for layer in keras_model.layers
             if isinstance(layer, tf_keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    for layer in keras_model.layers:
        if isinstance(layer, tf_keras.layers.Dropout):
            layer.rate = 0.0
    keras_model(tf.constant(calibration_images().astype(np.float32)), training=True)
    stats = {}
    for layer in norms:
        for weight in layer.weights:
            if "moving_" in weight.name:
                stats[weight.name] = weight.numpy().copy()
    for layer in keras_model.layers:
        if isinstance(layer, tf_keras.layers.Normalization):
            for weight in layer.weights:
                stats[weight.name] = weight.numpy().copy()
    logits = {}
    for size in SIZES:
        sized = tf_keras_model(model, size)
        set_keras_weights(sized, structure, stats)
        logits[size] = keras_pipeline(sized, structured_images(size, IMAGES))
    return {"structure": structure, "stats": stats, "logits": logits}


def main(source: str) -> None:
    make = {"torchvision": make_torchvision, "keras": make_keras}[source]
    DATA.mkdir(exist_ok=True)
    for model in MODELS:
        result = make(model)
        for size, logits in result["logits"].items():
            assert_inputs_matter(logits)
            print(f"{model} {source} {size}: logits {logits.shape}, "
                  f"|max| {np.abs(logits).max():.4g}")
        arrays = {f"stat:{k}": np.asarray(v) for k, v in result["stats"].items()}
        arrays.update({f"logits_{s}": v.astype(np.float32) for s, v in result["logits"].items()})
        arrays["structure"] = np.array(json.dumps(result["structure"]))
        np.savez_compressed(npz_path(model, source), **arrays)
        print(f"wrote {npz_path(model, source)} ({npz_path(model, source).stat().st_size:,} B)")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in SOURCES:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(SOURCES)}}}")
    main(sys.argv[1])
