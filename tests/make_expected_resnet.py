"""Regenerate tests/data/resnet*_{torchvision,keras}.npz with the independent references.

    KERAS_BACKEND=torch python tests/make_expected_resnet.py torchvision        # torch env
    KERAS_BACKEND=tensorflow python tests/make_expected_resnet.py keras         # tensorflow env

For each model and source, the file holds the layout of the source's weights
file (torchvision: state-dict keys and shapes; keras: the legacy HDF5 layer
and weight names and shapes, as tf-keras' ``save_weights("x.h5")`` writes
them). For the models tested at full depth it also holds the BatchNorm
statistics that the reference calibrated on structured images and the
reference's logits on ``structured_images`` at 224 and 199, each through the
reference's own preprocessing (torchvision: ``ToTensor`` + ``Normalize``;
keras: ``keras.applications.resnet.preprocess_input``).

Every other tensor is drawn again from its name (``seeded_tensor``), so the
tests rebuild the same weights file without the reference
(``torchvision_state`` and ``keras_layers`` below).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from references import (  # noqa: E402
    DATA,
    assert_inputs_matter,
    seeded_tensor,
    structured_images,
    tf_keras_applications,
    torchvision_models,
    write_legacy_h5,
)

SOURCES = ("torchvision", "keras")
MODELS = {
    "torchvision": ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"),
    "keras": ("resnet50", "resnet101", "resnet152"),
}
FULL_DEPTH = {"torchvision": ("resnet18", "resnet50"), "keras": ("resnet50",)}
SIZES = (224, 199)
TEST_IMAGES = 2
_KERAS_NAMES = {"resnet50": "ResNet50", "resnet101": "ResNet101", "resnet152": "ResNet152"}


def data_path(model: str, source: str) -> Path:
    return DATA / f"{model}_{source}.npz"


def load_expected(model: str, source: str) -> dict:
    """``{"layout": ..., "stats": {name: array}, "outputs": {size: logits}}``."""
    with np.load(data_path(model, source)) as data:
        layout = json.loads(str(data["layout"]))
        stats = {key[6:]: data[key] for key in data.files if key.startswith("stats:")}
        outputs = {int(key[4:]): data[key] for key in data.files if key.startswith("out_")}
    return {"layout": layout, "stats": stats, "outputs": outputs}


def calibration_images() -> np.ndarray:
    """The BatchNorm calibration batch: the test images at 224 and their mirror
    images (``structured_images`` fails to draw its shapes beyond two images)."""
    images = structured_images(224, TEST_IMAGES)
    return np.concatenate([images, images[:, :, ::-1]])


def _gamma(name, shape):
    return 1.0 + seeded_tensor(name, shape, scale=2.0)


def torchvision_state(layout, stats=None) -> dict[str, np.ndarray]:
    """A state dict in torchvision's layout ``[[key, shape], ...]``: seeded
    weights and biases, BatchNorm weights near 1, running statistics from
    ``stats`` (zeros and ones where None)."""
    state = {}
    for key, shape in layout:
        shape = tuple(shape)
        if key.endswith("num_batches_tracked"):
            state[key] = np.array(1, np.int64)
        elif key.endswith(("running_mean", "running_var")):
            fill = np.zeros if key.endswith("mean") else np.ones
            state[key] = stats[key] if stats is not None else fill(shape, np.float32)
        elif key.endswith("weight") and len(shape) > 1:  # conv OIHW, Linear (out, in)
            state[key] = seeded_tensor(key, shape, fan_in=int(np.prod(shape[1:])))
        elif key.endswith("weight"):  # BatchNorm
            state[key] = _gamma(key, shape)
        else:
            state[key] = seeded_tensor(key, shape)
    return state


def keras_layers(layout, stats=None) -> list:
    """``[(layer, [(weight name, array), ...]), ...]`` for ``write_legacy_h5``
    from the legacy layout ``[[layer, [[weight name, shape], ...]], ...]``."""
    result = []
    for layer, weights in layout:
        arrays = []
        for name, shape in weights:
            shape = tuple(shape)
            short = name.rsplit("/", 1)[-1].split(":")[0]
            if short in ("moving_mean", "moving_variance"):
                fill = np.zeros if short == "moving_mean" else np.ones
                value = stats[name] if stats is not None else fill(shape, np.float32)
            elif short == "kernel":  # HWIO or (in, out)
                value = seeded_tensor(name, shape, fan_in=int(np.prod(shape[:-1])))
            elif short == "gamma":
                value = _gamma(name, shape)
            else:  # bias, beta
                value = seeded_tensor(name, shape)
            arrays.append((name, value))
        result.append((layer, arrays))
    return result


# --- torchvision (run in the torch environment) ------------------------------------------

def _torchvision_pipeline(images):
    """torchvision's evaluation transform after the crop: ToTensor, Normalize."""
    import torch
    from torchvision import transforms

    to_tensor = transforms.ToTensor()
    normalize = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return torch.stack([normalize(to_tensor(image)) for image in images.astype(np.uint8)])


