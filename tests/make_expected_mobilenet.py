"""Reference outputs of MobileNet V2 / V3 Small / V3 Large from torchvision
and tf-keras, for tests/test_mobilenet.py where a reference cannot run.

    KERAS_BACKEND=torch python tests/make_expected_mobilenet.py torchvision
    KERAS_BACKEND=tensorflow python tests/make_expected_mobilenet.py keras

Each writes ``tests/data/<model>_<source>.npz`` holding what rebuilds the
same weights file without the reference: the file's structure (torchvision
state-dict keys and shapes; the tf-keras layer names with their weight names
and shapes), the BatchNorm statistics the reference calibrated, and the
reference's logits on ``structured_images`` at 224 and 199 (even and odd
sizes tell keras' ``correct_pad`` from symmetric padding). Convolution,
dense and BatchNorm scale/shift values are regenerated from seeds
(``parameter_value``), the same in every session.

The reference runs its own pipeline on the raw images: torchvision's
``normalize`` (torch mode) before the model; keras'
``mobilenet_v2.preprocess_input`` (tf mode), or for V3 its pass-through
``preprocess_input`` and the model's own ``Rescaling``.
"""

from __future__ import annotations

import json
import sys
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
)

MODELS = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
SOURCES = ("torchvision", "keras")
SIZES = (224, 199)
IMAGES = 2
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
KERAS_CONSTRUCTORS = {"mobilenet_v2": "MobileNetV2", "mobilenet_v3_small": "MobileNetV3Small",
                      "mobilenet_v3_large": "MobileNetV3Large"}


def calibration_images() -> np.ndarray:
    """Six raw images for BatchNorm calibration: the two structured images,
    mirrored, and with their channels reversed (``structured_images`` itself
    makes two per size)."""
    images = structured_images(224, 2)
    return np.concatenate([images, images[:, :, ::-1], images[..., ::-1]])


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


# --- parameter values, regenerated from seeds in every session --------------


def parameter_value(name: str, shape, kind: str) -> np.ndarray:
    """A reproducible value for one tensor: ``kind`` is ``conv_torch`` (OIHW
    or a Linear (out, in)), ``conv_keras`` (HWIO, or (kh, kw, C, 1) for a
    depthwise kernel: ``depthwise``), ``bias``, ``gamma`` or ``beta``.
    Kernels are He-normal; biases and BatchNorm shifts small but non-zero;
    BatchNorm scales near 1."""
    shape = tuple(shape)
    if kind == "conv_torch":
        return seeded_tensor(name, shape, fan_in=int(np.prod(shape[1:])))
    if kind == "conv_keras":
        return seeded_tensor(name, shape, fan_in=int(np.prod(shape[:-1])))
    if kind == "depthwise":
        return seeded_tensor(name, shape, fan_in=int(np.prod(shape[:2])))
    if kind == "gamma":
        return (1.0 + seeded_tensor(name, shape, scale=4.0)).astype(np.float32)
    if kind == "beta":
        return seeded_tensor(name, shape, scale=2.0)
    if kind == "bias":
        return seeded_tensor(name, shape)
    raise ValueError(kind)


def torchvision_state(structure, stats) -> dict[str, np.ndarray]:
    """The torchvision state dict: keys and shapes as stored, BatchNorm
    running statistics as calibrated, every other tensor from its seed."""
    keys = [key for key, _ in structure]
    batch_norms = {key.rsplit(".", 1)[0] for key in keys if key.endswith(".running_mean")}
    state = {}
    for key, shape in structure:
        module, param = key.rsplit(".", 1)
        if key in stats:
            state[key] = np.asarray(stats[key], np.float32)
        elif param == "num_batches_tracked":
            state[key] = np.array(7, np.int64)
        elif module in batch_norms:
            state[key] = parameter_value(key, shape, "gamma" if param == "weight" else "beta")
        elif param == "weight":
            state[key] = parameter_value(key, shape, "conv_torch")
        else:
            state[key] = parameter_value(key, shape, "bias")
    return state


def keras_layers(structure, stats) -> list:
    """``[(layer name, [(weight name, array), ...]), ...]`` for
    ``write_tf_keras_h5``, every layer of the tf-keras model in order
    (weightless ones, such as ``re_lu_3`` and ``tf.math.multiply``, too)."""
    layers = []
    for layer_name, weights in structure:
        arrays = []
        for weight_name, shape in weights:
            short = weight_name.rsplit("/", 1)[-1].split(":")[0]
            if weight_name in stats:
                value = np.asarray(stats[weight_name], np.float32)
            elif short == "depthwise_kernel":
                value = parameter_value(weight_name, shape, "depthwise")
            elif short == "kernel":
                value = parameter_value(weight_name, shape, "conv_keras")
            elif short in ("gamma", "beta", "bias"):
                value = parameter_value(weight_name, shape, short)
            elif short in ("moving_mean", "moving_variance"):  # before calibration
                value = np.full(shape, float(short == "moving_variance"), np.float32)
            else:
                raise ValueError(f"no rule for {weight_name}")
            arrays.append((weight_name, value))
        layers.append((layer_name, arrays))
    return layers


