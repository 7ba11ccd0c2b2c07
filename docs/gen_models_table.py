"""Render the model registry into the models tables: README.md's short one (each
model's weights entries by name) and docs/weights.md's full one (each entry's
preprocessing, input size and the options it needs).

    python docs/gen_models_table.py           # rewrite both tables
    python docs/gen_models_table.py --check   # exit 1 if either table is stale

Each table sits between the ``<!-- models:start -->`` and ``<!-- models:end -->``
markers of its page; everything outside them is left alone. Any Keras backend will do
(``KERAS_BACKEND``): only the registry is read, no model is built.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
WEIGHTS_PAGE = README.parent / "docs" / "weights.md"
START = "<!-- models:start -->"
END = "<!-- models:end -->"
NOTE = "<!-- generated from the model registry by docs/gen_models_table.py: do not edit -->"


def _entry_cell(spec, entry) -> str:
    size = f"{entry.input_size}x{entry.input_size}"
    facts = [entry.preprocessing, size]
    facts += [f"`{key}={value!r}`" for key, value in sorted(entry.arch_options.items())]
    return f"{_entry_name(spec, entry)}: {', '.join(facts)}"


def _entry_name(spec, entry) -> str:
    default = " (imagenet)" if entry.name == spec.default_weights else ""
    return f"`{entry.name}`{default}"


def render_table(full: bool = True) -> str:
    """The models table in Markdown, one row per registered model: with each
    weights entry's facts (``full``, docs/weights.md) or its name only (README.md)."""
    import multinet

    heading, cell, join = (
        ("weights entries: preprocessing, input size, options they need", _entry_cell, "<br>")
        if full else ("weights entries", _entry_name, ", "))
    lines = [
        f"| model | family | parameters | default input | {heading} |",
        "|---|---|---:|---|---|",
    ]
    for name in multinet.list_models():
        spec = multinet.get_model_spec(name)
        entries = join.join(cell(spec, e) for e in spec.weights) or "none"
        lines.append(f"| `{spec.name}` | {spec.family.name} | {spec.num_params:,} "
                     f"| {spec.default_size}x{spec.default_size} | {entries} |")
    return "\n".join(lines)


def section(text: str, page: Path = README) -> tuple[int, int]:
    """Where the generated part of ``text`` starts and ends (between the markers)."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start or text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"{page.name}: expected one {START} line followed by one {END} line")
    return start + len(START), end


def with_table(text: str, table: str, page: Path = README) -> str:
    """``text`` with the part between the markers replaced by ``table``."""
    start, end = section(text, page)
    return f"{text[:start]}\n{NOTE}\n\n{table}\n\n{text[end:]}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if a models table is stale")
    parser.add_argument("--readme", type=Path, default=README, help=argparse.SUPPRESS)
    parser.add_argument("--weights-page", type=Path, default=WEIGHTS_PAGE,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    stale = 0
    for page, full in ((args.readme, False), (args.weights_page, True)):
        text = page.read_text(encoding="utf-8")
        new = with_table(text, render_table(full), page)
        if new == text:
            print(f"{page}: the models table is up to date")
        elif args.check:
            diff = difflib.unified_diff(text.splitlines(), new.splitlines(), page.name,
                                        "generated", lineterm="")
            print("\n".join(diff))
            print(f"{page}: the models table is stale; run python docs/gen_models_table.py",
                  file=sys.stderr)
            stale = 1
        else:
            page.write_text(new, encoding="utf-8")
            print(f"{page}: models table rewritten")
    return stale


if __name__ == "__main__":
    sys.path.insert(0, str(README.parent))  # this checkout's multinet, not another install
    sys.exit(main())
