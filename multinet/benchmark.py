"""Timing core shared by ``benchmarks/run.py`` and the ``multinet bench`` command.

One public entry point, :func:`run_benchmark`, times one model in one
configuration and returns a plain, JSON-ready dict. :func:`time_callable` is
the loop it uses; the native PyTorch baseline in ``benchmarks/`` times its
modules with the same loop, so both sides are measured the same way.

Only ``keras`` and :mod:`multinet.backend` are used here: importing this
module imports no framework other than the Keras backend in use.
"""

from __future__ import annotations

import contextlib
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable

import keras
import numpy as np

from multinet import backend

TASKS = ("inference", "train")
DTYPES = ("float32", "bfloat16", "mixed_bfloat16")
CALLS = ("compiled", "predict")
SCHEMA = "multinet.benchmark/1"


# The dtype each policy computes in, where it is not float32.
LOW_PRECISION = {"bfloat16": "bfloat16", "mixed_bfloat16": "bfloat16"}


class UnsupportedConfig(Exception):
    """The configuration cannot run here (reported as ``status: "unsupported"``)."""


def time_callable(fn: Callable[[], object], *, items: int, warmup: int = 2,
                  repeats: int = 10, sync: Callable[[object], object] | None = None) -> dict:
    """Time ``fn()``: one first call (compilation, tracing, warm-up), then
    ``warmup - 1`` more untimed calls, then ``repeats`` timed calls.

    Each call processes ``items`` images. ``sync(result)`` waits for
    asynchronous work (JAX dispatch, CUDA streams) before the clock stops.
    Returns images per second (median and spread over the repeats, see
    :func:`summarize`), the per-call ``seconds`` and ``first_call_s``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sync = sync or (lambda result: result)
    start = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        sync(fn())
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        seconds.append(time.perf_counter() - start)
    return {**summarize(seconds, items), "first_call_s": first, "warmup": warmup,
            "repeats": repeats}


def summarize(seconds: list[float], items: int) -> dict:
    """Images per second (median, min, max, quartiles) over per-call ``seconds``."""
    rates = sorted(items / s for s in seconds)
    quartiles = (statistics.quantiles(rates, n=4, method="inclusive")
                 if len(rates) > 1 else [rates[0]] * 3)
    return {
        "images_per_s": statistics.median(rates),
        "images_per_s_min": rates[0],
        "images_per_s_max": rates[-1],
        "images_per_s_q1": quartiles[0],
        "images_per_s_q3": quartiles[2],
        "seconds_per_call_median": statistics.median(seconds),
        "seconds": [round(s, 6) for s in seconds],
    }


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``resource.getrusage``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def environment() -> dict:
    """Where a result was measured: backend, versions, device, threads."""
    gpus = backend.gpu_devices()
    return {
        "backend": backend.name(),
        "framework_version": backend.framework_version(),
        "keras_version": keras.__version__,
        "multinet_version": _multinet_version(),
        "python_version": platform.python_version(),
        "device": gpus[0] if gpus else "cpu",
        "device_kind": "gpu" if gpus else "cpu",
        "cpu": cpu_name(),
        "cpu_count": _cpu_count(),
        "threads": backend.num_threads(),
    }


def cpu_name() -> str:
    """The CPU model name (``lscpu``'s "Model name"), or the platform's guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _multinet_version() -> str:
    import multinet

    return multinet.__version__


@contextlib.contextmanager
def dtype_policy(dtype: str):
    """Build layers under the Keras dtype policy ``dtype`` inside the block."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def make_inputs(batch_size: int, image_size: int, data_format: str, *, classes: int = 1000,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 images in ``data_format`` (values in [0, 1)) and integer labels.

    The native baseline uses the same arrays (channels_first), so both sides
    see the same data.
    """
    rng = np.random.default_rng(seed)
    images = rng.random((batch_size, 3, image_size, image_size), dtype=np.float32)
    if data_format == backend.CHANNELS_LAST:
        images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    labels = rng.integers(0, classes, size=(batch_size,)).astype("int32")
    return images, labels


def run_benchmark(
    model,
    *,
    batch_size: int = 1,
    image_size: int = 224,
    data_format: str | None = None,
    task: str = "inference",
    dtype: str = "float32",
    warmup: int = 2,
    repeats: int = 10,
    call: str = "compiled",
    seed: int = 0,
    **model_kwargs,
) -> dict:
    """Time one multinet model in one configuration; return a JSON-ready dict.

    Arguments:
        model: a registered model name (built here with random weights, in
            ``data_format`` and under the ``dtype`` policy) or a built
            ``keras.Model`` (then ``data_format`` must match its input and
            ``dtype`` only labels the result).
        batch_size, image_size: the input is ``batch_size`` random
            ``image_size`` x ``image_size`` RGB images in ``data_format``.
        data_format: ``"channels_last"``, ``"channels_first"`` or None (the
            Keras global setting).
        task: ``"inference"`` (forward pass) or ``"train"`` (forward,
            backward and an SGD update: ``model.train_on_batch``, which Keras
            compiles on JAX and TensorFlow).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"mixed_bfloat16"`` (Keras
            dtype policies).
        warmup: calls before timing; the first one's time is reported
            separately as ``first_call_s`` (tracing and compilation).
        repeats: timed calls; the figures are over these.
        call: inference call path: ``"compiled"`` times
            ``multinet.compile_inference(model)`` (see
            :func:`multinet.backend.compile_inference`), ``"predict"`` times
            ``model.predict(x, batch_size=batch_size, verbose=0)``.
        seed: seed of the random inputs.
        model_kwargs: passed to ``multinet.create_model`` (e.g. ``ceil_mode``).

    Returns a dict with ``status`` (``"ok"``, ``"unsupported"`` or
    ``"error"``, with ``error`` saying why; "unsupported" only where the
    framework has no kernel for the low-precision dtype on this device, see
    :meth:`Prepared.fail`), the configuration, the timing
    (``images_per_s`` median, ``images_per_s_min``/``_max``,
    ``images_per_s_q1``/``_q3``, ``seconds_per_call_median``,
    ``first_call_s``), ``build_s``, memory (``peak_rss_bytes``, and on a GPU
    ``peak_device_memory_bytes``) and :func:`environment` (backend,
    versions, device name, threads).
    """
    prepared = prepare_benchmark(model, batch_size=batch_size, image_size=image_size,
                                 data_format=data_format, task=task, dtype=dtype, call=call,
                                 seed=seed, **model_kwargs)
    if prepared.step is not None:
        try:
            timing = time_callable(prepared.step, items=batch_size, warmup=warmup,
                                   repeats=repeats, sync=prepared.sync)
        except Exception as exc:  # noqa: BLE001  (a failed config is a result, not a crash)
            prepared.fail(exc)
        else:
            prepared.record(timing)
    return prepared.result


class Prepared:
    """A configuration ready to time: ``step()`` runs one call, ``sync`` waits
    for it, ``result`` holds the configuration and, once :meth:`record` got
    a timing, the figures. ``step`` is None if preparing failed (``result``
    then has ``status`` "unsupported" or "error")."""

    def __init__(self, result: dict, step=None, sync=None):
        self.result, self.step, self.sync = result, step, sync
        self.model = None  # the keras.Model, once built

    def fail(self, exc: Exception) -> None:
        """Record ``exc``: "unsupported" for :class:`UnsupportedConfig` and for
        a framework's own report that it has no kernel for the configuration's
        low-precision dtype here (:func:`multinet.backend.missing_kernel`);
        "error" for anything else."""
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        dtype = LOW_PRECISION.get(self.result.get("dtype", "float32"))
        reason = backend.missing_kernel(exc, dtype) if dtype else None
        if reason:
            message = f"{reason} ({message})"
        unsupported = isinstance(exc, UnsupportedConfig) or reason is not None
        self.result.update(status="unsupported" if unsupported else "error", error=message)
        self.step = None

    def record(self, timing: dict) -> None:
        """Store a :func:`time_callable`-style timing and the memory figures."""
        self.result.update(timing)
        self.result["peak_rss_bytes"] = peak_rss_bytes()
        device_peak = self.peak_device_memory()
        if device_peak is not None:
            self.result["peak_device_memory_bytes"] = device_peak
        self.result["status"] = "ok"

    def peak_device_memory(self):
        return backend.peak_device_memory()


def prepare_benchmark(model, *, batch_size: int = 1, image_size: int = 224,
                      data_format: str | None = None, task: str = "inference",
                      dtype: str = "float32", call: str = "compiled", seed: int = 0,
                      **model_kwargs) -> Prepared:
    """Build what :func:`run_benchmark` times, without timing it (same
    arguments); used to interleave several configurations call by call."""
    from multinet.layers import standardize_data_format

    data_format = standardize_data_format(data_format)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if call not in CALLS:
        raise ValueError(f"call must be one of {CALLS}, got {call!r}")
    result = {
        "schema": SCHEMA,
        "implementation": "multinet",
        "model": model if isinstance(model, str) else model.name,
        "task": task,
        "batch_size": int(batch_size),
        "image_size": int(image_size),
        "data_format": data_format,
        "dtype": dtype,
        "call": call if task == "inference" else "train_on_batch",
        **environment(),
    }
    prepared = Prepared(result)
    try:
        prepared.step, prepared.sync = _prepare(
            model, prepared, batch_size=batch_size, image_size=image_size,
            data_format=data_format, task=task, dtype=dtype, call=call, seed=seed,
            model_kwargs=model_kwargs)
    except Exception as exc:  # noqa: BLE001  (a failed config is a result, not a crash)
        prepared.fail(exc)
    return prepared


def build_model(name: str, *, image_size: int, data_format: str, task: str = "inference",
                dtype: str = "float32", **model_kwargs):
    """The registered model ``name`` as the benchmark times it: random weights,
    ``image_size`` inputs in ``data_format``, built under the ``dtype`` policy;
    for ``task="train"`` its classifier returns logits."""
    from multinet.layers import image_shape
    from multinet.registry import create_model

    kwargs = dict(model_kwargs)
    if task == "train":
        kwargs.setdefault("classifier_activation", None)  # logits, as torch's CE takes
    with dtype_policy(dtype):
        return create_model(name, data_format=data_format,
                            input_shape=image_shape(image_size, data_format), **kwargs)


def _prepare(model, prepared, *, batch_size, image_size, data_format, task, dtype, call, seed,
             model_kwargs):
    result = prepared.result
    backend.reset_peak_device_memory()
    start = time.perf_counter()
    if isinstance(model, str):
        model = build_model(model, image_size=image_size, data_format=data_format,
                            task=task, dtype=dtype, **model_kwargs)
    result["build_s"] = time.perf_counter() - start
    prepared.model = model
    images, labels = make_inputs(batch_size, image_size, data_format,
                                 classes=int(model.output_shape[-1]), seed=seed)
    if task == "inference":
        if call == "compiled":
            forward = backend.compile_inference(model)
            inputs = backend.to_device(images)
            return (lambda: forward(inputs)), backend.block_until_ready
        return (lambda: model.predict(images, batch_size=batch_size, verbose=0)), None
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=model.layers[-1].get_config().get("activation") in (None, "linear")),
    )
    return (lambda: model.train_on_batch(images, labels)), None


def time_interleaved(prepared: list[Prepared], *, items: int, warmup: int = 2,
                     repeats: int = 10) -> None:
    """Time several prepared configurations call by call, in rotating order,
    so that load from other processes hits all of them alike; each one's
    timing goes to its ``record``. A configuration that raises is recorded as
    failed and dropped."""
    live = [p for p in prepared if p.step is not None]
    first = {}
    for p in list(live):
        sync = p.sync or (lambda value: value)
        try:
            start = time.perf_counter()
            sync(p.step())
            first[id(p)] = time.perf_counter() - start
            for _ in range(max(warmup - 1, 0)):
                sync(p.step())
        except Exception as exc:  # noqa: BLE001
            p.fail(exc)
            live.remove(p)
    seconds = {id(p): [] for p in live}
    for round_index in range(repeats):
        shift = round_index % max(len(live), 1)
        for p in live[shift:] + live[:shift]:
            sync = p.sync or (lambda value: value)
            start = time.perf_counter()
            sync(p.step())
            seconds[id(p)].append(time.perf_counter() - start)
    for p in live:
        p.record({**summarize(seconds[id(p)], items), "first_call_s": first[id(p)],
                  "warmup": warmup, "repeats": repeats})


