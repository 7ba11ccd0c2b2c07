"""Regenerate tests/data/convnext*_{torchvision,keras}.npz with the independent references.

    KERAS_BACKEND=torch python tests/make_expected_convnext.py torchvision      # torch env
    KERAS_BACKEND=tensorflow python tests/make_expected_convnext.py keras       # tensorflow env

For each model and source, the file holds the layout of the source's weights
file (torchvision: state-dict keys and shapes; keras: the legacy HDF5 layer
and weight names and shapes, as tf-keras' ``save_weights("x.h5")`` writes
them, the stem and downsampling layers nested in their ``Sequential``
groups; for keras' convnext_tiny also the file of the model without its top,
which ends in an auto-named ``layer_normalization``). For convnext_tiny,
tested at full depth, it also holds the reference's logits on
``structured_images`` at 224 and 121, each through the reference's own
pipeline (torchvision: ``ToTensor`` + ``Normalize``; keras: [0, 255] pixels
into the model, whose ``Normalization`` layer does the rest;
``keras.applications.convnext.preprocess_input`` is the identity).

ConvNeXt has no BatchNorm, so nothing is calibrated: every tensor is drawn
again from its name (``seeded_tensor``), LayerNorm weights near 1 and the
layer scales (initialized to 1e-6 by both sources, which would switch the
blocks off) near 1 too, so the tests rebuild the same weights file without the
reference (``torchvision_state`` and ``keras_layers`` below).
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
MODELS = ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large")
FULL_DEPTH = ("convnext_tiny",)
SIZES = (224, 121)  # 121: odd maps (15, 7) at two downsamplings, which floor
TEST_IMAGES = 2
_KERAS_NAMES = {"convnext_tiny": "ConvNeXtTiny", "convnext_small": "ConvNeXtSmall",
                "convnext_base": "ConvNeXtBase", "convnext_large": "ConvNeXtLarge"}


def data_path(model: str, source: str) -> Path:
    return DATA / f"{model}_{source}.npz"


def load_expected(model: str, source: str) -> dict:
    """``{"layout": ..., "outputs": {size: logits}}``, and for keras'
    convnext_tiny ``"layout_notop"``, the file of its model without the top."""
    with np.load(data_path(model, source)) as data:
        result = {key: json.loads(str(data[key])) for key in ("layout", "layout_notop")
                  if key in data.files}
        result["outputs"] = {int(key[4:]): data[key] for key in data.files
                             if key.startswith("out_")}
    return result


def _near_one(name, shape):
    return 1.0 + seeded_tensor(name, shape, scale=2.0)


def torchvision_state(layout) -> dict[str, np.ndarray]:
    """A state dict in torchvision's layout ``[[key, shape], ...]``: seeded
    weights and biases, LayerNorm weights and layer scales near 1."""
    state = {}
    for key, shape in layout:
        shape = tuple(shape)
        if key.endswith("layer_scale") or (key.endswith("weight") and len(shape) == 1):
            state[key] = _near_one(key, shape)
        elif key.endswith("weight"):  # conv OIHW, Linear (out, in)
            state[key] = seeded_tensor(key, shape, fan_in=int(np.prod(shape[1:])))
        else:
            state[key] = seeded_tensor(key, shape)
    return state


def keras_layers(layout) -> list:
    """``[(layer, [(weight name, array), ...]), ...]`` for ``write_legacy_h5``
    from the legacy layout ``[[layer, [[weight name, shape], ...]], ...]``."""
    result = []
    for layer, weights in layout:
        arrays = []
        for name, shape in weights:
            shape = tuple(shape)
            short = name.rsplit("/", 1)[-1].split(":")[0]
            if short == "kernel":  # HWIO, grouped HW1C, or Dense (in, out)
                value = seeded_tensor(name, shape, fan_in=int(np.prod(shape[:-1])))
            elif short == "gamma":  # LayerNorm and layer scale
                value = _near_one(name, shape)
            else:  # bias, beta
                value = seeded_tensor(name, shape)
            arrays.append((name, value))
        result.append((layer, arrays))
    return result


# --- torchvision (run in the torch environment) ------------------------------------------

def torchvision_pipeline(images):
    """torchvision's evaluation transform after the crop: ToTensor, Normalize."""
    import torch
    from torchvision import transforms

    to_tensor = transforms.ToTensor()
    normalize = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return torch.stack([normalize(to_tensor(image)) for image in images.astype(np.uint8)])


def torchvision_module(model_name: str, layout=None):
    """torchvision's model, with the seeded weights where ``layout`` is given."""
    import torch

    module = getattr(torchvision_models(), model_name)()
    if layout is not None:
        state = torchvision_state(layout)
        module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return module.eval()


def _torchvision_case(model_name: str) -> dict:
    import torch

    module = torchvision_module(model_name)
    layout = [[key, list(value.shape)] for key, value in module.state_dict().items()]
    arrays = {"layout": np.array(json.dumps(layout))}
    if model_name not in FULL_DEPTH:
        return arrays
    module = torchvision_module(model_name, layout)
    with torch.inference_mode():
        for size in SIZES:
            logits = module(torchvision_pipeline(structured_images(size, TEST_IMAGES))).numpy()
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


def keras_pipeline(images):
    """keras' ConvNeXt takes [0, 255] pixels; its preprocess_input is the identity."""
    applications = tf_keras_applications()
    return applications.convnext.preprocess_input(np.array(images, np.float32))


def _keras_case(model_name: str) -> dict:
    model = tf_keras_model(model_name, 224)
    with tempfile.TemporaryDirectory() as folder:
        published = f"{folder}/published.h5"
        model.save_weights(published)
        layout = legacy_layout(published)
        arrays = {"layout": np.array(json.dumps(layout))}
        if model_name not in FULL_DEPTH:
            return arrays
        notop = f"{folder}/notop.h5"
        getattr(tf_keras_applications(), _KERAS_NAMES[model_name])(
            weights=None, include_top=False, input_shape=(224, 224, 3)).save_weights(notop)
        arrays["layout_notop"] = np.array(json.dumps(legacy_layout(notop)))
        seeded = f"{folder}/seeded.h5"
        write_legacy_h5(seeded, keras_layers(layout))
        for size in SIZES:  # each size its own model, loaded from the rebuilt file
            sized = tf_keras_model(model_name, size)
            sized.load_weights(seeded)
            logits = sized(keras_pipeline(structured_images(size, TEST_IMAGES))).numpy()
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
    for model_name in MODELS:
        arrays = make(model_name)
        path = data_path(model_name, source)
        np.savez_compressed(path, **arrays)
        print(f"{path.name}: {path.stat().st_size / 1024:.0f} KiB, {', '.join(arrays)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
