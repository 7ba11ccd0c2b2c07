"""Keras building blocks that work in both data formats on every backend.

Each layer here is a plain Keras layer (registered for ``.keras``
serialization under the ``multinet`` package) written with ``keras.ops`` only.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from multinet import backend

_PACKAGE = "multinet"


def standardize_data_format(data_format: str | None) -> str:
    """``None`` means the global ``keras.config.image_data_format()``."""
    if data_format is None:
        return keras.config.image_data_format()
    value = str(data_format).lower()
    if value not in backend.DATA_FORMATS:
        raise ValueError(
            f"data_format must be one of {backend.DATA_FORMATS} or None, "
            f"got {data_format!r}"
        )
    return value


def resolve_compute_format(compute_format: str | None) -> str:
    """``None``/``"auto"`` means the backend's fastest format
    (``backend.preferred_compute_format``); otherwise a data format."""
    if compute_format in (None, "auto"):
        return backend.preferred_compute_format()
    return standardize_data_format(compute_format)


def channel_axis(data_format: str) -> int:
    return -1 if data_format == backend.CHANNELS_LAST else 1


def image_shape(size, data_format: str, channels=3) -> tuple:
    """The (channels included) shape of a square image in ``data_format``."""
    if data_format == backend.CHANNELS_FIRST:
        return (channels, size, size)
    return (size, size, channels)


def to_data_format(x, source: str, target: str, name: str | None = None):
    """Permute a 4D batch from one data format to the other (no-op if equal)."""
    if source == target:
        return x
    dims = (2, 3, 1) if target == backend.CHANNELS_LAST else (3, 1, 2)
    return keras.layers.Permute(dims, name=name)(x)


def depthwise_conv(x, kernel, *, strides, padding, dilation_rate, data_format):
    """``keras.ops.depthwise_conv`` with the kernel (kh, kw, channels, multiplier).

    On JAX on a CPU it is computed as kh x kw strided slices of the (padded)
    batch, each times its per-channel weights, summed: XLA fuses them into one
    loop, where its CPU lowering of a convolution with one group per channel
    ran 10 to 16 times slower (a 3x3 on 16x112x112x96: 593 ms against 61 ms).
    Every other backend and device calls ``keras.ops.depthwise_conv``.
    """
    if not (backend.name() == "jax" and not backend.gpu_devices()):
        return ops.depthwise_conv(x, kernel, strides=strides, padding=padding,
                                  dilation_rate=dilation_rate, data_format=data_format)
    strides = _pair(strides)
    dilation = _pair(dilation_rate)
    kernel_h, kernel_w, channels, multiplier = kernel.shape
    last = data_format == backend.CHANNELS_LAST
    if multiplier > 1:  # output channel c * multiplier + m reads input channel c
        x = ops.repeat(x, multiplier, axis=-1 if last else 1)
    weights = ops.reshape(kernel, (kernel_h, kernel_w, channels * multiplier))
    h_axis = 1 if last else 2
    sizes = [x.shape[h_axis], x.shape[h_axis + 1]]
    spans = [(kernel_h - 1) * dilation[0] + 1, (kernel_w - 1) * dilation[1] + 1]
    pads = []
    for size, span, stride in zip(sizes, spans, strides):
        if padding == "same":
            total = max((math.ceil(size / stride) - 1) * stride + span - size, 0)
            pads.append((total // 2, total - total // 2))
        else:
            pads.append((0, 0))
    if any(p != (0, 0) for p in pads):
        width = [(0, 0), *pads, (0, 0)] if last else [(0, 0), (0, 0), *pads]
        x = ops.pad(x, width)
    outs = [(size + sum(pad) - span) // stride + 1
            for size, pad, span, stride in zip(sizes, pads, spans, strides)]
    total = None
    for i in range(kernel_h):
        for j in range(kernel_w):
            top, left = i * dilation[0], j * dilation[1]
            rows = slice(top, top + (outs[0] - 1) * strides[0] + 1, strides[0])
            cols = slice(left, left + (outs[1] - 1) * strides[1] + 1, strides[1])
            w = weights[i, j]
            if last:
                term = x[:, rows, cols, :] * w
            else:
                term = x[:, :, rows, cols] * ops.reshape(w, (-1, 1, 1))
            total = term if total is None else total + term
    return total


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Conv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` that also runs channels_first where the backend
    cannot, namely TensorFlow on a CPU (NHWC-only kernels).

    There the layer runs on the transposed batch and the result is transposed
    back; weights (HWIO) are the same either way. The bias is added with the
    data format stated (see ``backend.bias_add``), never guessed from shapes.
    """

    def call(self, inputs):
        # PyTorch: convolution, bias and ReLU in one call (backend.fused_conv2d).
        fused = backend.fused_conv2d(
            inputs, self.kernel, self.bias if self.use_bias else None,
            strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate,
            data_format=self.data_format, groups=self.groups, activation=self.activation)
        if fused is not None:
            return fused
        # TensorFlow's CPU kernels are NHWC only: run the whole layer on the
        # transposed batch there, bias and activation included, and transpose
        # the result back once.
        nhwc_only = (self.data_format == backend.CHANNELS_FIRST
                     and not backend.channels_first_conv_supported())
        data_format = backend.CHANNELS_LAST if nhwc_only else self.data_format
        x = ops.transpose(inputs, (0, 2, 3, 1)) if nhwc_only else inputs
        if self.groups > 1 and self.groups == self.filters and self.kernel.shape[2] == 1:
            # One input channel per group: a depthwise convolution, whose
            # kernel (kh, kw, channels, 1) is this one reshaped. TensorFlow has
            # native depthwise kernels but runs grouped ones through XLA,
            # compiled anew for every input shape.
            kernel_h, kernel_w = self.kernel_size
            x = depthwise_conv(
                x,
                ops.reshape(self.kernel, (kernel_h, kernel_w, self.filters, 1)),
                strides=self.strides,
                padding=self.padding,
                dilation_rate=self.dilation_rate,
                data_format=data_format,
            )
        else:
            x = ops.conv(
                x,
                self.kernel,
                strides=list(self.strides),
                padding=self.padding,
                dilation_rate=self.dilation_rate,
                data_format=data_format,
            )
        if self.use_bias:
            x = backend.bias_add(x, self.bias, data_format)
        if self.activation is not None:
            x = self.activation(x)
        return ops.transpose(x, (0, 3, 1, 2)) if nhwc_only else x


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """``keras.layers.DepthwiseConv2D`` that also runs channels_first where
    the backend cannot, namely TensorFlow on a CPU (its depthwise kernels are
    NHWC-only too).

    There the layer runs on the transposed batch and the result is transposed
    back, as ``Conv2D`` does; the kernel, (kh, kw, channels, multiplier), is
    the same either way. The bias is added with the data format stated.
    """

    def call(self, inputs):
        nhwc_only = (self.data_format == backend.CHANNELS_FIRST
                     and not backend.channels_first_conv_supported())
        data_format = backend.CHANNELS_LAST if nhwc_only else self.data_format
        x = ops.transpose(inputs, (0, 2, 3, 1)) if nhwc_only else inputs
        x = depthwise_conv(
            x,
            self.kernel,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=data_format,
        )
        if self.use_bias:
            x = backend.bias_add(x, self.bias, data_format)
        if self.activation is not None:
            x = self.activation(x)
        return ops.transpose(x, (0, 3, 1, 2)) if nhwc_only else x


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LayerNormalization(keras.layers.LayerNormalization):
    """``keras.layers.LayerNormalization`` that also normalizes over a single
    axis other than the last, e.g. the channels of a channels_first batch
    (``axis=1``), on every backend: Keras' PyTorch path hands any one axis to
    ``torch.nn.functional.layer_norm``, which normalizes trailing axes only.

    Over the last axis it is Keras' layer (on PyTorch, in float32, one
    ``layer_norm`` call with a constant normalized shape, which ONNX export can
    trace: ``backend.last_axis_layer_norm``); otherwise the mean and the
    (two-pass) variance are taken over ``axis`` with ``keras.ops``, and gamma
    and beta broadcast along it: no transpose of the batch (PyTorch: one
    ``layer_norm`` kernel on an NHWC view, ``backend.channels_first_layer_norm``). Weights are
    Keras' (gamma, beta), so files and the torchvision conversion are the same.
    """

    def call(self, inputs):
        axes = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
        axes = sorted(a % len(inputs.shape) for a in axes)
        if axes == [len(inputs.shape) - 1] and not self.rms_scaling:
            fused = backend.last_axis_layer_norm(
                inputs, self.gamma if self.scale else None, self.beta if self.center else None,
                self.epsilon)
            if fused is not None:
                return fused
        if axes == [len(inputs.shape) - 1] or self.rms_scaling:
            return super().call(inputs)
        if axes == [1] and not self.rms_scaling:
            fused = backend.channels_first_layer_norm(
                inputs, self.gamma if self.scale else None, self.beta if self.center else None,
                self.epsilon)
            if fused is not None:
                return fused
        x = ops.cast(inputs, "float32") if inputs.dtype in ("float16", "bfloat16") else inputs
        mean = ops.mean(x, axis=axes, keepdims=True)
        centered = x - mean
        variance = ops.mean(ops.square(centered), axis=axes, keepdims=True)
        x = centered * ops.rsqrt(variance + self.epsilon)
        shape = [1] * len(inputs.shape)
        for axis in axes:
            shape[axis] = inputs.shape[axis]
        if self.scale:
            x = x * ops.reshape(ops.cast(self.gamma, x.dtype), shape)
        if self.center:
            x = x + ops.reshape(ops.cast(self.beta, x.dtype), shape)
        return ops.cast(x, self.compute_dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ChannelDense(keras.layers.Dense):
    """``keras.layers.Dense`` over the channel axis of an image batch, in
    either data format: a 1x1 convolution whose kernel is kept as a Dense
    kernel, (in, out), as keras.applications' ConvNeXt stores its pointwise
    convolutions (``Dense`` on channels_last data).

    channels_last is ``Dense`` itself; channels_first contracts axis 1, so the
    batch is never transposed. Weights are the same in both formats, and a
    torchvision ``Linear`` converts as for any Dense layer.
    """

    def __init__(self, units, data_format=None, **kwargs):
        super().__init__(units, **kwargs)
        self.data_format = standardize_data_format(data_format)

    def _channels_first(self, shape) -> bool:
        return self.data_format == backend.CHANNELS_FIRST and len(shape) > 2

    def build(self, input_shape):
        shape = tuple(input_shape)
        if not self._channels_first(shape):
            return super().build(input_shape)
        super().build((shape[0], *shape[2:], shape[1]))
        self.input_spec = keras.InputSpec(min_ndim=3, axes={1: shape[1]})

    def call(self, inputs, training=None):
        if not self._channels_first(inputs.shape):
            return super().call(inputs, training=training)
        spatial = "hwd"[:len(inputs.shape) - 2]
        x = ops.einsum(f"bc{spatial},co->bo{spatial}", inputs, self.kernel)
        if self.use_bias:
            shape = (1, -1) + (1,) * (len(inputs.shape) - 2)
            x = ops.add(x, ops.reshape(ops.cast(self.bias, x.dtype), shape))
        if self.activation is not None:
            x = self.activation(x)
        return x

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        shape[1 if self._channels_first(shape) else -1] = self.units
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config["data_format"] = self.data_format
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LayerScale(keras.layers.Layer):
    """Per-channel scale ``x * gamma`` (Touvron et al., 2021), over the channel
    axis ``axis`` (-1 or 1): keras.applications' ConvNeXt ``LayerScale``
    (one weight ``gamma``, (channels,)), torchvision's ``layer_scale``
    parameter, (channels, 1, 1), converted by ``from_torchvision``."""

    def __init__(self, init_values=1e-6, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.init_values = float(init_values)
        self.axis = int(axis)

    def build(self, input_shape):
        channels = input_shape[self.axis]
        if channels is None:
            raise ValueError(f"{self.name}: the channel axis {self.axis} must be known, "
                             f"got input shape {tuple(input_shape)}")
        self.gamma = self.add_weight(
            name="gamma", shape=(int(channels),),
            initializer=keras.initializers.Constant(self.init_values), trainable=True)

    def call(self, inputs):
        shape = [1] * len(inputs.shape)
        shape[self.axis] = -1
        return inputs * ops.reshape(ops.cast(self.gamma, inputs.dtype), shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def from_torchvision(self, params):
        """torchvision's (channels, 1, 1) ``layer_scale`` as ``[gamma]``."""
        if set(params) != {"layer_scale"}:
            raise ValueError(f"expected a layer_scale for a LayerScale, got "
                             f"{', '.join(sorted(params)) or 'nothing'}")
        value = params["layer_scale"]
        channels = int(self.gamma.shape[0])
        if value.size != channels or any(d != 1 for d in value.shape[1:]):
            raise ValueError(f"layer_scale of shape {tuple(value.shape)} for a LayerScale of "
                             f"{channels} channels (expected ({channels}, 1, 1))")
        return [value.reshape(channels)]

    def get_config(self):
        config = super().get_config()
        config.update(init_values=self.init_values, axis=self.axis)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GELU(keras.layers.Layer):
    """The exact (erf) GELU, as torch's ``nn.GELU()`` and Keras' ``"gelu"``
    activation, in a form every exporter can write (see ``backend.gelu``)."""

    def call(self, inputs):
        return backend.gelu(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Normalization(keras.layers.Normalization):
    """``keras.layers.Normalization`` that reads its mean and variance
    variables at every call.

    Keras' own layer takes a snapshot of them when it is built or loads a
    file through Keras, so values assigned to its variables later (as
    ``multinet.load_weights`` does) would not be used. The output is
    ``(x - mean) / max(sqrt(variance), epsilon)`` along ``axis``, as Keras
    computes it, from the variables or from a fixed ``mean``/``variance``.
    """

    def build(self, input_shape):
        super().build(input_shape)
        if self.input_mean is not None:
            # A fixed mean and variance are kept as numpy arrays, made graph
            # constants at each call: Keras keeps eager tensors, which a traced
            # TensorFlow function captures as inputs, and tf2onnx then leaves
            # them as inputs of the ONNX graph that nothing feeds.
            self._fixed = (ops.convert_to_numpy(self.mean), ops.convert_to_numpy(self.variance))

    def call(self, inputs):
        dtype = self.compute_dtype
        if self.input_mean is not None:
            mean, variance = (ops.convert_to_tensor(v, dtype=dtype) for v in self._fixed)
        else:
            mean = ops.cast(ops.reshape(self.adapt_mean, self._broadcast_shape), dtype)
            variance = ops.cast(ops.reshape(self.adapt_variance, self._broadcast_shape), dtype)
        inputs = ops.cast(inputs, dtype)
        if self.invert:
            return mean + inputs * ops.maximum(ops.sqrt(variance), keras.config.epsilon())
        return (inputs - mean) / ops.maximum(ops.sqrt(variance), keras.config.epsilon())


def pool_output_size(size, pool, stride, ceil_mode):
    if size is None:
        return None
    if ceil_mode:
        return math.ceil((size - pool) / stride) + 1
    return (size - pool) // stride + 1


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaxPooling2D(keras.layers.MaxPooling2D):
    """``keras.layers.MaxPooling2D`` with PyTorch/Caffe's ``ceil_mode``.

    With ``ceil_mode=True`` and 'valid' padding, the output size is
    ``ceil((size - pool) / stride) + 1`` instead of the floor, as in
    ``torch.nn.MaxPool2d(ceil_mode=True)``. The extra window that ceil mode
    adds is had by padding the bottom/right edge with -inf, which no max can
    pick, so the result is exact for any input. Each extra window starts
    inside the input, as PyTorch requires.
    """

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid",
                 data_format=None, ceil_mode=False, name=None, **kwargs):
        super().__init__(pool_size=pool_size, strides=strides, padding=padding,
                         data_format=data_format, name=name, **kwargs)
        if ceil_mode and self.padding != "valid":
            raise ValueError(
                f"{self.name}: ceil_mode=True needs padding='valid', got {padding!r}"
            )
        if ceil_mode and any(p < s for p, s in zip(self.pool_size, self.strides)):
            raise ValueError(
                f"{self.name}: ceil_mode=True needs pool_size >= strides, got "
                f"pool_size={self.pool_size}, strides={self.strides}"
            )
        self.ceil_mode = bool(ceil_mode)

    def _spatial_axes(self):
        return (1, 2) if self.data_format == backend.CHANNELS_LAST else (2, 3)

    def _ceil_padding(self, shape):
        pads = []
        for axis, pool, stride in zip(self._spatial_axes(), self.pool_size, self.strides):
            size = shape[axis]
            if size is None:
                # Unknown until run time: stride - 1 extra cells always give
                # the ceil size, and never start a window in the padding.
                pads.append(stride - 1)
                continue
            # Smallest padded size whose floor pooling gives the ceil size.
            ceil_out = pool_output_size(size, pool, stride, True)
            pads.append(max((ceil_out - 1) * stride + pool - size, 0))
        return pads

    def call(self, inputs):
        if self.ceil_mode:
            pad_h, pad_w = self._ceil_padding(inputs.shape)
            if pad_h or pad_w:
                widths = [[0, 0], [0, 0], [0, 0], [0, 0]]
                axis_h, axis_w = self._spatial_axes()
                widths[axis_h][1] = pad_h
                widths[axis_w][1] = pad_w
                inputs = ops.pad(inputs, widths, constant_values=float("-inf"))
        return super().call(inputs)

    def compute_output_shape(self, input_shape):
        if not self.ceil_mode:
            return super().compute_output_shape(input_shape)
        shape = list(input_shape)
        for axis, pool, stride in zip(self._spatial_axes(), self.pool_size, self.strides):
            shape[axis] = pool_output_size(shape[axis], pool, stride, True)
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config["ceil_mode"] = self.ceil_mode
        return config


INFO_LAYER = "multinet_info"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ModelInfo(keras.layers.Layer):
    """An identity layer that carries what multinet knows about its model.

    ``info`` holds the registry name, the architecture options and, once
    weights are loaded, where they came from (entry, layout, preprocessing,
    source). Being a layer of the model, it travels with it through
    ``model.save("x.keras")``/``keras.models.load_model`` and
    ``keras.models.clone_model``, which keep every layer's config. Read it
    with ``multinet.model_info(model)``.
    """

    def __init__(self, info=None, **kwargs):
        kwargs.setdefault("autocast", False)  # an identity: never cast the output
        super().__init__(**kwargs)
        self.info = _json_ready(info or {})

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["info"] = _json_ready(self.info)
        return config


def _json_ready(value):
    """A deep copy of ``value`` made of dicts, lists, strings, numbers, None."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "items"):
        return _json_ready(dict(value.items()))
    return str(value)


def info_layer(model) -> ModelInfo | None:
    """The model's ``ModelInfo`` layer, or None for a model multinet did not build."""
    for layer in getattr(model, "layers", ()):
        if isinstance(layer, ModelInfo):
            return layer
    return None


def model_info(model) -> dict:
    """What multinet knows about ``model``: ``{"model", "options", "weights"}``.

    ``model`` is the registry name, ``options`` the architecture options it
    was built with, ``weights`` None or ``{"entry", "layout",
    "preprocessing", "source"}`` of the weights last loaded by multinet. A
    model that multinet did not build gives ``{}``. The dict is a copy.
    """
    layer = info_layer(model)
    return _json_ready(layer.info) if layer is not None else {}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Model(keras.Model):
    """The functional ``keras.Model`` every multinet builder returns.

    Built and saved like any functional model (``Model(inputs, outputs)``,
    ``.keras`` files). The one difference: on JAX on a CPU, the steps Keras
    compiles for ``predict``, ``fit`` and ``evaluate`` get the XLA options of
    :func:`multinet.backend.xla_compiler_options`, as ``compile_inference`` does,
    without any process-wide ``XLA_FLAGS``. On OpenVINO, ``predict`` computes in
    float32 (:func:`multinet.backend.openvino_float32`; Keras' compile leaves
    OpenVINO free to use bfloat16), and, as that backend runs inference
    only, ``fit`` and ``train_on_batch`` raise a one-line
    ``NotImplementedError`` that names the backends that train. Elsewhere it is
    a plain functional model.
    """

    def _get_compiled_model(self, data):
        # Keras' OpenVINO trainer only: compile predict's graph in float32.
        with backend.openvino_float32():
            return super()._get_compiled_model(data)

    def fit(self, *args, **kwargs):
        backend.require_training("fit")
        return super().fit(*args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        backend.require_training("train_on_batch")
        return super().train_on_batch(*args, **kwargs)

    def make_predict_function(self, force=False):
        with backend.keras_jit_options():
            return super().make_predict_function(force=force)

    def make_train_function(self, force=False):
        with backend.keras_jit_options():
            return super().make_train_function(force=force)

    def make_test_function(self, force=False):
        with backend.keras_jit_options():
            return super().make_test_function(force=force)
