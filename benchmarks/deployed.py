"""The deployed call paths of ``benchmarks/run.py``: the multinet model exported
with ``multinet.export`` and run in onnxruntime or OpenVINO.

For one configuration, :func:`prepare_deployed` exports the model (the one the
other call paths of its data format time, or one built the same way) once
into a scratch folder, loads the artifact with ``multinet.deploy.load_artifact``
on the given number of CPU threads and returns a ``Prepared`` whose step runs
the runtime on the same input batch as the other call paths
(``multinet.benchmark.make_inputs``), ready for ``time_interleaved``. The
artifact's files are removed once the runtime has loaded them.

A missing runtime or exporter gives ``status: "unsupported"`` and one line
saying what to install; a failing export or runtime gives ``status: "error"``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
import time

from multinet.benchmark import (
    Prepared,
    UnsupportedConfig,
    build_model,
    environment,
    make_inputs,
)

# Call path -> (export format, the runtime's module).
CALLS = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("openvino", "openvino")}
SCHEMA = "multinet.benchmark/1"


def prepare_deployed(model, *, call: str, folder: str, batch_size: int, image_size: int,
                     data_format: str, dtype: str = "float32", threads: int | None = None,
                     seed: int = 0) -> Prepared:
    """The exported ``model`` in the runtime of ``call`` (see :data:`CALLS`), ready
    to time on a batch of ``batch_size`` random images (``seed``).

    ``model`` is a registered name (built as ``multinet.benchmark.prepare_benchmark``
    builds it) or a built ``keras.Model`` in ``data_format``. The artifact is written
    under ``folder`` (removed again once loaded) with a dynamic batch dimension,
    as ``multinet export`` writes it by default, and verified against
    ``model.predict``. ``threads`` is the runtime's CPU thread count (None: its
    default). The result has the keys of ``prepare_benchmark``'s, with
    ``call`` the runtime's name, and ``runtime``, ``runtime_version``,
    ``runtime_threads``, ``export_format``, ``export_backend``,
    ``export_method``, ``dynamic_batch``, ``export_s`` and
    ``export_max_difference``.
    """
    if call not in CALLS:
        raise ValueError(f"call must be one of {', '.join(CALLS)}, got {call!r}")
    export_format, module_name = CALLS[call]
    result = {
        "schema": SCHEMA,
        "implementation": "multinet",
        "model": model if isinstance(model, str) else model.name,
        "task": "inference",
        "batch_size": int(batch_size),
        "image_size": int(image_size),
        "data_format": data_format,
        "dtype": dtype,
        "call": call,
        **environment(),
        "runtime": module_name,
        "export_format": export_format,
    }
    prepared = Prepared(result)
    try:
        prepared.step = _prepare(model, prepared, export_format=export_format,
                                 module_name=module_name, folder=folder,
                                 batch_size=batch_size, image_size=image_size,
                                 data_format=data_format, dtype=dtype, threads=threads,
                                 seed=seed)
    except Exception as exc:  # noqa: BLE001  (a failed config is a result, not a crash)
        prepared.fail(exc)
    return prepared


def _prepare(model, prepared, *, export_format, module_name, folder, batch_size, image_size,
             data_format, dtype, threads, seed):
    import multinet
    from multinet import deploy

    result = prepared.result
    if dtype != "float32":
        raise UnsupportedConfig(f"the exported artifacts are timed in float32 only, not "
                                f"{dtype}")
    try:
        runtime = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnsupportedConfig(f"{module_name} is not installed (pip install {module_name}; "
                                f"the multinet-keras[export] extra has it)") from exc
    result["runtime_version"] = getattr(runtime, "__version__", None)
    try:
        deploy.plan(export_format)
    except deploy.ExportError as exc:  # no backend here can produce the format
        raise UnsupportedConfig(str(exc)) from exc
    start = time.perf_counter()
    if isinstance(model, str):
        model = build_model(model, image_size=image_size, data_format=data_format, dtype=dtype)
    result["build_s"] = time.perf_counter() - start
    prepared.model = model
    scratch = tempfile.mkdtemp(prefix=f"{model.name}-{export_format}-", dir=folder)
    try:
        path = os.path.join(scratch, model.name + deploy.SUFFIXES[export_format])
        report = multinet.export(model, path, export_format)
        artifact = deploy.load_artifact(path, export_format, threads=threads)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result.update(runtime_version=artifact.version, runtime_threads=artifact.threads,
                  export_backend=report.backend, export_method=report.method,
                  dynamic_batch=report.dynamic_batch, export_s=report.seconds,
                  export_max_difference=report.max_difference)
    images, _ = make_inputs(batch_size, image_size, data_format,
                            classes=int(model.output_shape[-1]), seed=seed)
    return lambda: artifact(images)
