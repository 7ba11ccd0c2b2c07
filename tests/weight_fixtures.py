"""Deterministic weight files in the published layouts, made without PyTorch.

Every backend session regenerates the same torchvision-layout tensors from
numpy seeds, so the outputs the torch reference gave for them
(``tests/data/torchvision_expected.npz``, written by ``tests/make_expected.py``)
can be checked on TensorFlow and JAX too.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

DATA = Path(__file__).parent / "data"
EXPECTED = DATA / "torchvision_expected.npz"

VGG_DEPTHS = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
VGG_WIDTHS = (64, 128, 256, 512, 512)
# torchvision's nn.Sequential of SqueezeNet features: conv, relu, then
# "pool" or a Fire (inplanes, squeeze, expand).
SQUEEZENET = {
    "squeezenet1_0": ((96, 7), ["pool", (96, 16, 64), (128, 16, 64), (128, 32, 128), "pool",
                                (256, 32, 128), (256, 48, 192), (384, 48, 192), (384, 64, 256),
                                "pool", (512, 64, 256)]),
    "squeezenet1_1": ((64, 3), ["pool", (64, 16, 64), (128, 16, 64), "pool", (128, 32, 128),
                                (256, 32, 128), "pool", (256, 48, 192), (384, 48, 192),
                                (384, 64, 256), (512, 64, 256)]),
}
# (model, input size) pairs whose reference outputs are stored; SqueezeNet 1.0
# at 224 and 1.1 at 227 are sizes where ceil and floor pooling differ.
CASES = [("squeezenet1_0", 224), ("squeezenet1_1", 224), ("squeezenet1_1", 227),
         ("vgg11", 224), ("vgg13", 224), ("vgg16", 224), ("vgg19", 224)]
BATCH = 2


def torchvision_shapes(name: str, classes: int = 1000) -> list[tuple[str, tuple[int, ...]]]:
    """State-dict keys and shapes of torchvision's ``name``, in its order."""
    shapes = []
    if name in VGG_DEPTHS:
        index, channels = 0, 3
        for depth, width in zip(VGG_DEPTHS[name], VGG_WIDTHS):
            for _ in range(depth):
                shapes += [(f"features.{index}.weight", (width, channels, 3, 3)),
                           (f"features.{index}.bias", (width,))]
                channels, index = width, index + 2
            index += 1  # the pool
        for i, (out, inp) in zip((0, 3, 6), ((4096, 512 * 7 * 7), (4096, 4096), (classes, 4096))):
            shapes += [(f"classifier.{i}.weight", (out, inp)), (f"classifier.{i}.bias", (out,))]
        return shapes
    (filters, kernel), stack = SQUEEZENET[name]
    shapes += [("features.0.weight", (filters, 3, kernel, kernel)), ("features.0.bias", (filters,))]
    for index, item in enumerate(stack, start=2):
        if item == "pool":
            continue
        inplanes, squeeze, expand = item
        for part, shape in (("squeeze", (squeeze, inplanes, 1, 1)),
                            ("expand1x1", (expand, squeeze, 1, 1)),
                            ("expand3x3", (expand, squeeze, 3, 3))):
            shapes += [(f"features.{index}.{part}.weight", shape),
                       (f"features.{index}.{part}.bias", shape[:1])]
    shapes += [("classifier.1.weight", (classes, 512, 1, 1)), ("classifier.1.bias", (classes,))]
    return shapes


def tensor(seed, shape, fan_in=None) -> np.ndarray:
    """He-normal weights (or small biases), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    if fan_in is None:  # a bias
        return (0.05 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in)))


def torchvision_state_dict(name: str, seed: int = 0, classes: int = 1000) -> dict:
    """A torchvision-layout state dict of numpy arrays for ``name``."""
    state = {}
    for i, (key, shape) in enumerate(torchvision_shapes(name, classes)):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else None
        state[key] = tensor([seed, i], shape, fan_in)
    return state


def inputs_nchw(size: int, seed: int = 7) -> np.ndarray:
    """A reproducible batch of normalized images, (BATCH, 3, size, size)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((BATCH, 3, size, size), dtype=np.float32)


def to_format(x_nchw: np.ndarray, data_format: str) -> np.ndarray:
    if data_format == "channels_first":
        return x_nchw
    return np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))


