"""Render the model registry into README.md's models table.

    python docs/gen_models_table.py           # rewrite the table in README.md
    python docs/gen_models_table.py --check   # exit 1 if README.md's table is stale

The table sits between the ``<!-- models:start -->`` and ``<!-- models:end -->``
markers; everything outside them is left alone. Any Keras backend will do
(``KERAS_BACKEND``): only the registry is read, no model is built.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
START = "<!-- models:start -->"
END = "<!-- models:end -->"
NOTE = "<!-- generated from the model registry by docs/gen_models_table.py: do not edit -->"


def _entry_cell(spec, entry) -> str:
    size = f"{entry.input_size}x{entry.input_size}"
    facts = [entry.preprocessing, size]
    facts += [f"`{key}={value!r}`" for key, value in sorted(entry.arch_options.items())]
    default = " (imagenet)" if entry.name == spec.default_weights else ""
    return f"`{entry.name}`{default}: {', '.join(facts)}"


def render_table() -> str:
    """The models table in Markdown, one row per registered model."""
    import multinet

    lines = [
        "| model | family | parameters | default input "
        "| weights entries: preprocessing, input size, options they need |",
        "|---|---|---:|---|---|",
    ]
    for name in multinet.list_models():
        spec = multinet.get_model_spec(name)
        entries = "<br>".join(_entry_cell(spec, e) for e in spec.weights) or "none"
        lines.append(f"| `{spec.name}` | {spec.family.name} | {spec.num_params:,} "
                     f"| {spec.default_size}x{spec.default_size} | {entries} |")
    return "\n".join(lines)


def section(text: str) -> tuple[int, int]:
    """Where the generated part of ``text`` starts and ends (between the markers)."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start or text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"{README.name}: expected one {START} line followed by one {END} line")
    return start + len(START), end


def with_table(text: str, table: str) -> str:
    """``text`` with the part between the markers replaced by ``table``."""
    start, end = section(text)
    return f"{text[:start]}\n{NOTE}\n\n{table}\n\n{text[end:]}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the table in README.md is stale")
    parser.add_argument("--readme", type=Path, default=README, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    new = with_table(text, render_table())
    if new == text:
        print(f"{args.readme}: the models table is up to date")
        return 0
    if args.check:
        diff = difflib.unified_diff(text.splitlines(), new.splitlines(), "README.md",
                                    "generated", lineterm="")
        print("\n".join(diff))
        print(f"{args.readme}: the models table is stale; run python docs/gen_models_table.py",
              file=sys.stderr)
        return 1
    args.readme.write_text(new, encoding="utf-8")
    print(f"{args.readme}: models table rewritten")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(README.parent))  # this checkout's multinet, not another install
    sys.exit(main())
