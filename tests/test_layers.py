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


def _conv_reference(x, kernel, bias, strides, padding, dilation, relu):
    """Keras' Conv2D on an NHWC array in float64, by shifted matrix products:
    'same' pads (total // 2) before and the rest after, as Keras does."""
    n, h, w, _ = x.shape
    kh, kw, _, filters = kernel.shape
    span_h, span_w = (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1
    if padding == "same":
        out_h, out_w = -(-h // strides[0]), -(-w // strides[1])
        pad_h = max((out_h - 1) * strides[0] + span_h - h, 0)
        pad_w = max((out_w - 1) * strides[1] + span_w - w, 0)
        x = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                       (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    else:
        out_h, out_w = (h - span_h) // strides[0] + 1, (w - span_w) // strides[1] + 1
    out = np.zeros((n, out_h, out_w, filters))
    for i in range(kh):
        for j in range(kw):
            top, left = i * dilation[0], j * dilation[1]
            patch = x[:, top:top + (out_h - 1) * strides[0] + 1:strides[0],
                      left:left + (out_w - 1) * strides[1] + 1:strides[1], :]
            out += patch @ kernel[i, j].astype("float64")
    if bias is not None:
        out += bias
    return np.maximum(out, 0.0) if relu else out


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filters=8, kernel_size=3, padding="same"),
        dict(filters=5, kernel_size=3, strides=2, padding="valid", activation="relu"),
        dict(filters=4, kernel_size=(1, 3), dilation_rate=2, padding="same", use_bias=False),
        dict(filters=6, kernel_size=7, strides=2),
        dict(filters=3, kernel_size=(3, 2), strides=(2, 3), padding="same", activation="relu"),
    ],
)
def test_conv2d_matches_a_numpy_convolution(kwargs, data_format, rng):
    """Both data formats, on every backend (TensorFlow's CPU runs channels_first
    through its NHWC kernels), against the convolution written in numpy."""
    x = rng.normal(size=(2, 15, 17, 3)).astype("float32")
    layer = layers.Conv2D(data_format=data_format, **kwargs)
    layer.build((None, 15, 17, 3) if data_format == "channels_last" else (None, 3, 15, 17))
    kernel = rng.normal(size=tuple(layer.kernel.shape)).astype("float32")
    bias = rng.normal(size=(kwargs["filters"],)).astype("float32")
    use_bias = kwargs.get("use_bias", True)
    layer.set_weights([kernel, bias] if use_bias else [kernel])
    expected = _conv_reference(
        x.astype("float64"), kernel, bias if use_bias else None, layer.strides, layer.padding,
        layer.dilation_rate, kwargs.get("activation") == "relu")
    if data_format == "channels_first":
        got = _apply(layer, x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    else:
        got = _apply(layer, x)
    assert got.shape == expected.shape
    assert rel_error(got, expected) < 1e-5
    assert np.abs(expected).max() > 0


def test_conv2d_serialization_round_trip_gives_the_same_outputs(rng):
    """A config round trip keeps everything the output depends on (format,
    strides, padding, activation)."""
    layer = layers.Conv2D(4, 3, strides=2, padding="same", activation="relu",
                          data_format="channels_first", name="c")
    x = rng.normal(size=(2, 3, 9, 8)).astype("float32")
    expected = _apply(layer, x)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    _apply(restored, x)  # builds it
    restored.set_weights(layer.get_weights())
    np.testing.assert_array_equal(_apply(restored, x), expected)
    assert expected.shape == (2, 4, 5, 4)


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


def _max_pool_reference(x, pool, stride, ceil_mode):
    """Max pooling on an NHWC array by loops: 'valid' windows, and with
    ``ceil_mode`` (PyTorch's) a last, partial window wherever one starts
    inside the input."""
    n, h, w, c = x.shape
    sizes = []
    for size in (h, w):
        steps = (size - pool) / stride
        sizes.append((int(np.ceil(steps)) if ceil_mode else int(np.floor(steps))) + 1)
    out = np.empty((n, *sizes, c), x.dtype)
    for i in range(sizes[0]):
        for j in range(sizes[1]):
            window = x[:, i * stride:i * stride + pool, j * stride:j * stride + pool, :]
            out[:, i, j, :] = window.max(axis=(1, 2))
    return out


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("pool,stride", [(3, 2), (2, 2)])
@pytest.mark.parametrize("size", [(7, 7), (8, 9), (54, 55), (3, 4), (4, 3), (2, 2)])
def test_max_pooling_matches_a_numpy_max_pool(size, pool, stride, ceil_mode, data_format, rng):
    # negative values too: the -inf padding must never win a window
    x = rng.normal(size=(2, *size, 4)).astype("float32")
    if not ceil_mode and min(size) < pool:
        pytest.skip("no full window: floor pooling has no output")
    expected = _max_pool_reference(x, pool, stride, ceil_mode)
    layer = layers.MaxPooling2D(pool, strides=stride, ceil_mode=ceil_mode,
                                data_format=data_format)
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
        expected = _max_pool_reference(x, 3, 2, True)
        feed = x if data_format == "channels_last" else x.transpose(0, 3, 1, 2)
        got = model.predict(feed, verbose=0)
        if data_format == "channels_first":
            got = got.transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_max_pooling_matches_torch_when_installed(ceil_mode, rng):
    torch = pytest.importorskip("torch")
    x = rng.normal(size=(2, 3, 13, 14)).astype("float32")
    expected = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2,
                                              ceil_mode=ceil_mode).numpy()
    got = _apply(layers.MaxPooling2D(3, strides=2, ceil_mode=ceil_mode,
                                     data_format="channels_first"), x)
    np.testing.assert_array_equal(got, expected)


