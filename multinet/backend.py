"""The one module that knows which framework runs underneath Keras.

Everything else in multinet speaks ``keras.layers`` and ``keras.ops`` only.
Framework imports happen lazily inside functions, so importing multinet never
imports a backend other than the one Keras selected.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re

import keras

from multinet.backend_select import TRAINING_BACKENDS

CHANNELS_LAST = "channels_last"
CHANNELS_FIRST = "channels_first"
DATA_FORMATS = (CHANNELS_LAST, CHANNELS_FIRST)


def name() -> str:
    """The Keras backend in use: ``"tensorflow"``, ``"jax"``, ``"torch"`` or
    ``"openvino"`` (inference only)."""
    return keras.backend.backend()


def can_train(backend: str | None = None) -> bool:
    """Whether ``backend`` (default: the one in use) can train a model: Keras'
    OpenVINO and numpy backends have no ``fit``/``train_on_batch``."""
    return (backend or name()) in TRAINING_BACKENDS


def cannot_train(what: str) -> str | None:
    """None where the backend in use trains; else the one-line reason ``what``
    cannot run, naming the backends that train."""
    if can_train():
        return None
    return (f"{what} needs a backend that trains: the {name()} backend runs inference only; "
            f"set KERAS_BACKEND to {', '.join(TRAINING_BACKENDS[:-1])} or "
            f"{TRAINING_BACKENDS[-1]} to train")


def require_training(what: str) -> None:
    """Raise :func:`cannot_train`'s reason as a ``NotImplementedError``."""
    reason = cannot_train(what)
    if reason:
        raise NotImplementedError(reason)


@functools.cache
def gpu_devices() -> tuple[str, ...]:
    """Names of the accelerators the current backend can see (empty on CPU)."""
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        devices = tf.config.list_physical_devices("GPU")
        names = []
        for device in devices:
            details = tf.config.experimental.get_device_details(device)
            names.append(details.get("device_name", device.name))
        return tuple(names)
    if backend == "jax":
        import jax

        return tuple(d.device_kind for d in jax.devices() if d.platform != "cpu")
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return tuple(
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            )
        return ()
    return ()


def framework_version() -> str:
    """Version string of the framework behind the current backend."""
    backend = name()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch",
              "openvino": "openvino", "numpy": "numpy"}.get(backend)
    if module is None:
        return "unknown"
    import importlib

    return getattr(importlib.import_module(module), "__version__", "unknown")


def channels_first_conv_supported() -> bool:
    """Whether ``keras.ops.conv`` runs NCHW data natively here.

    TensorFlow's CPU convolution kernels are NHWC only ("The Conv2D op currently
    only supports the NHWC tensor format on the CPU"); every other backend, and
    TensorFlow on a GPU, runs NCHW.
    """
    if name() == "tensorflow":
        return bool(gpu_devices())
    return True


# How each framework says that an operation has no kernel for a dtype on the
# device at hand: (framework, exception class, message pattern). ``dtype``
# captures the dtype named, ``op`` the operation where the message names it.
MISSING_KERNEL_ERRORS = (
    # ATen's dispatch: '"lu_cpu" not implemented for 'BFloat16''.
    ("torch", ("NotImplementedError", "RuntimeError"),
     r'"(?P<op>\w+)" not implemented for \'(?P<dtype>\w+)\''),
    # An eager op whose registration excludes the dtype.
    ("tensorflow", ("InvalidArgumentError",),
     r"Value for attr '\w+' of (?P<dtype>\w+) is not in the list of allowed values"
     r".*\[Op:(?P<op>\w+)\]"),
    # The same, met while tracing a tf.function.
    ("tensorflow", ("TypeError",),
     r"Value passed to parameter '\w+' has DataType (?P<dtype>\w+) not in list of "
     r"allowed values"),
    # An op registered for the dtype, but with no kernel for it on this device.
    ("tensorflow", ("NotFoundError", "InvalidArgumentError"),
     r"No registered '(?P<op>\w+)' OpKernel for '\w+' devices compatible with node"
     r".*T=DT_(?P<dtype>\w+)"),
    ("tensorflow", ("NotFoundError", "InvalidArgumentError"),
     r"Could not find device for node: \{\{node (?P<op>\w+)\}\} = \w+\[.*T=DT_(?P<dtype>\w+)"),
    # jaxlib's LAPACK bindings on CPU have no bfloat16 (or float16) routines.
    ("jax", ("NotImplementedError",),
     r"KeyError\(<class 'ml_dtypes\.(?P<dtype>\w+)'>\), 'Unsupported dtype \w+\.'"),
)


