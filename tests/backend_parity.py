"""Every registered model with seeded weights on a seeded batch: the numbers every
Keras backend must give, in both data formats.

``tests/make_expected_parity.py`` computes them on one backend, checks them live on
the others and stores them in ``tests/data/backend_parity.npz``;
``tests/test_openvino.py`` compares the OpenVINO backend (inference only) with them,
and the tensorflow, jax and torch sessions recheck a few models live so that the
stored file cannot drift from the code.

The weights are drawn with numpy from names and shapes alone (He-scaled kernels,
positive variances and scales), so every backend and both data formats get the
same values; the logits are compared (no softmax to flatten differences).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from helpers import distinct_images

import multinet

EXPECTED = Path(__file__).parent / "data" / "backend_parity.npz"
BATCH = 2  # the two images of inputs()
# The input size per model: small where the classifier builds at that size, odd
# where ceil and floor pooling differ (SqueezeNet 1.1 at 67); VGG's classifier
# needs 224.
SIZES = {"squeezenet1_0": 64, "squeezenet1_1": 67, "vit_b_16": 32,
         **{f"vgg{depth}": 224 for depth in (11, 13, 16, 19)},
         **{f"convnext_{size}": 32 for size in ("tiny", "small", "base", "large")}}
DEFAULT_SIZE = 64
TOLERANCE = 1e-4  # relative: largest absolute difference over the largest logit
# Biases, shifts and means: small, so that the output follows the image (larger
# constant offsets drown the input-dependent part in the deep MobileNets and
# EfficientNets).
OFFSET_STD = 0.01
# BatchNorm and LayerNorm scales: wide enough that the deep MobileNets and
# EfficientNets still answer the two images differently (below about 0.5 the
# output stops depending on the image), narrow enough that no network amplifies
# float rounding (EfficientNet B5 and B7 did at 0.5-1.5: torch and jax 0.5-0.9
# apart).
GAIN_LOW, GAIN_HIGH = 0.5, 1.5
GAINS = {"efficientnet_b5": (0.45, 1.4), "efficientnet_b7": (0.45, 1.4)}


def size_of(name: str) -> int:
    return SIZES.get(name, DEFAULT_SIZE)


def build(name: str, data_format: str):
    """The model at its parity size, logits out, with seeded weights."""
    import keras

    size = size_of(name)
    shape = (size, size, 3) if data_format == "channels_last" else (3, size, size)
    model = multinet.create_model(name, input_shape=shape, classifier_activation=None,
                                  data_format=data_format)
    model.set_weights(seeded_weights(model, name))
    keras.utils.set_random_seed(0)
    return model


def seeded_weights(model, name: str) -> list[np.ndarray]:
    """numpy values for ``model.weights``, drawn from the model's name and each
    variable's name and shape only."""
    import keras

    rng = np.random.default_rng(zlib.crc32(name.encode()))
    gain_low, gain_high = GAINS.get(name, (GAIN_LOW, GAIN_HIGH))
    depthwise = {id(v) for layer in model.layers for v in layer.weights
                 if isinstance(layer, keras.layers.DepthwiseConv2D)}
    values = []
    for variable in model.weights:
        shape = tuple(variable.shape)
        leaf = variable.path.rsplit("/", 1)[-1]
        if "variance" in leaf:
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf in ("gamma", "scale"):
            value = rng.uniform(gain_low, gain_high, shape)
        elif "kernel" in leaf and len(shape) >= 2:
            # He scaling; a depthwise kernel (kh, kw, channels, 1) sums kh * kw inputs.
            fan_in = int(np.prod(shape[:2] if id(variable) in depthwise else shape[:-1]))
            value = rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), shape)
        elif variable.dtype.startswith("int"):
            value = np.zeros(shape)
        else:
            value = rng.normal(0.0, OFFSET_STD, shape)
        values.append(np.asarray(value, dtype=variable.dtype))
    return values


def inputs(name: str, data_format: str) -> np.ndarray:
    """The seeded batch for ``name`` in ``data_format``: ``helpers.distinct_images``
    (noise, and stripes any network answers differently) on the scale of 0-255
    pixels, as MobileNetV3 and EfficientNet rescale inside the model."""
    rng = np.random.default_rng(zlib.crc32(f"input:{name}".encode()))
    return distinct_images(rng, size_of(name), data_format) * np.float32(127.5)


def logits(name: str, data_format: str) -> np.ndarray:
    model = build(name, data_format)
    return np.asarray(model.predict(inputs(name, data_format), verbose=0), dtype="float32")


def expected() -> dict[str, np.ndarray]:
    with np.load(EXPECTED) as data:
        return {key: data[key] for key in data.files}
