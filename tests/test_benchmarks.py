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

import pytest

from multinet import backend
from multinet.benchmark import run_benchmark, summarize, time_callable

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
    import keras

    import multinet

    shape = (3, 32, 32) if data_format == "channels_first" else (32, 32, 3)
    model = multinet.create_model("squeezenet1_1", data_format=data_format, input_shape=shape)
    x = rng.random((2, *shape), dtype="float32")
    forward = backend.compile_inference(model)
    fast = keras.ops.convert_to_numpy(forward(x))
    slow = model.predict(x, verbose=0)
    assert fast.shape == slow.shape == (2, 1000)
    assert abs(fast - slow).max() < 1e-5


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
