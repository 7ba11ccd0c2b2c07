"""The benchmark harness runs, writes valid results and renders its report.

A smoke test only: tiny inputs, two timed calls, no assertion on speed. The
native PyTorch baseline runs where PyTorch is installed and is recorded as
unavailable elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import keras
import pytest
from keras import ops

from multinet import backend
from multinet.benchmark import Prepared, dtype_policy, run_benchmark, summarize, time_callable

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _load(name):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_callable_counts_calls_and_summarizes():
    calls = []
    timing = time_callable(lambda: calls.append(1), items=4, warmup=3, repeats=5)
    assert len(calls) == 3 + 5
    assert len(timing["seconds"]) == 5
    assert timing["images_per_s_min"] <= timing["images_per_s"] <= timing["images_per_s_max"]
    assert timing["first_call_s"] >= 0
    summary = summarize([0.5, 1.0, 2.0], items=2)
    assert summary["images_per_s"] == pytest.approx(2.0)
    assert summary["images_per_s_min"] == pytest.approx(1.0)
    assert summary["images_per_s_max"] == pytest.approx(4.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"task": "fit"}, "task"),
    ({"dtype": "float16"}, "dtype"),
    ({"call": "eager"}, "call"),
    ({"data_format": "nchw"}, "data_format"),
])
def test_run_benchmark_rejects_unknown_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_benchmark("squeezenet1_1", image_size=32, **kwargs)


def test_run_benchmark_result_is_json_ready(data_format):
    result = run_benchmark("squeezenet1_1", batch_size=2, image_size=32,
                           data_format=data_format, warmup=1, repeats=2)
    assert result["status"] == "ok", result.get("error")
    assert result["backend"] == backend.name()
    assert result["data_format"] == data_format
    assert result["device"] == (backend.gpu_devices() or ("cpu",))[0]
    assert result["images_per_s"] > 0 and result["peak_rss_bytes"] > 0
    json.loads(json.dumps(result))


def test_compiled_inference_matches_predict(data_format, rng):
    from helpers import distinct_images, rel_error

    import multinet

    x = distinct_images(rng, 32, data_format)
    model = multinet.create_model("squeezenet1_1", data_format=data_format,
                                  input_shape=x.shape[1:], classifier_activation=None)
    forward = backend.compile_inference(model)
    fast = keras.ops.convert_to_numpy(forward(x))
    slow = model.predict(x, verbose=0)
    assert fast.shape == slow.shape == (2, 1000)
    assert rel_error(slow[0], slow[1]) > 0.05
    assert rel_error(fast, slow) < 1e-5


class _Solve(keras.layers.Layer):
    """Solves a 3x3 system in the layer's dtype: no framework has a bfloat16
    linear solver on CPU."""

    def call(self, x):
        matrix = ops.eye(3, dtype=x.dtype) * 2 + ops.mean(x) * 0
        return ops.mean(x, axis=(1, 2)) + ops.sum(ops.linalg.solve(matrix, matrix))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


class _Raise(keras.layers.Layer):
    """Raises ``error`` when called."""

    def __init__(self, error, **kwargs):
        super().__init__(**kwargs)
        self.error = error

    def call(self, x):
        raise self.error

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


def _tiny_model(make_layer, dtype):
    """Images in, ``make_layer()`` (built under the ``dtype`` policy) out."""
    with dtype_policy(dtype):
        inputs = keras.Input((8, 8, 3))
        return keras.Model(inputs, make_layer()(inputs))


def _bfloat16_solve_error():
    """The error this backend raises for a bfloat16 solve here, or None."""
    try:
        ops.linalg.solve(ops.eye(3, dtype="bfloat16"), ops.eye(3, dtype="bfloat16"))
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


@pytest.mark.parametrize("task,call", [("inference", "compiled"), ("inference", "predict"),
                                       ("train", "compiled")])
def test_missing_bfloat16_kernel_is_unsupported(task, call):
    if _bfloat16_solve_error() is None:
        pytest.skip("this device has a bfloat16 linear solver")
    model = _tiny_model(_Solve, "bfloat16")
    result = run_benchmark(model, batch_size=2, image_size=8, data_format="channels_last",
                           task=task, dtype="bfloat16", call=call, warmup=1, repeats=1)
    assert result["status"] == "unsupported", result.get("error")
    assert result["error"].startswith(f"{backend.name()} has no bfloat16 kernel")


def test_missing_kernel_in_a_float32_run_is_an_error():
    exc = _bfloat16_solve_error()
    if exc is None:
        pytest.skip("this device has a bfloat16 linear solver")
    for dtype, status in (("bfloat16", "unsupported"), ("mixed_bfloat16", "unsupported"),
                          ("float32", "error")):
        prepared = Prepared({"dtype": dtype})
        prepared.fail(exc)
        assert prepared.result["status"] == status, dtype


@pytest.mark.parametrize("error", [
    RuntimeError("bfloat16 weights could not be cast: not supported"),
    NotImplementedError("this layer has no bfloat16 support (not implemented)"),
    ValueError('"lu_cpu" not implemented for \'BFloat16\''),  # the words, not torch's error
    TypeError("Could not find a bfloat16 variable: no registered converter"),
])
def test_other_errors_mentioning_bfloat16_are_errors(error):
    model = _tiny_model(lambda: _Raise(error), "bfloat16")
    result = run_benchmark(model, batch_size=2, image_size=8, data_format="channels_last",
                           dtype="bfloat16", warmup=1, repeats=1)
    assert result["status"] == "error", result.get("error")
    assert result["error"].startswith(type(error).__name__)


def test_quick_run_writes_results_and_report(tmp_path):
    run = _load("run")
    report = _load("report")
    path = run.main([
        "--quick", "--out", str(tmp_path), "--tasks", "throughput,train",
        "--dtypes", "float32,bfloat16", "--calls", "compiled,predict",
    ])
    data = json.loads(path.read_text(encoding="utf-8"))
    assert path.name == f"{backend.name()}.json"
    assert data["environment"]["backend"] == backend.name()
    assert data["command"].startswith(f"KERAS_BACKEND={backend.name()} ")
    ours = [r for r in data["results"] if r["implementation"] == "multinet"]
    natives = [r for r in data["results"] if r["implementation"] != "multinet"]
    seen = {(r["bench_task"], r["data_format"], r["dtype"], r["call"]) for r in ours}
    assert ("throughput", "channels_last", "float32", "compiled") in seen
    assert ("throughput", "channels_first", "float32", "predict") in seen
    assert ("throughput", "channels_first", "bfloat16", "compiled") in seen
    assert ("train", "channels_first", "float32", "train_on_batch") in seen
    for result in ours:
        assert result["status"] in ("ok", "unsupported"), result.get("error")
        if result["status"] == "unsupported":  # the framework said it has no kernel
            assert result["dtype"] != "float32" and " has no bfloat16 kernel" in result["error"]
        if result["dtype"] == "float32":
            assert result["status"] == "ok"
            assert math.isfinite(result["images_per_s"]) and result["images_per_s"] > 0
    if HAS_TORCH:
        assert data["native_baseline"] == "torch_eager"
        assert {r["bench_task"] for r in natives} == {"throughput", "train"}
        assert all(r["ratio_to_native"] > 0 for r in ours
                   if r["dtype"] == "float32" and r["status"] == "ok")
    else:
        assert data["native_baseline"].startswith("unavailable")
        assert not natives
        assert all(r["ratio_to_native"] is None for r in ours)

    md_path, png_path = report.main(["--results", str(tmp_path)])
    table = md_path.read_text(encoding="utf-8")
    assert f"| {backend.name()} | squeezenet1_1 | throughput | 2 |" in table
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
