"""Render the export support matrix into README.md from the test run's results.

    python docs/gen_export_matrix.py           # rewrite the matrix in README.md
    python docs/gen_export_matrix.py --check   # exit 1 if README.md's matrix is stale

``nox -s export`` runs tests/test_export.py on each backend; each run writes
build/export_matrix/<backend>.json and checks it against the checked-in
docs/export_matrix/<backend>.json (copy the new file there when a cell changes
on purpose). This script renders the checked-in files between the
``<!-- export-matrix:start -->`` and ``<!-- export-matrix:end -->`` markers.
No Keras backend is needed.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "export_matrix"
START = "<!-- export-matrix:start -->"
END = "<!-- export-matrix:end -->"
NOTE = ("<!-- generated from docs/export_matrix/*.json (written by tests/test_export.py) "
        "by docs/gen_export_matrix.py: do not edit -->")
FORMATS = ("onnx", "tf_saved_model", "openvino", "torch", "litert")
BACKENDS = ("tensorflow", "jax", "torch")
DATA_FORMATS = {"channels_last": "NHWC", "channels_first": "NCHW"}


def load_results(folder: Path = RESULTS) -> dict[str, dict]:
    """{backend: results} for the backends with a results file in ``folder``."""
    results = {}
    for backend in BACKENDS:
        path = folder / f"{backend}.json"
        if path.exists():
            results[backend] = json.loads(path.read_text(encoding="utf-8"))
    return results


def cell(entry: dict | None) -> str:
    if entry is None:
        return "not run"
    if entry["status"] == "verified":
        batch = "dynamic batch" if entry["dynamic_batch"] else "batch 1"
        via = "" if entry["method"] == "keras" else f", {entry['method']}"
        return f"✅ {batch}{via}"
    return f"❌ {entry['reason']}"


def _cells(data: dict, model: str, fmt: str) -> str:
    """One cell for both data formats when they agree, else one line each."""
    per_format = [cell(data["cells"].get(f"{model}/{df}/{fmt}")) for df in DATA_FORMATS]
    if per_format[0] == per_format[1]:
        return per_format[0]
    return "<br>".join(f"{short}: {text}" for short, text in zip(DATA_FORMATS.values(),
                                                                  per_format))


def render_matrix(results: dict[str, dict]) -> str:
    """The matrix in Markdown: one row per backend and model, one column per format."""
    lines = ["| backend | model | " + " | ".join(f"`{f}`" for f in FORMATS) + " |",
             "|---|---|" + "---|" * len(FORMATS)]
    for backend, data in results.items():
        for model in data["models"]:
            row = [_cells(data, model, fmt) for fmt in FORMATS]
            lines.append(f"| {backend} | `{model}` | " + " | ".join(row) + " |")
    lines += ["", "Both data formats (NHWC and NCHW) unless a cell says otherwise."]
    families = [m for data in results.values() for m in data.get("family_models", [])]
    families = list(dict.fromkeys(families))
    if families:
        formats = list(dict.fromkeys(f for data in results.values()
                                     for f in data.get("family_formats", [])))
        lines += ["", "The other families, one model each (the larger variants are the same "
                      "code), NHWC: " + ", ".join(f"`{f}`" for f in formats) + ".", "",
                  "| model | format | " + " | ".join(results) + " |",
                  "|---|---|" + "---|" * len(results)]
        for model in families:
            for fmt in formats:
                row = [cell(data["cells"].get(f"{model}/channels_last/{fmt}"))
                       for data in results.values()]
                lines.append(f"| `{model}` | `{fmt}` | " + " | ".join(row) + " |")
    footnote = "; ".join(f"{backend}: Keras {data['keras']}, {data['framework']}"
                         for backend, data in results.items())
    lines += ["", f"Measured with {footnote}."]
    return "\n".join(lines)


def section(text: str) -> tuple[int, int]:
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start or text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"{README.name}: expected one {START} line followed by one {END} line")
    return start + len(START), end


def with_matrix(text: str, matrix: str) -> str:
    start, end = section(text)
    return f"{text[:start]}\n{NOTE}\n\n{matrix}\n\n{text[end:]}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the matrix in README.md is stale")
    parser.add_argument("--readme", type=Path, default=README, help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    new = with_matrix(text, render_matrix(load_results(args.results)))
    if new == text:
        print(f"{args.readme}: the export matrix is up to date")
        return 0
    if args.check:
        diff = difflib.unified_diff(text.splitlines(), new.splitlines(), "README.md",
                                    "generated", lineterm="")
        print("\n".join(diff))
        print(f"{args.readme}: the export matrix is stale; run python docs/gen_export_matrix.py",
              file=sys.stderr)
        return 1
    args.readme.write_text(new, encoding="utf-8")
    print(f"{args.readme}: export matrix rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
