"""Benchmark multinet on the current Keras backend against native PyTorch.

    KERAS_BACKEND=jax python benchmarks/run.py                  # full run
    KERAS_BACKEND=jax python benchmarks/run.py --quick --out /tmp/bench      # smoke run

Writes ``<out>/<backend>.json``: every multinet figure with the native
PyTorch figure for the same model, task, batch and dtype measured in the same
process, and their ratio. ``benchmarks/report.py`` turns the result files
into a markdown table and a chart. Without PyTorch installed the native
baseline is recorded as unavailable and the ratios are null.

``--calls onnxruntime,openvino`` also times the model exported with
``multinet.export`` and run in onnxruntime or OpenVINO (``benchmarks/deployed.py``)
in the same interleaved rounds, so it gets a ratio to native PyTorch too.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import deployed  # noqa: E402
import keras  # noqa: E402
import memory  # noqa: E402
import native  # noqa: E402

from multinet import backend  # noqa: E402
from multinet.benchmark import (  # noqa: E402
    environment,
    prepare_benchmark,
    time_interleaved,
)

CSV_COLUMNS = ("model", "img_size", "batch_size", "backend", "data_format", "dtype", "task",
               "call", "status", "img/s", "native img/s", "ratio", "torch.compile img/s",
               "ratio to torch.compile", "gflops", "achieved gflop/s", "peak fraction",
               "peak memory", "native peak memory", "peak device memory")
MODELS = ("squeezenet1_0", "squeezenet1_1", "vgg16", "resnet50", "mobilenet_v3_large",
          "efficientnet_b0", "convnext_tiny", "vit_b_16")
FORMATS = ("channels_last", "channels_first")
DTYPES = ("float32", "bfloat16", "mixed_bfloat16")
TASKS = ("latency", "throughput", "train")
CALLS = ("compiled", "predict", *deployed.CALLS)
DEFAULT_CALLS = ("compiled", "predict")
# Throughput and training batch per model.
BATCH = {"squeezenet1_0": 16, "squeezenet1_1": 16, "vgg16": 4, "resnet50": 8,
         "mobilenet_v3_large": 16, "efficientnet_b0": 16, "convnext_tiny": 8, "vit_b_16": 4}
DEFAULT_OUT = HERE / "results"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help="latency (inference, batch 1), throughput (inference, "
                             "squeezenet b16, vgg b4, resnet50 b8, mobilenet_v3_large b16, "
                             "efficientnet_b0 b16, convnext_tiny b8, vit_b_16 b4), "
                             "train (forward+backward+SGD)")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--dtypes", default=",".join(DTYPES),
                        help="float32 runs every task; bfloat16 and mixed_bfloat16 run the "
                             "throughput task")
    parser.add_argument("--lowp-models", default="squeezenet1_1",
                        help="models that also run bfloat16 and mixed_bfloat16 (CPU "
                             "bfloat16 is slow; keep full runs short)")
    parser.add_argument("--calls", default=",".join(DEFAULT_CALLS),
                        help="inference call paths: compiled (multinet.compile_inference), "
                             "predict (model.predict), onnxruntime and openvino (the model "
                             "exported with multinet.export, dynamic batch, run in that "
                             "runtime on as many threads as the native baseline; they need "
                             "the export extras, which the bench nox session installs); "
                             "all but compiled run the float32 throughput task only; "
                             f"default {','.join(DEFAULT_CALLS)}")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: squeezenet1_1 only, 32x32 inputs, batch 2, "
                             "1 warm-up and 2 timed calls, training and bfloat16 in the "
                             "last format only, one PyTorch thread")
    parser.add_argument("--no-native", action="store_true", help="skip the PyTorch baseline")
    parser.add_argument("--native-one-thread", action="store_true",
                        help="also time the baseline on one PyTorch thread (for reference)")
    parser.add_argument("--native-compile", action="store_true",
                        help="also time the baseline through torch.compile")
    parser.add_argument("--memory", action="store_true",
                        help="also measure peak resident memory of every configuration and "
                             "of its native baseline, each in a fresh process "
                             "(benchmarks/memory.py)")
    parser.add_argument("--no-peak", action="store_true",
                        help="skip measuring the machine's float32 matmul peak")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    args = parser.parse_args(argv)
    for key in ("models", "tasks", "formats", "dtypes", "calls", "lowp_models"):
        setattr(args, key, [v for v in getattr(args, key).split(",") if v])
    _check(args.tasks, TASKS, "task")
    _check(args.formats, FORMATS, "format")
    _check(args.dtypes, DTYPES, "dtype")
    _check(args.calls, CALLS, "call")
    if args.quick:
        args.models = [m for m in args.models if m == "squeezenet1_1"] or ["squeezenet1_1"]
        args.image_size = min(args.image_size, 32)
        args.warmup, args.repeats = 1, 2
    return args


def _check(values, allowed, what):
    for value in values:
        if value not in allowed:
            raise SystemExit(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")


def configs(args):
    """(model, task, batch, dtype) groups; each gets one native baseline."""
    for model in args.models:
        for task in args.tasks:
            batch = 1 if task == "latency" else (2 if args.quick else BATCH.get(model, 8))
            dtypes = ["float32"]
            if task == "throughput" and (args.quick or model in args.lowp_models):
                dtypes += [d for d in DTYPES if d != "float32"]
            for dtype in dtypes:
                if dtype in args.dtypes:
                    yield model, task, batch, dtype


def paired_ratio(ours: dict, base: dict) -> float | None:
    """Median over rounds of base seconds / our seconds: both were timed in
    the same round, back to back, so load from other processes cancels."""
    if ours.get("status") != "ok" or base.get("status") != "ok":
        return None
    ratios = [b / o for o, b in zip(ours["seconds"], base["seconds"])]
    return statistics.median(ratios) if ratios else None


def run(args) -> dict:
    # The exported artifacts go here; each is removed once its runtime loaded it.
    with tempfile.TemporaryDirectory(prefix="multinet-bench-") as scratch:
        return _run(args, scratch)


def _run(args, scratch: str) -> dict:
    use_native = not args.no_native and native.available()
    # A smoke run only checks the plumbing: one thread keeps it quick on a busy machine.
    threads = 1 if args.quick else native.default_threads()
    if backend.name() == "torch":
        import torch

        torch.set_num_threads(threads)  # the same threads for both sides
    results = []
    started = time.perf_counter()
    peak = None
    if not args.no_peak and native.available():
        peak = native.matmul_peak_gflops(threads, seconds=0.3 if args.quick else 1.5)
    flops = {}
    for model, task, batch, dtype in configs(args):
        mode = "train" if task == "train" else "inference"
        common = dict(batch_size=batch, image_size=args.image_size)
        baselines = {}
        if use_native:
            baselines["torch_eager"] = native.prepare_native(
                model, task=mode, dtype=dtype, threads=threads, **common)
            if args.native_one_thread and threads > 1:
                # PyTorch's OpenMP threads stall when other processes share the
                # cores; this records how fast one thread is (for reference).
                baselines["torch_eager_1_thread"] = native.prepare_native(
                    model, task=mode, dtype=dtype, threads=1, **common)
                baselines["torch_eager_1_thread"].result["implementation"] = (
                    "torch_eager_1_thread")
            if args.native_compile:
                baselines["torch_compile"] = native.prepare_native(
                    model, task=mode, dtype=dtype, threads=threads, compile=True, **common)
        calls = ["train_on_batch"] if mode == "train" else [
            c for c in args.calls
            if c == "compiled" or (task == "throughput" and dtype == "float32")]
        ours = []
        formats = args.formats
        if args.quick and (task == "train" or dtype != "float32"):
            formats = formats[-1:]  # the smoke run compiles as little as it can
        for data_format in formats:
            built = None
            for call in calls:
                print(f"[{backend.name()}] {model} {task} b{batch} {data_format} {dtype} "
                      f"{call}", file=sys.stderr, flush=True)
                if call in deployed.CALLS:
                    prepared = deployed.prepare_deployed(
                        built or model, call=call, folder=scratch, data_format=data_format,
                        dtype=dtype, threads=threads, **common)
                else:
                    prepared = prepare_benchmark(
                        built or model, task=mode, dtype=dtype, data_format=data_format,
                        call="compiled" if call == "train_on_batch" else call, **common)
                prepared.result["model"] = model
                prepared.result["dtype"] = dtype
                built = built or prepared.model
                ours.append(prepared)
        everything = list(baselines.values()) + ours
        time_interleaved(everything, items=batch, warmup=args.warmup, repeats=args.repeats)
        if native.available() and (model, mode) not in flops:
            flops[model, mode] = native.count_flops(model, image_size=args.image_size,
                                                    task=mode)
        for prepared in everything:
            prepared.result["bench_task"] = task
            add_throughput_figures(prepared.result, flops.get((model, mode)), peak)
        if args.memory:
            measure_memory(baselines.get("torch_eager"), ours, args, task=mode, batch=batch,
                           dtype=dtype)
        for prepared in baselines.values():
            results.append(prepared.result)
        eager = baselines["torch_eager"].result if baselines else {}
        for prepared in ours:
            result = prepared.result
            result["native_images_per_s"] = eager.get("images_per_s")
            result["native_threads"] = eager.get("threads")
            result["ratio_to_native"] = paired_ratio(result, eager)
            if "torch_eager_1_thread" in baselines:
                result["ratio_to_native_1_thread"] = paired_ratio(
                    result, baselines["torch_eager_1_thread"].result)
            if "torch_compile" in baselines:
                result["torch_compile_images_per_s"] = (
                    baselines["torch_compile"].result.get("images_per_s"))
                result["ratio_to_torch_compile"] = paired_ratio(
                    result, baselines["torch_compile"].result)
            if eager.get("peak_memory_bytes") and result.get("peak_memory_bytes"):
                result["native_peak_memory_bytes"] = eager["peak_memory_bytes"]
                result["memory_ratio_to_native"] = (
                    result["peak_memory_bytes"] / eager["peak_memory_bytes"])
            results.append(result)
        del baselines, ours, everything
        gc.collect()
        keras.backend.clear_session()
    return {
        "schema": "multinet.benchmark.run/1",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": _command(),
        "quick": bool(args.quick),
        "native_baseline": ("torch_eager" if use_native else
                            "unavailable (PyTorch is not installed)"
                            if not native.available() else "skipped (--no-native)"),
        "timing": ("interleaved: each round calls every configuration of a group once, "
                   "in rotating order; ratio_to_native is the median over rounds of "
                   "native seconds / multinet seconds"),
        "environment": {**environment(), "platform": platform.platform(),
                        "load_average_1min": _load_average()},
        "machine_peak": peak,
        "flops": ("analytic FLOPs of one image (torch.utils.flop_counter on the native "
                  "module: 2 per multiply-add of convolutions and matrix products; training "
                  "3x the forward pass); achieved_gflops = gflops_per_image x images_per_s; "
                  "peak_fraction = achieved_gflops / machine_peak.gflops"),
        "wall_s": round(time.perf_counter() - started, 1),
        "results": [_compact(r) for r in results],
    }


def add_throughput_figures(result: dict, flops: int | None, peak: dict | None) -> None:
    """Achieved GFLOP/s and the fraction of the machine's matmul peak, from the
    analytic FLOPs of one image (``native.count_flops``)."""
    if not flops:
        return
    result["gflops_per_image"] = flops / 1e9
    if result.get("status") == "ok" and result.get("images_per_s"):
        result["achieved_gflops"] = flops / 1e9 * result["images_per_s"]
        if peak:
            result["peak_fraction"] = result["achieved_gflops"] / peak["gflops"]


def measure_memory(baseline, ours, args, *, task: str, batch: int, dtype: str) -> None:
    """Peak resident memory of each configuration, each in a fresh process
    (``benchmarks/memory.py``), into ``result["peak_memory_bytes"]``; not
    measured for the exported artifacts (onnxruntime, openvino)."""
    jobs = [(p, "multinet") for p in ours if p.result.get("status") == "ok"
            and p.result["call"] not in deployed.CALLS]
    if baseline is not None and baseline.result.get("status") == "ok":
        jobs.insert(0, (baseline, "torch_eager"))
    for prepared, implementation in jobs:
        result = prepared.result
        call = result["call"] if result["call"] in ("compiled", "predict") else "compiled"
        figures = memory.measure(result["model"], implementation=implementation, task=task,
                                 batch_size=batch, image_size=args.image_size, dtype=dtype,
                                 data_format=result["data_format"], call=call)
        result.update(figures)


def write_csv(report: dict, path: Path) -> Path:
    """The results as a CSV in timm's style, one row per multinet figure."""
    backend_name = report["environment"]["backend"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for r in report["results"]:
            if r.get("implementation") != "multinet":
                continue
            writer.writerow([
                r["model"], r["image_size"], r["batch_size"], backend_name, r["data_format"],
                r["dtype"], r.get("bench_task", r["task"]), r["call"], r.get("status"),
                r.get("images_per_s"), r.get("native_images_per_s"), r.get("ratio_to_native"),
                r.get("torch_compile_images_per_s"), r.get("ratio_to_torch_compile"),
                r.get("gflops_per_image"), r.get("achieved_gflops"), r.get("peak_fraction"),
                r.get("peak_memory_bytes"), r.get("native_peak_memory_bytes"),
                r.get("peak_device_memory_bytes"),
            ])
    return path


def _load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _command() -> str:
    env = f"KERAS_BACKEND={backend.name()} "
    argv = [os.path.relpath(sys.argv[0]) if sys.argv[0].endswith(".py") else sys.argv[0]]
    return env + "python " + shlex.join(argv + sys.argv[1:])


def _compact(result: dict) -> dict:
    """Round floats to 6 significant digits and drop the environment repeated in
    every row."""
    drop = {"keras_version", "multinet_version", "python_version", "cpu", "cpu_count",
            "schema"}
    out = {}
    for key, value in result.items():
        if key in drop:
            continue
        if isinstance(value, float):
            value = float(f"{value:.6g}")
        out[key] = value
    return out


def main(argv=None) -> Path:
    args = parse_args(argv)
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{backend.name()}.json"
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    write_csv(report, out / f"{backend.name()}.csv")
    ratios = [r["ratio_to_native"] for r in report["results"]
              if r.get("ratio_to_native") is not None]
    summary = f"geomean ratio {statistics.geometric_mean(ratios):.2f}" if ratios else "no ratios"
    print(f"wrote {path} ({len(report['results'])} results, {summary}, "
          f"{report['wall_s']} s)", file=sys.stderr)
    return path


if __name__ == "__main__":
    main()
