"""Merge benchmark result files into a markdown table and a PNG chart.

    python benchmarks/report.py                       # benchmarks/results/*.json
    python benchmarks/report.py --results DIR --out DIR
    python benchmarks/report.py --results benchmarks/results/deployed --readme docs/export.md

Writes ``report.md`` (one row per multinet figure: img/s, native PyTorch
img/s from the same run and their ratio; where the run timed exported artifacts
in onnxruntime or OpenVINO, a table of which deployment is fastest) and
``report.png`` (the ratios). ``--readme`` instead rewrites the deployment
table of a README between its ``<!-- deployment:start -->`` and
``<!-- deployment:end -->`` markers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASK_ORDER = {"latency": 0, "throughput": 1, "train": 2}
BACKEND_ORDER = {"tensorflow": 0, "jax": 1, "torch": 2}
COLORS = {"tensorflow": "tab:orange", "jax": "tab:green", "torch": "tab:red"}
CALL_ORDER = {"compiled": 0, "predict": 1, "onnxruntime": 2, "openvino": 3}
DEPLOYED = ("onnxruntime", "openvino")
SHORT_FORMAT = {"channels_last": "NHWC", "channels_first": "NCHW"}
README_START = "<!-- deployment:start -->"
README_END = "<!-- deployment:end -->"


def load(results_dir: Path) -> list[dict]:
    """The run files in ``results_dir`` (``<backend>.json``), sorted by backend."""
    runs = []
    for path in sorted(results_dir.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("schema") == "multinet.benchmark.run/1":
            runs.append(data)
    return sorted(runs, key=lambda r: BACKEND_ORDER.get(r["environment"]["backend"], 9))


def rows(runs: list[dict]) -> list[dict]:
    out = []
    for run in runs:
        for result in run["results"]:
            if result.get("implementation") != "multinet":
                continue
            out.append({**result, "backend": run["environment"]["backend"]})
    out.sort(key=lambda r: (BACKEND_ORDER.get(r["backend"], 9), r["model"],
                            TASK_ORDER.get(r.get("bench_task"), 9), r["dtype"] != "float32",
                            r["dtype"], CALL_ORDER.get(r["call"], 9), r["data_format"]))
    return out


def _fmt(value, digits=2):
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def _native(r) -> str:
    text = _fmt(r.get("native_images_per_s"))
    threads = r.get("native_threads")
    return f"{text} ({threads} thr)" if threads and text != "n/a" else text


def _ratio(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _gflops(r) -> str:
    if r.get("achieved_gflops") is None:
        return "n/a"
    text = _fmt(r["achieved_gflops"], 1)
    return text + (f" ({100 * r['peak_fraction']:.0f}%)" if r.get("peak_fraction") else "")


def _memory(r) -> str:
    if r.get("peak_memory_bytes") is None:
        return "n/a"
    text = f"{r['peak_memory_bytes'] / 2**20:.0f}"
    native = r.get("native_peak_memory_bytes")
    return text + (f" ({native / 2**20:.0f})" if native else "")


def machine_peaks(runs: list[dict]) -> list[str]:
    lines = []
    for run in runs:
        peak = run.get("machine_peak")
        if peak:
            lines.append(f"- {run['environment']['backend']} run: float32 matmul peak "
                         f"{peak['gflops']:.0f} GFLOP/s ({peak['kernel']}, {peak['size']}x"
                         f"{peak['size']}, {peak['threads']} threads)")
    return lines


def runtimes(runs: list[dict]) -> list[str]:
    """One line per run that timed exported artifacts: each runtime's version and threads."""
    lines = []
    for run in runs:
        seen = {}
        for r in run["results"]:
            if r.get("call") in DEPLOYED and r.get("runtime_version"):
                threads = r.get("runtime_threads")
                plural = "" if threads == 1 else "s"
                seen.setdefault(r["call"], f"{r['call']} {r['runtime_version']}"
                                + (f" ({threads} thread{plural})" if threads else ""))
        if seen:
            lines.append(f"- {run['environment']['backend']} run: exported with "
                         f"multinet.export, run in " + ", ".join(seen.values()))
    return lines


