"""README.md and docs/: the models table matches the registry, every relative
link and anchor resolves, every docs page is reachable from the README, and
the README's Quick start runs as written (its one download replaced by a local
file in the published layout)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import weight_fixtures as wf

import multinet

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def generator():
    spec = importlib.util.spec_from_file_location("gen_models_table",
                                                  ROOT / "docs" / "gen_models_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prose(text: str) -> str:
    """Markdown without code blocks and code spans, where links are not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    body = prose(text)
    return _INLINE_LINK.findall(body) + _REFERENCE_LINK.findall(body)


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to '-',
    '-1', '-2'... for repeats."""
    seen: dict[str, int] = {}
    result = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def test_markdown_helpers_find_what_github_renders():
    text = ("# Two `words`, here\n## Two words here\nsee [a](docs/a.md#x) ![c](img.png)\n"
            "`[not](code.md)`\n```\n[no](block.md)\n```\n[ref]: other.md\n")
    assert links(text) == ["docs/a.md#x", "img.png", "other.md"]
    assert anchors(text) == {"two-words-here", "two-words-here-1"}


@pytest.mark.parametrize("page,full", [(README, False), (ROOT / "docs" / "weights.md", True)],
                         ids=["README.md", "docs/weights.md"])
def test_models_table_is_current(page, full):
    gen = generator()
    text = page.read_text(encoding="utf-8")
    expected = gen.with_table(text, gen.render_table(full), page)
    assert text == expected, (
        f"{page.name}'s models table differs from the registry: run "
        "python docs/gen_models_table.py")


@pytest.mark.parametrize("full", [False, True], ids=["short", "full"])
def test_models_table_lists_every_registered_model(full):
    table = generator().render_table(full)
    rows = [line for line in table.splitlines()[2:] if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == multinet.list_models()
    squeezenet = next(row for row in rows if row.startswith("| `squeezenet1_1`"))
    spec = multinet.get_model_spec("squeezenet1_1")
    assert f"{spec.num_params:,}" in squeezenet
    assert f"`{spec.default_weights}` (imagenet)" in squeezenet
    for entry in spec.weights:
        assert f"`{entry.name}`" in squeezenet
        assert (f": {entry.preprocessing}, {entry.input_size}x" in squeezenet) == full
        assert ("`ceil_mode=" in squeezenet) == full


def test_stale_table_is_rewritten_between_the_markers_only(tmp_path):
    gen = generator()
    readme, weights = tmp_path / "README.md", tmp_path / "weights.md"
    for page in (readme, weights):
        page.write_text(f"intro\n{gen.START}\n| old | table |\n{gen.END}\noutro\n")
    pages = ["--readme", str(readme), "--weights-page", str(weights)]
    assert gen.main(["--check", *pages]) == 1
    assert "| old | table |" in readme.read_text()  # --check writes nothing
    assert gen.main(pages) == 0
    for page, full in ((readme, False), (weights, True)):
        text = page.read_text()
        assert text.startswith(f"intro\n{gen.START}\n") and text.endswith(f"{gen.END}\noutro\n")
        assert "| old | table |" not in text and gen.render_table(full) in text
    assert gen.main(["--check", *pages]) == 0
    weights.write_text("no markers here\n")
    with pytest.raises(ValueError, match="weights.md: expected one <!-- models:start"):
        gen.main(pages)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and file.suffix == ".md" and fragment not in anchors(
                file.read_text(encoding="utf-8")):
            broken.append(f"{target} (no heading with that anchor)")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {', '.join(broken)}"


def test_readme_links_every_docs_page():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(README.read_text())}
    missing = [p.name for p in DOCS if p.resolve() not in linked]
    assert DOCS and not missing, f"docs pages not linked from README.md: {missing}"


def quick_start_code() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)
    assert blocks, "README.md's Quick start has no python block"
    return blocks[0]


def test_quick_start_runs(tmp_path, monkeypatch, capsys):
    """The README's Quick start, exec'd as written. The published squeezenet1_1
    file is replaced by one in the same (torchvision) layout whose classifier
    says "tabby" for any image, so the printed labels show that the weights
    were loaded and the predictions decoded."""
    from safetensors.numpy import save_file

    import multinet.weights

    state = wf.torchvision_state_dict("squeezenet1_1")
    state["classifier.1.weight"] = np.zeros_like(state["classifier.1.weight"])
    state["classifier.1.bias"] = np.zeros(1000, np.float32)
    state["classifier.1.bias"][281] = 10.0  # n02123045 tabby
    local = tmp_path / "squeezenet1_1.safetensors"
    save_file(state, local)
    asked = []

    def fetch(entry, include_top=True, *, model_name="this model"):
        asked.append((model_name, entry.name))
        return local

    monkeypatch.setattr(multinet.weights, "fetch", fetch)
    monkeypatch.chdir(tmp_path)
    exec(compile(quick_start_code(), "README.md (Quick start)", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert asked == [("squeezenet1_1", "torchvision")]
    assert re.search(r"\[\[\('n02123045', 'tabby', ", printed), printed


def export_matrix_generator():
    spec = importlib.util.spec_from_file_location("gen_export_matrix",
                                                  ROOT / "docs" / "gen_export_matrix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_matrix_is_current():
    """README's export matrix is the rendering of docs/export_matrix/*.json,
    the results tests/test_export.py wrote in the export sessions."""
    gen = export_matrix_generator()
    results = gen.load_results()
    assert sorted(results) == sorted(gen.BACKENDS)
    for backend, data in results.items():
        assert data["complete"] and data["backend"] == backend
        cells = {f"{m}/{d}/{f}" for m in data["models"] for d in gen.DATA_FORMATS
                 for f in gen.FORMATS}
        cells |= {f"{m}/channels_last/{f}" for m in data["family_models"]
                  for f in data["family_formats"]}
        assert len(data["family_models"]) >= 5, backend
        assert set(data["cells"]) == cells, backend
    text = README.read_text(encoding="utf-8")
    assert text == gen.with_matrix(text, gen.render_matrix(results)), (
        "README.md's export matrix differs from docs/export_matrix/: run "
        "python docs/gen_export_matrix.py")


def test_export_matrix_cells_render_what_the_results_say(tmp_path):
    gen = export_matrix_generator()
    ok = {"status": "verified", "method": "keras", "dynamic_batch": True}
    data = {"keras": "3", "framework": "jax 0", "models": ["m"], "cells": {
        "m/channels_last/onnx": ok, "m/channels_first/onnx": ok,
        "m/channels_last/torch": {"status": "error", "reason": "torch backend only"},
        "m/channels_first/torch": {**ok, "dynamic_batch": False, "method": "onnx+openvino"}}}
    table = gen.render_matrix({"jax": data})
    row = next(line for line in table.splitlines() if line.startswith("| jax |"))
    cells = [c.strip() for c in row.split("|")[3:-1]]
    assert cells[0] == "✅ dynamic batch"
    assert cells[3] == "NHWC: ❌ torch backend only<br>NCHW: ✅ batch 1, onnx+openvino"
    assert cells[1] == "not run"
    assert "| model | format |" not in table  # no family table without family models
    data_families = {**data, "family_models": ["f"], "family_formats": ["onnx"],
                     "cells": {**data["cells"], "f/channels_last/onnx": ok}}
    table = gen.render_matrix({"jax": data_families, "torch": data})
    assert "| model | format | jax | torch |" in table
    assert "| `f` | `onnx` | ✅ dynamic batch | not run |" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{gen.START}\nold\n{gen.END}\nb\n")
    (tmp_path / "jax.json").write_text(json.dumps(data))
    assert gen.main(["--check", "--readme", str(readme), "--results", str(tmp_path)]) == 1
    assert gen.main(["--readme", str(readme), "--results", str(tmp_path)]) == 0
    assert "old" not in readme.read_text() and row in readme.read_text()


def test_deployment_table_is_current():
    """docs/export.md's "which deployment is fastest" table is the rendering of the
    committed benchmarks/results/deployed/*.json (benchmarks/report.py --readme)."""
    spec = importlib.util.spec_from_file_location("bench_report",
                                                  ROOT / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    runs = report.load(ROOT / "benchmarks" / "results" / "deployed")
    assert runs, "no results in benchmarks/results/deployed"
    table = report.deployment(runs)
    for model in ("squeezenet1_1", "vgg16", "resnet50"):
        for data_format in ("NHWC", "NCHW"):
            assert f"| {model} |" in table and f"| {data_format} |" in table
    text = (ROOT / "docs" / "export.md").read_text(encoding="utf-8")
    block = report.readme_block(runs, "benchmarks/results/deployed", "docs/export.md")
    assert text == report.with_readme_block(text, block), (
        "docs/export.md's deployment table differs from benchmarks/results/deployed/: run "
        "python benchmarks/report.py --results benchmarks/results/deployed "
        "--readme docs/export.md")