def test_ceil_mode_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="ceil_mode=True needs padding='valid'"):
        layers.MaxPooling2D(3, strides=2, padding="same", ceil_mode=True)
    with pytest.raises(ValueError, match="ceil_mode=True needs pool_size >= strides"):
        layers.MaxPooling2D(2, strides=3, ceil_mode=True)


def test_max_pooling_serialization_round_trip_keeps_ceil_mode(rng):
    layer = layers.MaxPooling2D(3, strides=2, ceil_mode=True, name="p")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    x = rng.normal(size=(1, 8, 8, 2)).astype("float32")
    expected = _apply(layer, x)
    assert expected.shape == (1, 4, 4, 2)  # floor pooling would give 3x3
    np.testing.assert_array_equal(_apply(restored, x), expected)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_normalization_reads_its_variables_at_every_call(data_format, rng):
    """Values assigned to the mean/variance variables after the build are the
    ones used (Keras' own layer keeps the values it had when built, on JAX and
    TensorFlow), along the channel axis of either format."""
    axis = -1 if data_format == "channels_last" else 1
    shape = (5, 6, 3) if data_format == "channels_last" else (3, 5, 6)
    inputs = keras.Input(shape)
    model = keras.Model(inputs, layers.Normalization(axis=axis, name="norm")(inputs))
    mean = np.array([0.5, -1.0, 2.0], "float32")
    variance = np.array([4.0, 0.25, 9.0], "float32")
    layer = model.get_layer("norm")
    layer.adapt_mean.assign(mean)
    layer.adapt_variance.assign(variance)
    x = rng.normal(size=(2, *shape)).astype("float32")
    bshape = (1, 1, 1, 3) if data_format == "channels_last" else (1, 3, 1, 1)
    expected = (x - mean.reshape(bshape)) / np.sqrt(variance).reshape(bshape)
    got = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_normalization_serialization_round_trip(tmp_path, rng):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, layers.Normalization(axis=-1, name="norm")(inputs))
    model.get_layer("norm").adapt_mean.assign(np.array([1.0, 2.0, 3.0], "float32"))
    model.get_layer("norm").adapt_variance.assign(np.array([1.0, 4.0, 16.0], "float32"))
    x = rng.normal(size=(2, 4, 4, 3)).astype("float32")
    path = tmp_path / "norm.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("norm"), layers.Normalization)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)),
                               keras.ops.convert_to_numpy(model(x)), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gelu_is_the_exact_erf_form(dtype, rng):
    """layers.GELU equals x * Phi(x) (not the tanh approximation, which is
    1e-3 off at x = 2) on every backend, in the input's dtype."""
    import math

    x = np.concatenate([rng.normal(scale=3.0, size=200), [-6.0, -2.0, 0.0, 2.0, 6.0]])
    expected = np.array([v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x])
    got = _apply(layers.GELU(dtype=dtype), x.astype(dtype))
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got.astype("float64"), expected,
                               rtol=1e-6 if dtype == "float32" else 2e-3,
                               atol=1e-6 if dtype == "float32" else 2e-3)
    tanh_form = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    assert np.abs(tanh_form - expected).max() > 1e-4  # the check tells the two apart


def test_gelu_serialization_round_trip(tmp_path, rng):
    inputs = keras.Input((5,))
    model = keras.Model(inputs, layers.GELU(name="gelu")(inputs))
    path = tmp_path / "gelu.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("gelu"), layers.GELU)
    x = rng.normal(size=(3, 5)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)),
                               keras.ops.convert_to_numpy(model(x)), rtol=1e-6)


@pytest.mark.parametrize("invert", [False, True])
def test_normalization_with_a_fixed_mean_and_variance(data_format, invert, tmp_path, rng):
    """A fixed mean and variance (ConvNeXt's pre-stem normalization) give Keras'
    numbers and survive a .keras round trip."""
    axis = -1 if data_format == "channels_last" else 1
    mean, variance = [0.5, 1.0, -2.0], [0.25, 4.0, 9.0]
    inputs = keras.Input((4, 4, 3) if data_format == "channels_last" else (3, 4, 4))
    norm = layers.Normalization(axis=axis, mean=mean, variance=variance, invert=invert,
                                name="norm")
    model = keras.Model(inputs, norm(inputs))
    ref = keras.layers.Normalization(axis=axis, mean=mean, variance=variance, invert=invert)
    x = rng.normal(size=(2, *inputs.shape[1:])).astype("float32")
    bshape = (1, 1, 1, 3) if data_format == "channels_last" else (1, 3, 1, 1)
    m, s = np.reshape(mean, bshape), np.sqrt(np.reshape(variance, bshape))
    expected = x * s + m if invert else (x - m) / s
    got = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(ref(x)), rtol=1e-6, atol=1e-6)
    model.save(tmp_path / "norm.keras")
    loaded = keras.models.load_model(tmp_path / "norm.keras")
    assert isinstance(loaded.get_layer("norm"), layers.Normalization)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), got, rtol=1e-6)