def merged_csv(results_dir: Path, path: Path) -> Path | None:
    """Every ``<backend>.csv`` in ``results_dir`` as one CSV (one header)."""
    header, body = None, []
    for csv_path in sorted(results_dir.glob("*.csv")):
        if csv_path.name == path.name:
            continue
        lines = csv_path.read_text(encoding="utf-8").splitlines()
        if not lines:
            continue
        header = header or lines[0]
        body += lines[1:]
    if header is None:
        return None
    path.write_text("\n".join([header, *body]) + "\n", encoding="utf-8")
    return path


def markdown(runs: list[dict]) -> str:
    lines = []
    for run in runs:
        env = run["environment"]
        lines.append(
            f"- **{env['backend']}** {env['framework_version']}, Keras {env['keras_version']}, "
            f"{env['device']} ({env['cpu']}, {env['cpu_count']} cores), native baseline: "
            f"{run['native_baseline']}; `{run['command']}` ({run['wall_s']} s, "
            f"{run['created']})")
    lines += machine_peaks(runs)
    lines += runtimes(runs)
    lines += [
        "",
        "| backend | model | task | batch | format | dtype | call | img/s (min-max) "
        "| native img/s | ratio | vs torch.compile | GFLOP/s (of peak) | peak MB (native) "
        "| first call s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows(runs):
        if r.get("status") == "ok":
            speed = (f"{_fmt(r['images_per_s'])} ({_fmt(r['images_per_s_min'])}-"
                     f"{_fmt(r['images_per_s_max'])})")
            ratio = r.get("ratio_to_native")
            ratio_text = "n/a" if ratio is None else f"**{ratio:.2f}x**"
            first = _fmt(r.get("first_call_s"), 1)
        else:
            speed, ratio_text, first = r.get("status", "error"), "n/a", "n/a"
        lines.append(
            f"| {r['backend']} | {r['model']} | {r.get('bench_task', r['task'])} | "
            f"{r['batch_size']} | {r['data_format']} | {r['dtype']} | {r['call']} | {speed} | "
            f"{_native(r)} | {ratio_text} | {_ratio(r.get('ratio_to_torch_compile'))} | "
            f"{_gflops(r)} | {_memory(r)} | {first} |")
    unsupported = [r for r in rows(runs) if r.get("status") != "ok"]
    if unsupported:
        lines.append("")
        for r in unsupported:
            lines.append(f"- {r['backend']} {r['model']} {r['dtype']} {r['data_format']} "
                         f"{r['call']}: {r['status']}: {r.get('error', '')}")
    return "\n".join(lines) + "\n"


def summary(runs: list[dict], dtype: str = "float32") -> str:
    """One row per model, task and call path; one column per backend and data
    format; each cell "multinet img/s (ratio to native; ratio to native on one
    thread, where measured)"."""
    data = [r for r in rows(runs) if r["dtype"] == dtype]
    one_thread = {}
    for run in runs:
        for r in run["results"]:
            if r.get("implementation") == "torch_eager_1_thread" and r.get("status") == "ok":
                key = (run["environment"]["backend"], r["model"], r.get("bench_task"),
                       r["dtype"])
                one_thread[key] = r["images_per_s"]
    columns = sorted({(r["backend"], r["data_format"]) for r in data},
                     key=lambda k: (BACKEND_ORDER.get(k[0], 9), k[1]))
    keys = []
    for r in data:
        key = (r["model"], r.get("bench_task", r["task"]), r["batch_size"], r["call"])
        if key not in keys:
            keys.append(key)
    short = {"channels_last": "NHWC", "channels_first": "NCHW"}
    lines = [
        "| model | task | batch | call | native img/s | "
        + " | ".join(f"{b} {short.get(f, f)}" for b, f in columns) + " |",
        "|---|---|---|---|---|" + "---|" * len(columns),
    ]
    for model, task, batch, call in keys:
        cells, natives = [], []
        for backend_name, data_format in columns:
            match = [r for r in data if r["backend"] == backend_name
                     and r["data_format"] == data_format and r["model"] == model
                     and r.get("bench_task", r["task"]) == task and r["call"] == call]
            if not match:
                cells.append("")
                continue
            r = match[0]
            if r.get("status") != "ok":
                cells.append(r.get("status", "error"))
                continue
            if r.get("native_images_per_s") is not None:
                one = one_thread.get((r["backend"], model, task, r["dtype"]))
                natives.append(f"{_fmt(r['native_images_per_s'])}"
                               + (f" / {_fmt(one)}" if one else "") + f" ({backend_name})")
            ratio = r.get("ratio_to_native")
            text = f"{_fmt(r['images_per_s'])} " + (
                "(n/a)" if ratio is None else f"(**{ratio:.2f}x**")
            if ratio is not None and r.get("ratio_to_native_1_thread") is not None:
                text += f"; {r['ratio_to_native_1_thread']:.2f}x"
            cells.append(text + (")" if ratio is not None else ""))
        native_text = ", ".join(dict.fromkeys(natives)) or "n/a"
        lines.append(f"| {model} | {task} | {batch} | {call} | {native_text} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def deployment(runs: list[dict]) -> str:
    """Which deployment is fastest: one row per backend, model, batch and data
    format of the float32 throughput task where the run timed an exported
    artifact; one column per call path, each "img/s (ratio to native)", and the
    fastest by ratio to native PyTorch eager (timed in the same rounds), native
    included. Empty where no run timed an exported artifact."""
    data = [r for r in rows(runs) if r["dtype"] == "float32"
            and r.get("bench_task", r["task"]) == "throughput"]
    groups = {}
    for r in data:
        key = (r["backend"], r["model"], r["batch_size"], r["data_format"])
        groups.setdefault(key, {})[r["call"]] = r
    groups = {k: v for k, v in groups.items() if any(c in v for c in DEPLOYED)}
    if not groups:
        return ""
    calls = [c for c in CALL_ORDER if any(c in g for g in groups.values())]
    lines = [
        "| backend | model | batch | format | native img/s | " + " | ".join(calls)
        + " | fastest |",
        "|---|---|---|---|---|" + "---|" * len(calls) + "---|",
    ]
    for (backend_name, model, batch, data_format), by_call in groups.items():
        cells, ratios = [], {}
        natives = [r.get("native_images_per_s") for r in by_call.values()]
        native = next((n for n in natives if n is not None), None)
        if native is not None:
            ratios["native eager"] = 1.0
        for call in calls:
            r = by_call.get(call)
            if r is None:
                cells.append("")
            elif r.get("status") != "ok":
                cells.append(r.get("status", "error"))
            else:
                ratio = r.get("ratio_to_native")
                cells.append(f"{_fmt(r['images_per_s'])}"
                             + ("" if ratio is None else f" ({ratio:.2f}x)"))
                if ratio is not None:
                    ratios[call] = ratio
        fastest = max(ratios, key=ratios.get) if len(ratios) > 1 else "n/a"
        lines.append(f"| {backend_name} | {model} | {batch} | "
                     f"{SHORT_FORMAT.get(data_format, data_format)} | {_fmt(native)} | "
                     + " | ".join(cells) + f" | {fastest} |")
    return "\n".join(lines) + "\n"


def readme_block(runs: list[dict], results: str, target: str = "docs/export.md") -> str:
    """The deployment table (:func:`deployment`) with where and how it was
    measured, between the markers; ``results`` names the results folder and
    ``target`` the file the block goes into."""
    lines = [README_START,
             f"<!-- generated from {results}/*.json by python benchmarks/report.py "
             f"--results {results} --readme {target}: do not edit -->", "",
             deployment(runs).rstrip("\n"), ""]
    for run in runs:
        env = run["environment"]
        versions = {}
        for r in run["results"]:
            if r.get("call") in DEPLOYED and r.get("runtime_version"):
                versions.setdefault(r["call"], (r["runtime_version"], r.get("runtime_threads")))
        natives = {r.get("threads") for r in run["results"]
                   if r.get("implementation") == "torch_eager"}
        runtimes_text = ", ".join(
            f"{call} {version}" + (f" on {threads} threads" if threads else "")
            for call, (version, threads) in versions.items())
        native_text = (f"native PyTorch eager on {natives.pop()} threads"
                       if len(natives) == 1 else "native PyTorch eager")
        lines.append(
            f"{env['backend']} backend ({env['framework_version']}, Keras "
            f"{env['keras_version']}), {runtimes_text}, {native_text}; {env['cpu']}, "
            f"{env['cpu_count']} cores, 1-minute load average {env.get('load_average_1min')} "
            f"at the end of the run ({run['created'][:10]}, {run['wall_s']:.0f} s): "
            f"`{run['command']}`")
    return "\n".join([*lines, "", README_END])


def with_readme_block(text: str, block: str) -> str:
    """``text`` with what lies between the deployment markers replaced by ``block``."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"no {README_START} ... {README_END} block")
    return text[:start] + block + text[end + len(README_END):]


def chart(runs: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [r for r in rows(runs) if r.get("ratio_to_native") is not None
            and r["dtype"] == "float32" and r["call"] in ("compiled", "train_on_batch")]
    labels = sorted({(r["model"], r.get("bench_task", r["task"])) for r in data},
                    key=lambda k: (k[0], TASK_ORDER.get(k[1], 9)))
    series = sorted({(r["backend"], r["data_format"]) for r in data},
                    key=lambda k: (BACKEND_ORDER.get(k[0], 9), k[1]))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels) + 2), 4.5))
    width = 0.8 / max(len(series), 1)
    for i, (backend_name, data_format) in enumerate(series):
        values = []
        for model, task in labels:
            match = [r["ratio_to_native"] for r in data if r["backend"] == backend_name
                     and r["data_format"] == data_format and r["model"] == model
                     and r.get("bench_task", r["task"]) == task]
            values.append(match[0] if match else 0.0)
        positions = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(positions, values, width, label=f"{backend_name} {data_format}",
               color=COLORS.get(backend_name), edgecolor="black", linewidth=0.4,
               alpha=1.0 if data_format == "channels_first" else 0.55,
               hatch="//" if data_format == "channels_first" else None)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([f"{m}\n{t}" for m, t in labels], fontsize=8)
    ax.set_ylabel("img/s ratio to native (same run, log scale)")
    ax.set_yscale("log")
    top = max([1.5] + [r["ratio_to_native"] * 1.3 for r in data])
    ticks = [t for t in (0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64) if t <= top]
    ax.set_yticks(ticks)
    ax.set_ylim(0.1, top)
    ax.set_yticklabels([f"{t:g}x" for t in ticks])
    ax.minorticks_off()
    ax.set_title("multinet / native PyTorch eager, float32 (higher is better)", fontsize=10)
    if series:
        ax.legend(fontsize=7, ncol=min(3, len(series)))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv=None) -> tuple[Path, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--out", default=None, help="defaults to --results")
    parser.add_argument("--readme", default=None,
                        help="only rewrite this file's deployment table (between "
                             f"{README_START} and {README_END}) from --results")
    args = parser.parse_args(argv)
    results_dir = Path(args.results)
    out = Path(args.out or results_dir)
    runs = load(results_dir)
    if not runs:
        raise SystemExit(f"no result files in {results_dir}")
    if args.readme:
        readme = Path(args.readme)
        if not deployment(runs):
            raise SystemExit(f"no onnxruntime or openvino results in {results_dir}")
        try:
            text = with_readme_block(readme.read_text(encoding="utf-8"),
                                     readme_block(runs, _relative(results_dir),
                                                  _relative(readme)))
        except ValueError as exc:
            raise SystemExit(f"{readme}: {exc}") from None
        readme.write_text(text, encoding="utf-8")
        print(f"wrote the deployment table of {readme}", file=sys.stderr)
        return readme, readme
    out.mkdir(parents=True, exist_ok=True)
    md_path = out / "report.md"
    deployed = deployment(runs)
    if deployed:
        deployed = ("## Which deployment is fastest: img/s (ratio to native PyTorch eager "
                    "in the same rounds), float32 throughput\n\n" + deployed + "\n")
    md_path.write_text(
        deployed
        + "## float32 summary: multinet img/s (ratio to native PyTorch on every core; "
        "ratio to native on one thread, where measured)\n\n"
        + summary(runs) + "\n## Every result\n\n" + markdown(runs), encoding="utf-8")
    png_path = chart(runs, out / "report.png")
    merged_csv(results_dir, out / "results.csv")
    print(f"wrote {md_path} and {png_path}", file=sys.stderr)
    return md_path, png_path


def _relative(path: Path) -> str:
    """``path`` relative to the repository root where it lies inside it."""
    try:
        return path.resolve().relative_to(HERE.parent).as_posix()
    except ValueError:
        return path.as_posix()


if __name__ == "__main__":
    main()