def missing_kernel(exc: BaseException, dtype: str) -> str | None:
    """Why ``exc`` means "no kernel for ``dtype`` here", or None if it does not.

    True only for the frameworks' own missing-kernel errors listed in
    :data:`MISSING_KERNEL_ERRORS` whose dtype is ``dtype`` (looked up in
    ``exc`` and the exceptions it was raised from); any other error, whatever
    its message mentions, gives None. Returns e.g. ``"torch has no bfloat16
    kernel for lu_cpu"``.
    """
    wanted = re.sub(r"[^a-z0-9]", "", dtype.lower())
    seen = []
    while exc is not None and len(seen) < 8 and exc not in seen:
        seen.append(exc)
        classes = {cls.__name__ for cls in type(exc).__mro__}
        text = str(exc)
        for framework, exc_types, pattern in MISSING_KERNEL_ERRORS:
            if classes.isdisjoint(exc_types):
                continue
            match = re.search(pattern, text, re.DOTALL)
            if match and re.sub(r"[^a-z0-9]", "", match["dtype"].lower()) == wanted:
                op = match.groupdict().get("op")
                return f"{framework} has no {dtype} kernel" + (f" for {op}" if op else "")
        exc = exc.__cause__ or exc.__context__
    return None


def preferred_compute_format() -> str:
    """The data format in which convolution stacks run fastest on this backend.

    Models built by multinet take and return data in the format the user asks
    for, but compute in this format inside, with one transpose at the input
    (and one at a spatial output) when the two differ. Weights are the same in
    both formats, so this is invisible except in speed.

    - torch: PyTorch convolutions are NCHW; Keras' channels_last path
      transposes around every convolution.
    - jax (XLA on CPU) and tensorflow (CPU kernels): NHWC.
    """
    backend = name()
    if backend == "torch":
        return CHANNELS_FIRST
    if backend == "tensorflow" and gpu_devices():
        return CHANNELS_FIRST
    return CHANNELS_LAST


# --- Benchmarking and fast inference support (used by multinet.benchmark) ---


def num_threads() -> int | None:
    """CPU threads the backend's kernels use (None where it does not say)."""
    backend = name()
    if backend == "torch":
        import torch

        return torch.get_num_threads()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.config.threading.get_intra_op_parallelism_threads() or None
    return None


@contextlib.contextmanager
def limit_threads(count: int):
    """Run the block with at most ``count`` CPU threads per operation where the
    backend can change that at run time (PyTorch); elsewhere a no-op.

    For tiny models (the demo's 8x8 digits network) handing each small
    operation to several threads costs more than it saves: on a busy 2-core
    machine a PyTorch training step took 109 ms on 2 threads, 13 ms on 1.
    """
    if name() != "torch":
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(int(count), previous)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def to_device(array):
    """A backend tensor on the default device (the GPU where there is one)."""
    return keras.ops.convert_to_tensor(array)


def block_until_ready(value):
    """Wait until asynchronously dispatched work that produces ``value`` is done."""
    backend = name()
    if backend == "jax":
        import jax

        return jax.block_until_ready(value)
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return value
    if backend == "tensorflow" and gpu_devices():
        return keras.ops.convert_to_numpy(value)
    return value


def reset_peak_device_memory() -> None:
    """Reset the accelerator's peak-memory counter where the backend allows it."""
    if not gpu_devices():
        return
    backend = name()
    if backend == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")