def _torchvision_case(model_name: str) -> dict:
    import torch

    models = torchvision_models()
    module = getattr(models, model_name)()
    layout = [[key, list(value.shape)] for key, value in module.state_dict().items()]
    arrays = {"layout": np.array(json.dumps(layout))}
    if model_name not in FULL_DEPTH["torchvision"]:
        return arrays
    module.load_state_dict({k: torch.from_numpy(v) for k, v in torchvision_state(layout).items()})
    # Calibrate: one training-mode pass with cumulative averaging.
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None
    module.train()
    with torch.no_grad():
        module(_torchvision_pipeline(calibration_images()))
    module.eval()
    for key, value in module.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            arrays[f"stats:{key}"] = value.numpy().copy()
    with torch.inference_mode():
        for size in SIZES:
            logits = module(_torchvision_pipeline(structured_images(size, TEST_IMAGES))).numpy()
            assert_inputs_matter(logits)
            arrays[f"out_{size}"] = logits
    return arrays


# --- keras.applications (run in the tensorflow environment) ------------------------------

def tf_keras_model(model_name: str, size: int):
    applications = tf_keras_applications()
    return getattr(applications, _KERAS_NAMES[model_name])(
        weights=None, input_shape=(size, size, 3), classifier_activation=None)


def legacy_layout(path) -> list:
    """``[[layer, [[weight name, shape], ...]], ...]`` of a legacy Keras HDF5 file."""
    import h5py

    def text(values):
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values]

    with h5py.File(path, "r") as h5file:
        layout = []
        for layer in text(h5file.attrs["layer_names"]):
            group = h5file[layer]
            names = text(group.attrs["weight_names"])
            layout.append([layer, [[name, list(group[name].shape)] for name in names]])
    return layout


def _keras_pipeline(images):
    applications = tf_keras_applications()
    return applications.resnet.preprocess_input(images.copy())  # it works in place


def _keras_case(model_name: str) -> dict:
    model = tf_keras_model(model_name, 224)
    with tempfile.TemporaryDirectory() as folder:
        published = f"{folder}/published.h5"
        model.save_weights(published)
        layout = legacy_layout(published)
        arrays = {"layout": np.array(json.dumps(layout))}
        if model_name not in FULL_DEPTH["keras"]:
            return arrays
        seeded = f"{folder}/seeded.h5"
        write_legacy_h5(seeded, keras_layers(layout))
        model.load_weights(seeded)
        # Calibrate: with momentum 0, a training-mode pass leaves each layer's
        # moving statistics at that batch's statistics.
        norms = [layer for layer in model.layers if "BatchNormalization" in type(layer).__name__]
        for layer in norms:
            layer.momentum = 0.0
        model(_keras_pipeline(calibration_images()), training=True)
        for layer in norms:
            for weight in layer.weights[2:]:
                arrays[f"stats:{layer.name}/{weight.name.rsplit('/', 1)[-1]}"] = weight.numpy()
        stats = {key[6:]: value for key, value in arrays.items() if key.startswith("stats:")}
        write_legacy_h5(seeded, keras_layers(layout, stats))
        for size in SIZES:  # each size its own model, loaded from the rebuilt file
            sized = tf_keras_model(model_name, size)
            sized.load_weights(seeded)
            logits = sized(_keras_pipeline(structured_images(size, TEST_IMAGES))).numpy()
            assert_inputs_matter(logits)
            arrays[f"out_{size}"] = logits
    return arrays


def main(argv) -> int:
    if len(argv) != 1 or argv[0] not in SOURCES:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    source = argv[0]
    make = _torchvision_case if source == "torchvision" else _keras_case
    DATA.mkdir(exist_ok=True)
    for model_name in MODELS[source]:
        arrays = make(model_name)
        path = data_path(model_name, source)
        np.savez_compressed(path, **arrays)
        print(f"{path.name}: {path.stat().st_size / 1024:.0f} KiB, "
              f"{', '.join(k for k in arrays if not k.startswith('stats:'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
