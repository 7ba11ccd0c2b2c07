"""Independent references for the model families, and the data they are compared on.

Nothing here imports multinet: the references are torchvision's own model code
(the torch session) and the original Keras 2 applications in ``tf-keras``
(the tensorflow session). Where a reference cannot run, the tests use the
outputs it gave, stored by ``tests/make_family_expected.py`` in
``tests/data/<model>_<source>.npz``.

Random weights hide mapping bugs (with random BatchNorm statistics a deep
network's output barely depends on its input), so:

- convolution and dense weights are He-normal, drawn from a seed derived from
  the tensor's name (``seeded_tensor``), the same in every session;
- BatchNorm statistics are calibrated on structured images by the reference
  (a training-mode pass with cumulative averaging) and stored;
- the inputs are structured images (``structured_images``: a photo and
  drawn shapes), and every fidelity test checks that different inputs give
  clearly different outputs (``assert_inputs_matter``).
"""

from __future__ import annotations

import sys
import types
import zlib
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
CAT = Path(__file__).parent.parent / "multinet" / "data" / "cat.jpg"


def seeded_tensor(name: str, shape, fan_in: int | None = None, scale: float = 1.0) -> np.ndarray:
    """He-normal weights (``fan_in`` given) or small values, reproducible from ``name``."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    values = rng.standard_normal(tuple(shape), dtype=np.float32)
    std = np.sqrt(2.0 / fan_in) if fan_in else 0.05
    return (values * np.float32(std * scale)).astype(np.float32)


def structured_images(size: int, count: int = 2) -> np.ndarray:
    """``count`` RGB images (NHWC, float32 in [0, 255]) of ``size`` x ``size``:
    the cat photo, then drawn shapes on gradients. Pure noise images all look
    alike to a convnet; these do not."""
    from PIL import Image, ImageDraw

    images = []
    cat = Image.open(CAT).convert("RGB").resize((size, size), Image.BILINEAR)
    images.append(np.asarray(cat, dtype=np.float32))
    for index in range(1, count):
        rng = np.random.default_rng(index)
        ramp = np.linspace(0, 255, size, dtype=np.float32)
        base = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1),
                         np.full((size, size), 40.0 * index, np.float32)], -1)
        image = Image.fromarray(base.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = rng.integers(0, size, 2)
            x1, y1 = x0 + rng.integers(size // 8, size // 2, 2)
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(
                [int(x0), int(y0), int(x1), int(y1)], fill=color)
        images.append(np.asarray(image, dtype=np.float32))
    return np.stack(images)


def assert_inputs_matter(outputs, min_relative: float = 0.05) -> None:
    """Different inputs must give clearly different outputs, or the fidelity
    check proves nothing (see the module docstring)."""
    outputs = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    scale = max(float(np.abs(outputs).max()), 1e-12)
    for i in range(1, len(outputs)):
        difference = float(np.abs(outputs[i] - outputs[0]).max()) / scale
        assert difference > min_relative, (
            f"outputs for input {i} and input 0 differ by only {difference:.2e} relative: "
            "the weights make the output independent of the input")


def rel_error(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def torchvision_models():
    """``torchvision.models``, importable beside the CPU torch build here.

    torchvision's compiled ops are built for another torch build and its
    ``_meta_registrations`` module fails to import; the model classes are
    pure Python and need none of it.
    """
    import pytest

    pytest.importorskip("torch")
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("stub"))
    return pytest.importorskip("torchvision.models")


def tf_keras_applications():
    """The original Keras 2 applications (``tf-keras``), with their layer names."""
    import pytest

    pytest.importorskip("tensorflow")
    return pytest.importorskip("tf_keras").applications


def write_legacy_h5(path, layers) -> None:
    """A Keras 1/2 weights file in the published layout (what tf-keras'
    ``save_weights("x.h5")`` writes): ``layers`` is a list of
    ``(layer_name, [(weight_name, array), ...])`` in model order, weightless
    layers included with an empty list. A '/' in a name makes nested groups."""
    import h5py

    with h5py.File(path, "w") as h5file:
        h5file.attrs["layer_names"] = [name.encode() for name, _ in layers]
        h5file.attrs["backend"] = b"tensorflow"
        h5file.attrs["keras_version"] = b"2.21.0"
        for name, weights in layers:
            group = h5file.create_group(name)
            group.attrs["weight_names"] = [w.encode() for w, _ in weights]
            for weight_name, array in weights:
                group.create_dataset(weight_name, data=np.asarray(array))


# --- an image pipeline without multinet: Pillow and numpy ----------------------

CLASS_INDEX = CAT.parent / "imagenet_class_index.json"
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)


def rgb_image(path):
    """The image at ``path`` as an RGB PIL image; transparency is put on white."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "PA", "P"):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")


def eval_image(path, input_size: int, resize_size: int | None = None,
               interpolation: str = "bilinear") -> np.ndarray:
    """An evaluation transform, HWC float32 in [0, 255]: the short side resized
    to ``resize_size`` and an ``input_size`` center crop (torchvision's
    ``Resize`` + ``CenterCrop``), or, without ``resize_size``, the whole image
    resized to ``input_size`` x ``input_size`` (keras.applications)."""
    from PIL import Image

    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                "nearest": Image.NEAREST}[interpolation]
    image = rgb_image(path)
    if resize_size is None:
        image = image.resize((input_size, input_size), resample)
    else:
        width, height = image.size  # torchvision: int(size * long / short)
        size = ((resize_size, int(resize_size * height / width)) if width <= height
                else (int(resize_size * width / height), resize_size))
        image = image.resize(size, resample)
        width, height = image.size
        top = int(round((height - input_size) / 2.0))
        left = int(round((width - input_size) / 2.0))
        image = image.crop((left, top, left + input_size, top + input_size))
    return np.asarray(image, dtype=np.float32)


def scale(x: np.ndarray, mode: str) -> np.ndarray:
    """The caffe, torch and tf input modes, on HWC (or NHWC) RGB in [0, 255]."""
    if mode == "caffe":
        return x[..., ::-1] - CAFFE_MEAN_BGR
    if mode == "torch":
        return (x / 255.0 - TORCH_MEAN) / TORCH_STD
    if mode == "tf":
        return x / 127.5 - 1.0
    raise ValueError(mode)


def softmax(logits) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def imagenet_labels() -> list[tuple[str, str]]:
    """(wnid, label) per class, read from the shipped JSON file itself."""
    import json

    index = json.loads(CLASS_INDEX.read_text())
    return [tuple(index[str(i)]) for i in range(len(index))]


def top_labels(probabilities, k: int) -> list[tuple[str, str, float]]:
    labels = imagenet_labels()
    order = np.argsort(-np.asarray(probabilities), kind="stable")[:k]
    return [(*labels[i], float(probabilities[i])) for i in order]