def peak_device_memory() -> int | None:
    """Peak bytes allocated on the first accelerator (None on CPU).

    torch: ``torch.cuda.max_memory_allocated``; tensorflow:
    ``get_memory_info("GPU:0")["peak"]``; jax: ``memory_stats()
    ["peak_bytes_in_use"]`` (process-wide, JAX cannot reset it).
    """
    if not gpu_devices():
        return None
    backend = name()
    if backend == "torch":
        import torch

        return int(torch.cuda.max_memory_allocated())
    if backend == "tensorflow":
        import tensorflow as tf

        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    if backend == "jax":
        import jax

        device = next(d for d in jax.devices() if d.platform != "cpu")
        stats = device.memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return None if peak is None else int(peak)
    return None


# XLA:CPU's YNNPACK library fusion puts a whole VGG (13 convolutions, fc1, fc2)
# into one fusion that runs 3-4x slower than XLA's own CPU emitters here
# (VGG16, batch 4: about 1 img/s against 3); leaving it off costs SqueezeNet
# nothing. Applied per compiled function, never process-wide.
_XLA_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def xla_compiler_options() -> dict[str, str]:
    """XLA options for multinet's own ``jax.jit`` calls (empty off the CPU).

    The same setting for the whole process (``model.predict``,
    ``model.fit``) is ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=``.
    """
    if name() != "jax" or gpu_devices():
        return {}
    return dict(_XLA_CPU_OPTIONS)


@functools.cache
def _xla_options_accepted(items: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jax's XLA compiles with these options (checked once)."""
    import jax

    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(items))(1.0)
    except Exception:  # an XLA that does not know them
        return False
    return True


@contextlib.contextmanager
def keras_jit_options():
    """Inside this context, the ``jax.jit`` that Keras' JAX trainer uses for
    ``predict``, ``fit`` and ``evaluate`` steps compiles with
    :func:`xla_compiler_options` (per compiled function, never process-wide).
    A no-op off JAX, on GPUs, and where Keras' trainer or XLA differ from what
    this expects (then Keras compiles as usual).
    """
    options = xla_compiler_options()
    if not options or not _xla_options_accepted(tuple(sorted(options.items()))):
        yield
        return
    import jax
    from keras.src.backend.jax import trainer as jax_trainer

    original = getattr(jax_trainer, "jit", None)
    if original is not jax.jit:  # flax nnx, or a Keras that compiles differently
        yield
        return
    jax_trainer.jit = functools.partial(jax.jit, compiler_options=options)
    try:
        yield
    finally:
        jax_trainer.jit = original


