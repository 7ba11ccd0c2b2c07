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