HDF5_OBJECT_HEADER_LIMIT = 64512  # tf-keras splits larger attributes into chunks


def write_tf_keras_h5(path, layers) -> None:
    """A legacy weights file exactly as tf-keras' ``save_weights("x.h5")``
    writes one: ``layers`` as ``keras_layers`` gives them, but the
    groups are created in sorted name order (as tf-keras does, so that
    ``expanded_conv/depthwise/pad``, a weightless layer, does not make the
    group ``expanded_conv/depthwise`` exist before its layer's own), plus
    tf-keras' ``top_level_model_weights`` group."""
    import h5py

    def save_attribute(group, name, values):
        data = np.asarray([v.encode() for v in values])
        chunks = 1
        while any(c.nbytes > HDF5_OBJECT_HEADER_LIMIT for c in np.array_split(data, chunks)):
            chunks += 1
        if chunks == 1:
            group.attrs[name] = data
        else:
            for index, chunk in enumerate(np.array_split(data, chunks)):
                group.attrs[f"{name}{index}"] = chunk

    with h5py.File(path, "w") as h5file:
        save_attribute(h5file, "layer_names", [name for name, _ in layers])
        h5file.attrs["backend"] = b"tensorflow"
        h5file.attrs["keras_version"] = b"2.21.0"
        for name, weights in sorted(layers, key=lambda item: item[0]):
            group = h5file.create_group(name)
            save_attribute(group, "weight_names", [w for w, _ in weights])
            for weight_name, array in weights:
                group.create_dataset(weight_name, data=np.asarray(array))
        save_attribute(h5file.create_group("top_level_model_weights"), "weight_names", [])


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


def torchvision_pipeline(module, raw_nhwc: np.ndarray) -> np.ndarray:
    """torchvision's own evaluation pipeline on raw [0, 255] images after the
    crop: ``normalize`` with the ImageNet mean and std, then the model."""
    import torch
    import torchvision.transforms.functional as F

    x = torch.from_numpy(np.ascontiguousarray(raw_nhwc.transpose(0, 3, 1, 2))) / 255.0
    x = F.normalize(x, TORCH_MEAN, TORCH_STD)
    with torch.inference_mode():
        return module(x).numpy()


def make_torchvision(model: str) -> dict:
    import torch

    module = torchvision_module(model)
    structure = [(key, list(value.shape)) for key, value in module.state_dict().items()]
    state = torchvision_state(structure, {})
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    # Calibrate: cumulative averages over one training-mode pass.
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None
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
    """tf-keras' ``model`` for ``size`` x ``size`` inputs, logits out."""
    constructor = getattr(tf_keras_applications(), KERAS_CONSTRUCTORS[model])
    return constructor(input_shape=(size, size, 3), weights=None, classifier_activation=None)


def keras_pipeline(keras_model, model: str, raw_nhwc: np.ndarray) -> np.ndarray:
    """keras.applications' own pipeline: its family's ``preprocess_input``
    (MobileNetV2: tf mode; MobileNetV3: a pass-through, the model rescales)."""
    applications = tf_keras_applications()
    family = applications.mobilenet_v2 if model == "mobilenet_v2" else applications.mobilenet_v3
    x = family.preprocess_input(raw_nhwc.astype(np.float32, copy=True))
    return keras_model.predict(x, verbose=0)


def keras_structure(keras_model) -> list:
    return [(layer.name, [(w.name, list(w.shape)) for w in layer.weights])
            for layer in keras_model.layers]


def set_keras_weights(keras_model, structure, stats) -> None:
    """Give the tf-keras model the values of ``keras_layers`` (by layer order,
    so auto-named layers of a second build still line up)."""
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
    # statistic to the batch statistic its layer saw.
    norms = [layer for layer in keras_model.layers
             if isinstance(layer, tf_keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    calibration = calibration_images()
    applications = tf_keras_applications()
    family = applications.mobilenet_v2 if model == "mobilenet_v2" else applications.mobilenet_v3
    keras_model(tf.constant(family.preprocess_input(calibration.copy())), training=True)
    stats = {}
    for layer in norms:
        for weight in layer.weights:
            if "moving_" in weight.name:
                stats[weight.name] = weight.numpy().copy()
    logits = {}
    for size in SIZES:
        sized = tf_keras_model(model, size)
        set_keras_weights(sized, structure, stats)
        logits[size] = keras_pipeline(sized, model, structured_images(size, IMAGES))
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
        arrays = {f"stat:{k}": np.asarray(v, np.float32) for k, v in result["stats"].items()}
        arrays.update({f"logits_{s}": v.astype(np.float32) for s, v in result["logits"].items()})
        arrays["structure"] = np.array(json.dumps(result["structure"]))
        np.savez_compressed(npz_path(model, source), **arrays)
        print(f"wrote {npz_path(model, source)} ({npz_path(model, source).stat().st_size:,} B)")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in SOURCES:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(SOURCES)}}}")
    main(sys.argv[1])