class _OpenVINOFloat32:
    """The ``openvino`` module, except that ``compile_model`` asks for float32."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, attr):
        return getattr(self._module, attr)

    def compile_model(self, model, device_name="AUTO", config=None):
        config = {"INFERENCE_PRECISION_HINT": "f32", **(config or {})}
        return self._module.compile_model(model, device_name, config)


@contextlib.contextmanager
def openvino_float32():
    """Inside this context, the graph Keras' OpenVINO trainer compiles for
    ``predict`` and ``evaluate`` computes in float32.

    Keras compiles it with ``openvino.compile_model(model, "CPU")`` and no
    precision hint, and on a CPU with bfloat16 units (AMX, AVX512-BF16)
    OpenVINO then computes in bfloat16: outputs about 1e-2 off float32.
    Keras' eager OpenVINO ops already ask for f32. A no-op off OpenVINO and
    where Keras' trainer differs from what this expects.
    """
    if name() != "openvino":
        yield
        return
    import openvino
    from keras.src.backend.openvino import trainer as ov_trainer

    original = getattr(ov_trainer, "ov", None)
    if original is not openvino:
        yield
        return
    ov_trainer.ov = _OpenVINOFloat32(original)
    try:
        yield
    finally:
        ov_trainer.ov = original


def compile_inference(model: keras.Model):
    """A fast inference function for ``model``: ``forward(x) -> y``.

    Same outputs as ``model(x, training=False)``, without ``predict``'s
    per-call data handling:

    - jax: ``jax.jit`` of ``model.stateless_call`` with
      :func:`xla_compiler_options`, reading the current variable values at
      each call (so weight updates are seen);
    - torch: ``model(x, training=False)`` under ``torch.inference_mode()``;
    - tensorflow: ``tf.function`` of ``model(x, training=False)``.

    ``x`` is a NumPy array or a backend tensor; ``y`` is a backend tensor
    (``keras.ops.convert_to_numpy`` makes it a NumPy array).
    """
    backend = name()
    if backend == "jax":
        import jax

        def stateless(trainable, non_trainable, x):
            outputs, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            return outputs

        options = xla_compiler_options()
        jitted = jax.jit(stateless, compiler_options=options or None)
        plain = jax.jit(stateless)
        state = {"jitted": jitted}

        def forward(x):
            args = ([v.value for v in model.trainable_variables],
                    [v.value for v in model.non_trainable_variables], x)
            try:
                return state["jitted"](*args)
            except Exception as exc:  # an XLA without these options: compile without
                if state["jitted"] is plain or not any(k in str(exc) for k in options):
                    raise
                state["jitted"] = plain
                return plain(*args)

        return forward
    if backend == "torch":
        import torch

        def forward(x):
            with torch.inference_mode():
                return model(keras.ops.convert_to_tensor(x), training=False)

        return forward
    if backend == "tensorflow":
        import tensorflow as tf

        function = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

        def forward(x):
            return function(keras.ops.convert_to_tensor(x))

        return forward

    def forward(x):
        return model(x, training=False)

    return forward


def bias_add(x, bias, data_format: str):
    """Add a per-channel bias to a 4D batch in ``data_format``.

    Keras' TensorFlow ``ops.add`` turns a bias-shaped operand into
    ``tf.nn.bias_add`` and guesses NHWC whenever the last axis has the bias'
    length, so a channels_first batch whose width equals its channel count
    gets the bias added along the width. Here the format is stated instead.
    """
    if name() == "tensorflow":
        import tensorflow as tf

        tf_format = "NHWC" if data_format == CHANNELS_LAST else "NCHW"
        return tf.nn.bias_add(x, tf.cast(bias, x.dtype), data_format=tf_format)
    from keras import ops

    shape = (1, 1, 1, -1) if data_format == CHANNELS_LAST else (1, -1, 1, 1)
    return ops.add(x, ops.cast(ops.reshape(bias, shape), x.dtype))


def export_dynamic_batch() -> dict:
    """The keyword arguments that keep the batch dimension of the model's one
    input dynamic in Keras' ``model.export``: torch's ``dynamic_shapes`` (Keras
    traces with batch 1, which ``torch.export`` specializes to a constant);
    none on the other backends, whose exporters keep it from the input
    signature."""
    if name() != "torch":
        return {}
    import torch

    return {"dynamic_shapes": {0: torch.export.Dim("batch", min=1, max=4096)}}


def gelu(x):
    """The exact (erf) GELU, as torch's ``nn.GELU()``.

    Keras' ``gelu`` on TensorFlow lowers to ``tf.nn.gelu``, which now computes
    ``erfc``: ONNX has no such op, so tf2onnx writes a non-standard ``Erfc``
    node that onnxruntime rejects. There it is written with ``erf`` instead,
    the same function; elsewhere Keras' own (fused where the framework has it).
    """
    from keras import ops

    if name() == "tensorflow":
        half = ops.cast(0.5, x.dtype)
        return half * x * (1.0 + ops.erf(x * ops.cast(math.sqrt(0.5), x.dtype)))
    return ops.gelu(x, approximate=False)


def _torch_layer_norm(x, axis_size, gamma, beta, epsilon):
    """``torch.nn.functional.layer_norm`` over the last axis of the torch tensor
    ``x`` with Keras variables ``gamma``/``beta`` (or None). The normalized shape
    is a Python int, a constant for tracers too (Keras' ONNX export traces with
    torch.jit, whose ONNX converter rejects a traced size there)."""
    import torch.nn.functional as F

    weight = None if gamma is None else keras.ops.convert_to_tensor(gamma)
    bias = None if beta is None else keras.ops.convert_to_tensor(beta)
    return F.layer_norm(x, (int(axis_size),), weight, bias, epsilon)


def _norm_dtypes(inputs, gamma, beta) -> set[str]:
    return {keras.backend.standardize_dtype(t.dtype) for t in (inputs, gamma, beta)
            if t is not None}


def channels_first_layer_norm(inputs, gamma, beta, epsilon: float):
    """LayerNorm over axis 1 of a 4D channels_first batch in one kernel where
    the backend has one; None elsewhere.

    PyTorch only: ``torch.nn.functional.layer_norm`` over the last axis of the
    batch viewed as NHWC (``permute``, a view: no copy where the batch is
    stored channels_last in memory, as ``fused_conv2d`` leaves it), viewed
    back as NCHW. The other backends compile the ``keras.ops`` version into
    fused kernels, so they return None and the caller takes that path; so does
    an input whose dtype differs from ``gamma``/``beta``'s.
    """
    if name() != "torch" or len(inputs.shape) != 4 or len(_norm_dtypes(inputs, gamma, beta)) > 1:
        return None
    x = keras.ops.convert_to_tensor(inputs)
    out = _torch_layer_norm(x.permute(0, 2, 3, 1), x.shape[1], gamma, beta, epsilon)
    return out.permute(0, 3, 1, 2)


def last_axis_layer_norm(inputs, gamma, beta, epsilon):
    """LayerNorm over the last axis in one kernel on PyTorch, with a constant
    normalized shape (Keras' own op passes the traced size, which
    ``torch.onnx`` cannot export); None elsewhere, and for inputs or
    ``gamma``/``beta`` other than float32 (Keras' op computes half precision in
    float32)."""
    if name() != "torch" or _norm_dtypes(inputs, gamma, beta) != {"float32"}:
        return None
    x = keras.ops.convert_to_tensor(inputs)
    return _torch_layer_norm(x, x.shape[-1], gamma, beta, epsilon)


def fused_conv2d(inputs, kernel, bias, *, strides, padding, dilation_rate, data_format,
                 groups=1, activation=None):
    """One-call 2D convolution, bias and ReLU where the backend has one; None elsewhere.

    PyTorch only (channels_first, 'valid' padding, or 'same' padding with
    stride 1 and odd kernels, where it is symmetric): ``torch.nn.functional.
    conv2d`` with the bias fused in and the padding passed to the kernel (no
    separate pad, add or transpose of the batch), on a CPU with the batch
    stored channels_last in memory (``torch.channels_last``: same NCHW shape
    and values, the layout oneDNN's kernels are fastest in), and, with
    autograd off (inference), an in-place ReLU on the fresh output. The
    other backends compile the layer into one fused kernel already, so they return None and
    the caller takes the ``keras.ops`` path.
    """
    if name() != "torch" or data_format != CHANNELS_FIRST:
        return None
    import torch
    import torch.nn.functional as F

    kernel_h, kernel_w = kernel.shape[0], kernel.shape[1]
    if padding == "valid":
        pad = (0, 0)
    elif (padding == "same" and all(s == 1 for s in strides)
          and kernel_h % 2 == 1 and kernel_w % 2 == 1):
        pad = (dilation_rate[0] * (kernel_h - 1) // 2, dilation_rate[1] * (kernel_w - 1) // 2)
    else:
        return None
    x = keras.ops.convert_to_tensor(inputs)
    weight = keras.ops.convert_to_tensor(kernel)
    if x.dtype != weight.dtype:
        return None
    if x.device.type == "cpu" and not x.is_contiguous(memory_format=torch.channels_last):
        # oneDNN's CPU convolutions run faster on NHWC memory: store the batch
        # so once (the shape stays NCHW); later layers keep that memory format.
        x = x.contiguous(memory_format=torch.channels_last)
    # Keras keeps kernels HWIO; PyTorch wants OIHW (a view, no copy here).
    weight = weight.permute(3, 2, 0, 1)
    if bias is not None:
        bias = keras.ops.convert_to_tensor(bias).to(x.dtype)
    out = F.conv2d(x, weight, bias, stride=tuple(strides), padding=pad,
                   dilation=tuple(dilation_rate), groups=groups)
    if activation is None:
        return out
    if activation is keras.activations.relu:
        return torch.relu(out) if torch.is_grad_enabled() else torch.relu_(out)
    return activation(out)
