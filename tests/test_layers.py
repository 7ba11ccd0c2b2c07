"""multinet.layers: Conv2D and DepthwiseConv2D in both formats on every backend,
ceil-mode pooling."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers import rel_error

from multinet import layers


def _apply(layer, x):
    return keras.ops.convert_to_numpy(layer(keras.ops.convert_to_tensor(x)))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filters=8, kernel_size=3, padding="same"),
        dict(filters=5, kernel_size=3, strides=2, padding="valid", activation="relu"),
        dict(filters=4, kernel_size=(1, 3), dilation_rate=2, padding="same", use_bias=False),
        dict(filters=6, kernel_size=7, strides=2),
    ],
)
def test_conv2d_channels_first_matches_channels_last(kwargs, rng):
    x = rng.normal(size=(2, 15, 17, 3)).astype("float32")
    last = layers.Conv2D(data_format="channels_last", bias_initializer="glorot_uniform",
                         **kwargs)
    first = layers.Conv2D(data_format="channels_first", **kwargs)
    expected = _apply(last, x)
    first.build((None, 3, 15, 17))
    first.set_weights(last.get_weights())
    got = _apply(first, x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    assert got.shape == expected.shape
    assert rel_error(got, expected) < 1e-5


def test_conv2d_is_a_keras_conv2d_and_serializes():
    layer = layers.Conv2D(4, 3, data_format="channels_first", name="c")
    assert isinstance(layer, keras.layers.Conv2D)
    config = keras.saving.serialize_keras_object(layer)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is layers.Conv2D
    assert restored.data_format == "channels_first"


def _depthwise_reference(x, kernel, bias, strides, padding, dilation):
    """A depthwise convolution on an NHWC array, by loops over the kernel:
    output channel ``c * multiplier + k`` is input channel ``c`` convolved
    with ``kernel[:, :, c, k]``; 'same' pads as TensorFlow (extra cell at the
    bottom/right)."""
    n, h, w, c = x.shape
    kh, kw, _, multiplier = kernel.shape
    spans = ((kh - 1) * dilation + 1, (kw - 1) * dilation + 1)
    pads = []
    for size, span, stride in zip((h, w), spans, strides):
        if padding == "same":
            out = -(-size // stride)
            total = max((out - 1) * stride + span - size, 0)
            pads.append((total // 2, total - total // 2))
        else:
            pads.append((0, 0))
    x = np.pad(x, ((0, 0), *pads, (0, 0)))
    out_h = (x.shape[1] - spans[0]) // strides[0] + 1
    out_w = (x.shape[2] - spans[1]) // strides[1] + 1
    out = np.zeros((n, out_h, out_w, c, multiplier), "float64")
    for a in range(kh):
        for b in range(kw):
            top, left = a * dilation, b * dilation
            window = x[:, top:top + (out_h - 1) * strides[0] + 1:strides[0],
                       left:left + (out_w - 1) * strides[1] + 1:strides[1], :]
            out += window[..., None] * kernel[a, b][None, None, None]
    out = out.reshape(n, out_h, out_w, c * multiplier)
    return out + bias if bias is not None else out


@pytest.mark.parametrize(
    "kwargs,size",
    [
        (dict(kernel_size=3, padding="same", use_bias=False), (15, 17)),
        (dict(kernel_size=3, strides=2, padding="same", use_bias=False), (14, 16)),
        (dict(kernel_size=5, strides=2, padding="valid", activation="relu"), (15, 16)),
        (dict(kernel_size=(3, 1), depth_multiplier=2, dilation_rate=2, padding="same"), (9, 8)),
    ],
)
def test_depthwise_conv2d_both_formats_match_numpy(kwargs, size, rng):
    x = rng.normal(size=(2, *size, 4)).astype("float32")
    last = layers.DepthwiseConv2D(data_format="channels_last", bias_initializer="glorot_uniform",
                                  **kwargs)
    first = layers.DepthwiseConv2D(data_format="channels_first", **kwargs)
    got_last = _apply(last, x)
    first.build((None, 4, *size))
    first.set_weights(last.get_weights())
    got_first = _apply(first, x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    weights = last.get_weights()
    strides = last.strides
    expected = _depthwise_reference(x.astype("float64"), weights[0].astype("float64"),
                                    weights[1] if last.use_bias else None, strides,
                                    last.padding, last.dilation_rate[0])
    if kwargs.get("activation") == "relu":
        expected = np.maximum(expected, 0.0)
    assert np.abs(expected).max() > 0.1
    assert got_last.shape == got_first.shape == expected.shape
    assert rel_error(got_last, expected) < 1e-5
    assert rel_error(got_first, expected) < 1e-5


def test_depthwise_conv2d_is_a_keras_depthwise_conv2d_and_serializes():
    layer = layers.DepthwiseConv2D(3, strides=2, data_format="channels_first", name="d")
    assert isinstance(layer, keras.layers.DepthwiseConv2D)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is layers.DepthwiseConv2D
    assert restored.data_format == "channels_first" and restored.strides == (2, 2)


def _ceil_max_pool_reference(x, pool, stride):
    """Max pooling with PyTorch's ceil_mode=True on an NHWC array, by loops."""
    n, h, w, c = x.shape
    out_h = -(-(h - pool) // stride) + 1
    out_w = -(-(w - pool) // stride) + 1
    out = np.empty((n, out_h, out_w, c), x.dtype)
    for i in range(out_h):
        for j in range(out_w):
            window = x[:, i * stride:i * stride + pool, j * stride:j * stride + pool, :]
            out[:, i, j, :] = window.max(axis=(1, 2))
    return out


@pytest.mark.parametrize("size", [(7, 7), (8, 9), (54, 55), (3, 4), (2, 2)])
def test_ceil_mode_max_pooling_matches_pytorch_semantics(size, data_format, rng):
    # negative values too: the -inf padding must never win a window
    x = rng.normal(size=(2, *size, 4)).astype("float32")
    expected = _ceil_max_pool_reference(x, 3, 2)
    layer = layers.MaxPooling2D(3, strides=2, ceil_mode=True, data_format=data_format)
    if data_format == "channels_first":
        got = _apply(layer, x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
        shape_in = (None, 4, *size)
    else:
        got = _apply(layer, x)
        shape_in = (None, *size, 4)
    np.testing.assert_array_equal(got, expected)
    out_shape = layer.compute_output_shape(shape_in)
    spatial = out_shape[1:3] if data_format == "channels_last" else out_shape[2:4]
    assert tuple(spatial) == expected.shape[1:3]


def test_ceil_mode_with_unknown_spatial_size(data_format, rng):
    shape = (None, None, 4) if data_format == "channels_last" else (4, None, None)
    inputs = keras.Input(shape=shape)
    outputs = layers.MaxPooling2D(3, strides=2, ceil_mode=True, data_format=data_format)(inputs)
    model = keras.Model(inputs, outputs)
    for size in (9, 10):
        x = rng.normal(size=(1, size, size, 4)).astype("float32")
        expected = _ceil_max_pool_reference(x, 3, 2)
        feed = x if data_format == "channels_last" else x.transpose(0, 3, 1, 2)
        got = model.predict(feed, verbose=0)
        if data_format == "channels_first":
            got = got.transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(got, expected)


def test_floor_mode_is_keras_max_pooling(rng):
    x = rng.normal(size=(1, 8, 8, 2)).astype("float32")
    ours = layers.MaxPooling2D(3, strides=2, data_format="channels_last")
    theirs = keras.layers.MaxPooling2D(3, strides=2, data_format="channels_last")
    np.testing.assert_array_equal(_apply(ours, x), _apply(theirs, x))


def test_ceil_mode_matches_torch_when_installed(rng):
    torch = pytest.importorskip("torch")
    x = rng.normal(size=(2, 3, 13, 14)).astype("float32")
    expected = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, ceil_mode=True).numpy()
    got = _apply(layers.MaxPooling2D(3, strides=2, ceil_mode=True,
                                     data_format="channels_first"), x)
    np.testing.assert_array_equal(got, expected)


def test_ceil_mode_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="ceil_mode=True needs padding='valid'"):
        layers.MaxPooling2D(3, strides=2, padding="same", ceil_mode=True)
    with pytest.raises(ValueError, match="ceil_mode=True needs pool_size >= strides"):
        layers.MaxPooling2D(2, strides=3, ceil_mode=True)


def test_max_pooling_serializes_ceil_mode():
    layer = layers.MaxPooling2D(3, strides=2, ceil_mode=True, name="p")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is layers.MaxPooling2D and restored.ceil_mode is True
