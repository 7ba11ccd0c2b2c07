"""The benchmark harness runs, writes valid results and renders its report.

A smoke test only: tiny inputs, two timed calls, no assertion on speed. The
native PyTorch baseline runs where PyTorch is installed and is recorded as
unavailable elsewhere.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import sys
import tempfile
import types
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
    # the two images answer apart, far beyond the 1e-5 tolerance below
    assert rel_error(slow[0], slow[1]) > 1e-3
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

    with (tmp_path / f"{backend.name()}.csv").open(encoding="utf-8", newline="") as handle:
        table_rows = list(csv.DictReader(handle))
    assert tuple(table_rows[0]) == run.CSV_COLUMNS
    assert len(table_rows) == len(ours)
    assert {row["backend"] for row in table_rows} == {backend.name()}
    if HAS_TORCH:
        peak = data["machine_peak"]["gflops"]
        assert peak > 0
        for result in ours:
            if result["dtype"] != "float32":
                continue
            # squeezenet1_1 at 32x32: 2 x multiply-adds, training 3x the forward pass
            forward = 2 * squeezenet_macs(32)
            expected = forward * (3 if result["bench_task"] == "train" else 1) / 1e9
            assert result["gflops_per_image"] == pytest.approx(expected, rel=1e-3)
            assert result["achieved_gflops"] == pytest.approx(
                result["gflops_per_image"] * result["images_per_s"], rel=1e-3)
            assert result["peak_fraction"] == pytest.approx(
                result["achieved_gflops"] / peak, rel=1e-3)
        row = next(r for r in table_rows if r["dtype"] == "float32")
        assert float(row["gflops"]) > 0 and float(row["peak fraction"]) > 0

    md_path, png_path = report.main(["--results", str(tmp_path)])
    table = md_path.read_text(encoding="utf-8")
    assert f"| {backend.name()} | squeezenet1_1 | throughput | 2 |" in table
    assert "| GFLOP/s (of peak) | peak MB (native) |" in table
    merged = (tmp_path / "results.csv").read_text(encoding="utf-8").splitlines()
    assert merged[0].split(",") == list(run.CSV_COLUMNS) and len(merged) == len(ours) + 1
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def squeezenet_macs(size: int) -> int:
    """Multiply-adds of squeezenet1_1's convolutions at ``size`` x ``size``, counted
    here from the architecture (REFERENCE.md), independently of any FLOP counter."""
    def out(n, k, s):
        return (n - k) // s + 1

    def pool(n):  # 3x3 stride 2, ceil mode
        return -(-(n - 3) // 2) + 1

    fires = [(64, 16, 64), (128, 16, 64), (128, 32, 128), (256, 32, 128),
             (256, 48, 192), (384, 48, 192), (384, 64, 256), (512, 64, 256)]
    n = out(size, 3, 2)
    macs = n * n * 64 * 3 * 9
    n = pool(n)
    for index, (cin, squeeze, expand) in enumerate(fires):
        if index in (2, 4):
            n = pool(n)
        macs += n * n * (cin * squeeze + squeeze * expand + squeeze * expand * 9)
    return macs + n * n * 512 * 1000


@pytest.mark.skipif(not HAS_TORCH, reason="the FLOP count runs on the native PyTorch module")
@pytest.mark.parametrize("name, gmacs", [("resnet50", 4.089), ("vit_b_16", 17.564),
                                         ("squeezenet1_1", squeezenet_macs(224) / 1e9)])
def test_analytic_flops_match_published_counts(name, gmacs):
    """torchvision publishes 4.09 and 17.56 GFLOPS (multiply-adds) for resnet50 and
    vit_b_16 at 224; the count must see attention's products too (PyTorch's counter
    misses its CPU attention kernel on its own)."""
    native = _load("native")
    assert native.count_flops(name) / 2e9 == pytest.approx(gmacs, rel=1e-3)
    assert native.count_flops(name, task="train") == 3 * native.count_flops(name)


@pytest.mark.skipif(not HAS_TORCH, reason="the memory baseline is native PyTorch")
def test_memory_is_measured_for_both_sides_in_fresh_processes(tmp_path):
    run = _load("run")
    path = run.main(["--quick", "--out", str(tmp_path), "--tasks", "throughput",
                     "--formats", "channels_last", "--calls", "compiled", "--dtypes", "float32",
                     "--memory", "--no-peak"])
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["machine_peak"] is None
    native_row = next(r for r in data["results"] if r["implementation"] == "torch_eager")
    ours = next(r for r in data["results"] if r["implementation"] == "multinet")
    for row in (native_row, ours):
        assert "peak_memory_error" not in row, row.get("peak_memory_error")
        assert 0 < row["peak_memory_bytes"] < row["peak_rss_bytes"]
        assert row["base_rss_bytes"] + row["peak_memory_bytes"] == row["peak_rss_bytes"]
    assert ours["native_peak_memory_bytes"] == native_row["peak_memory_bytes"]
    assert ours["memory_ratio_to_native"] == pytest.approx(
        ours["peak_memory_bytes"] / native_row["peak_memory_bytes"], rel=1e-3)


DEPLOYED_RUNTIMES = ("onnxruntime", "openvino")


def _deployed_skip_reason():
    """Why this environment cannot time exported artifacts, or None."""
    from multinet import deploy

    missing = [m for m in DEPLOYED_RUNTIMES if importlib.util.find_spec(m) is None]
    if missing:
        return f"needs the multinet-keras[export] extra; missing {', '.join(missing)}"
    for export_format in ("onnx", "openvino"):
        try:
            deploy.plan(export_format)
        except deploy.ExportError as exc:
            return str(exc)
    return None


def test_deployed_calls_time_exported_artifacts(tmp_path, monkeypatch, numpy_initial_weights):
    """--calls onnxruntime,openvino: the model exported in each data format, run in
    its runtime on the harness' threads, timed in the same rounds as the native
    baseline; the artifacts are gone afterwards. Also collected by the export
    nox session, where nothing may skip."""
    reason = _deployed_skip_reason()
    if reason:
        if os.environ.get("MULTINET_EXPORT_REQUIRED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    import onnxruntime
    import openvino

    run = _load("run")
    report = _load("report")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "out"
    path = run.main(["--quick", "--out", str(out), "--tasks", "throughput",
                     "--dtypes", "float32", "--calls", "onnxruntime,openvino", "--no-peak"])
    # The run's folder and every artifact are gone (other libraries' own temporary
    # files, such as TensorFlow's generated code, may remain).
    assert not list(scratch.glob("multinet-bench-*"))
    assert not [f for f in scratch.rglob("*") if f.suffix in (".onnx", ".xml", ".bin")]
    data = json.loads(path.read_text(encoding="utf-8"))
    ours = [r for r in data["results"] if r["implementation"] == "multinet"]
    seen = sorted((r["call"], r["data_format"]) for r in ours)
    assert seen == sorted((c, f) for c in DEPLOYED_RUNTIMES
                          for f in ("channels_first", "channels_last"))
    versions = {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__}
    for r in ours:
        assert r["status"] == "ok", r.get("error")
        assert r["bench_task"] == "throughput" and r["batch_size"] == 2
        assert math.isfinite(r["images_per_s"]) and r["images_per_s"] > 0
        assert len(r["seconds"]) == 2
        assert r["runtime"] == r["call"] and r["runtime_version"] == versions[r["call"]]
        assert r["runtime_threads"] == 1  # --quick: one thread, as the native baseline
        assert r["export_format"] == {"onnxruntime": "onnx", "openvino": "openvino"}[r["call"]]
        assert r["dynamic_batch"] is True
        assert 0 <= r["export_max_difference"] < 1e-4
        if HAS_TORCH:
            assert r["ratio_to_native"] > 0
            assert r["native_threads"] == r["runtime_threads"]
        else:
            assert r["ratio_to_native"] is None
    natives = [r for r in data["results"] if r["implementation"] == "torch_eager"]
    assert len(natives) == (1 if HAS_TORCH else 0)

    with (out / f"{backend.name()}.csv").open(encoding="utf-8", newline="") as handle:
        table_rows = list(csv.DictReader(handle))
    assert sorted((row["call"], row["data_format"]) for row in table_rows) == seen
    assert all(row["status"] == "ok" and float(row["img/s"]) > 0 for row in table_rows)

    runs = report.load(out)
    table = report.deployment(runs)
    assert "| native img/s | onnxruntime | openvino | fastest |" in table
    for data_format in ("NHWC", "NCHW"):
        line = next(line for line in table.splitlines()
                    if line.startswith(f"| {backend.name()} | squeezenet1_1 | 2 | {data_format} |"))
        fastest = line.rstrip(" |").rsplit("| ", 1)[-1]
        assert fastest in (("native eager", *DEPLOYED_RUNTIMES) if HAS_TORCH else ("n/a",))
    every = report.markdown(runs)
    assert (f"run in onnxruntime {onnxruntime.__version__} (1 thread), openvino "
            f"{openvino.__version__} (1 thread)") in every
    assert f"| {backend.name()} | squeezenet1_1 | throughput | 2 | channels_last | float32 " \
           f"| onnxruntime |" in every

    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{report.README_START}\nold\n{report.README_END}\nb\n")
    report.main(["--results", str(out), "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith(f"a\n{report.README_START}\n") and text.endswith(
        f"{report.README_END}\nb\n")
    assert "old" not in text and table in text and data["command"] in text
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- deployment:start -->"):
        report.main(["--results", str(out), "--readme", str(readme)])


def test_missing_runtime_or_exporter_is_unsupported(tmp_path, monkeypatch):
    """No onnxruntime or OpenVINO: those rows say so in one line, the rest runs."""
    run = _load("run")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    monkeypatch.setitem(sys.modules, "openvino", None)
    path = run.main(["--quick", "--out", str(tmp_path), "--tasks", "throughput",
                     "--dtypes", "float32", "--formats", "channels_last", "--no-peak",
                     "--calls", "compiled,onnxruntime,openvino"])
    data = json.loads(path.read_text(encoding="utf-8"))
    ours = {r["call"]: r for r in data["results"] if r["implementation"] == "multinet"}
    assert set(ours) == {"compiled", "onnxruntime", "openvino"}
    assert ours["compiled"]["status"] == "ok"
    for name in DEPLOYED_RUNTIMES:
        r = ours[name]
        assert r["status"] == "unsupported"
        assert r["error"] == (f"UnsupportedConfig: {name} is not installed (pip install {name}; "
                              f"the multinet-keras[export] extra has it)")
        assert "images_per_s" not in r and r["ratio_to_native"] is None
    with (tmp_path / f"{backend.name()}.csv").open(encoding="utf-8", newline="") as handle:
        statuses = {row["call"]: row["status"] for row in csv.DictReader(handle)}
    assert statuses == {"compiled": "ok", "onnxruntime": "unsupported",
                        "openvino": "unsupported"}

    # A runtime that imports, but no backend here can produce its format.
    from multinet import deploy

    deployed = _load("deployed")
    monkeypatch.setitem(sys.modules, "onnxruntime", types.ModuleType("onnxruntime"))
    reason = "onnx export from the torch backend needs onnx (pip install onnx)"

    def cannot(export_format, backend_name=None):
        raise deploy.ExportError(reason)

    monkeypatch.setattr(deploy, "plan", cannot)
    prepared = deployed.prepare_deployed("squeezenet1_1", call="onnxruntime",
                                         folder=str(tmp_path), batch_size=2, image_size=32,
                                         data_format="channels_last")
    assert prepared.step is None and prepared.model is None  # nothing built or exported
    assert prepared.result["status"] == "unsupported"
    assert prepared.result["error"] == f"UnsupportedConfig: {reason}"