def write_legacy_h5(path, layers, *, keras_version="2.1.5", weight_name=None, chunks=None,
                    model_weights=False):
    """Write a legacy Keras HDF5 weights file with h5py.

    ``layers`` is a list of (layer name, arrays); weightless layers have [].
    ``weight_name(layer, i)`` gives dataset names (default Keras 2's
    ``layer/kernel:0``, ``layer/bias:0``). ``chunks`` splits ``layer_names``
    into that many ``layer_namesN`` attributes.
    """
    if weight_name is None:
        def weight_name(layer, i):
            return f"{layer}/{('kernel', 'bias')[i]}:0"

    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if model_weights else f
        names = [n.encode("utf8") for n, _ in layers]
        if chunks:
            step = -(-len(names) // chunks)
            for c in range(chunks):
                root.attrs[f"layer_names{c}"] = np.array(names[c * step:(c + 1) * step])
        else:
            root.attrs["layer_names"] = np.array(names)
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = keras_version.encode()
        for layer, arrays in layers:
            group = root.create_group(layer)
            wnames = [weight_name(layer, i) for i in range(len(arrays))]
            group.attrs["weight_names"] = np.array([w.encode("utf8") for w in wnames])
            for wname, array in zip(wnames, arrays):
                group.create_dataset(wname, data=array)


def he_layers(shapes, seed):
    """[(name, [kernel, bias])] with reproducible He-normal kernels."""
    out = []
    for i, (name, kernel_shape) in enumerate(shapes):
        fan_in = int(np.prod(kernel_shape[:-1]))
        out.append((name, [tensor([seed, i, 0], kernel_shape, fan_in),
                           tensor([seed, i, 1], kernel_shape[-1:])]))
    return out


def keras_squeezenet_layers(seed: int = 3, classes: int = 1000):
    """The keras-squeezenet (v1.1) file's layers, weightless ones included."""
    layers = [("input_1", [])]
    weights = dict(he_layers(
        [("conv1", (3, 3, 3, 64))]
        + [(f"fire{k}/{part}", shape)
           for k, (inp, s, e) in zip(range(2, 10), [(64, 16, 64), (128, 16, 64), (128, 32, 128),
                                                     (256, 32, 128), (256, 48, 192),
                                                     (384, 48, 192), (384, 64, 256),
                                                     (512, 64, 256)])
           for part, shape in (("squeeze1x1", (1, 1, inp, s)), ("expand1x1", (1, 1, s, e)),
                               ("expand3x3", (3, 3, s, e)))]
        + [("conv10", (1, 1, 512, classes))], seed))
    layers += [("conv1", weights["conv1"]), ("relu_conv1", []), ("pool1", [])]
    for k in range(2, 10):
        for part in ("squeeze1x1", "expand1x1", "expand3x3"):
            layers += [(f"fire{k}/{part}", weights[f"fire{k}/{part}"]),
                       (f"fire{k}/relu_{part}", [])]
        layers.append((f"fire{k}/concat", []))
        if k in (3, 5):
            layers.append((f"pool{k}", []))
    layers += [("drop9", []), ("conv10", weights["conv10"]), ("relu_conv10", []),
               ("global_average_pooling2d_1", []), ("loss", [])]
    return layers


def keras_squeezenet_reference(layers):
    """The keras-squeezenet network rebuilt with plain keras.layers (channels_last,
    floor pooling), with the given weights; outputs logits."""
    import keras

    weights = dict(layers)
    x = inputs = keras.Input((None, None, 3))

    def conv(x, name, filters, kernel, **kw):
        layer = keras.layers.Conv2D(filters, kernel, activation="relu", **kw)
        out = layer(x)
        layer.set_weights(weights[name])
        return out

    x = conv(x, "conv1", 64, 3, strides=2)
    x = keras.layers.MaxPooling2D(3, 2)(x)
    for k, (s, e) in zip(range(2, 10), [(16, 64), (16, 64), (32, 128), (32, 128), (48, 192),
                                        (48, 192), (64, 256), (64, 256)]):
        x = conv(x, f"fire{k}/squeeze1x1", s, 1)
        x = keras.layers.Concatenate()([conv(x, f"fire{k}/expand1x1", e, 1),
                                        conv(x, f"fire{k}/expand3x3", e, 3, padding="same")])
        if k in (3, 5):
            x = keras.layers.MaxPooling2D(3, 2)(x)
    x = conv(x, "conv10", weights["conv10"][1].shape[0], 1)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x)


def legacy_vgg_layers(name: str, seed: int = 5, include_top: bool = True):
    """keras.applications' VGG file layers (``_notop`` without the head)."""
    layers, shapes, channels = [("input_1", [])], [], 3
    for block, (depth, width) in enumerate(zip(VGG_DEPTHS[name], VGG_WIDTHS), start=1):
        for conv in range(1, depth + 1):
            shapes.append((f"block{block}_conv{conv}", (3, 3, channels, width)))
            channels = width
    if include_top:
        shapes += [("fc1", (25088, 4096)), ("fc2", (4096, 4096)), ("predictions", (4096, 1000))]
    weights = dict(he_layers(shapes, seed))
    for block, depth in enumerate(VGG_DEPTHS[name], start=1):
        layers += [(f"block{block}_conv{c}", weights[f"block{block}_conv{c}"])
                   for c in range(1, depth + 1)]
        layers.append((f"block{block}_pool", []))
    if include_top:
        layers += [("flatten", [])] + [(n, weights[n]) for n in ("fc1", "fc2", "predictions")]
    return layers


def keras1_weight_name(layer, i):
    return f"{layer}_{'Wb'[i]}_1:0"
