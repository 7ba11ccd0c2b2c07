"""multinet.export and `multinet export`: the support matrix, each cell either
an artifact verified by running it in its runtime or a tested one-line error.

The matrix (every format x both data formats x MATRIX_MODELS on this session's
backend, and ONNX in channels_last for one model of each other family) is
written to $MULTINET_EXPORT_RESULTS (default build/export_matrix/<backend>.json)
and checked against the checked-in
docs/export_matrix/<backend>.json, which docs/gen_export_matrix.py renders into
README.md. Without the multinet-keras[export] extra the module skips (plain
`tests` session); `nox -s export` sets MULTINET_EXPORT_REQUIRED=1, where
nothing skips.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest

import multinet
from multinet import backend

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = os.environ.get("MULTINET_EXPORT_REQUIRED") == "1"
RUNTIME_MODULES = ("onnx", "onnxruntime", "openvino", "ai_edge_litert")
_missing = [m for m in RUNTIME_MODULES if importlib.util.find_spec(m) is None]
if _missing and not REQUIRED:
    pytest.skip(f"needs the multinet-keras[export] extra (nox -s export); missing "
                f"{', '.join(_missing)}", allow_module_level=True)

from multinet import deploy  # noqa: E402
from multinet.cli.main import main  # noqa: E402

BACKEND = backend.name()
MATRIX_MODELS = ("squeezenet1_1", "resnet50")
DATA_FORMATS = ("channels_last", "channels_first")
SIZE = 64  # small inputs keep the matrix fast; the graphs are the full models'
MATRIX_CELLS = [(m, d, f) for m in MATRIX_MODELS for d in DATA_FORMATS for f in deploy.FORMATS]
# The families beyond the matrix models, in a lighter loop: one model per architecture
# (the larger variants are the same code with more blocks), channels_last, ONNX (the
# format every backend exports), verified in onnxruntime.
FAMILY_MODELS = ("convnext_tiny", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0",
                 "vit_b_16")
FAMILY_FORMATS = ("onnx",)
FAMILY_CELLS = [(m, "channels_last", f) for m in FAMILY_MODELS for f in FAMILY_FORMATS]
# The family cells run first, convnext_tiny first of all: on JAX, jax2onnx 0.17's graph
# optimizer took 34 s over convnext_tiny as a process' first export and 266 s after one
# export of mobilenet_v3_large (306 s after the matrix cells).
CELLS = FAMILY_CELLS + MATRIX_CELLS


def _shape(data_format):
    return (SIZE, SIZE, 3) if data_format == "channels_last" else (3, SIZE, SIZE)


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name, data_format):
        if (name, data_format) not in cache:
            keras.utils.set_random_seed(0)
            cache[(name, data_format)] = multinet.create_model(
                name, data_format=data_format, input_shape=_shape(data_format))
        return cache[(name, data_format)]

    return get


@pytest.fixture(scope="module")
def matrix():
    """The cells this run produced; written to the results file at the end."""
    cells: dict[str, dict] = {}
    yield cells
    if not cells:
        return
    path = Path(os.environ.get("MULTINET_EXPORT_RESULTS")
                or ROOT / "build" / "export_matrix" / f"{BACKEND}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"backend": BACKEND, "keras": keras.__version__,
            "framework": f"{BACKEND} {backend.framework_version()}",
            "models": list(MATRIX_MODELS), "family_models": list(FAMILY_MODELS),
            "family_formats": list(FAMILY_FORMATS), "complete": len(cells) == len(CELLS),
            "cells": dict(sorted(cells.items()))}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def test_the_export_session_has_every_exporter_of_its_backend():
    """Where the extras are installed, the only formats this backend cannot
    produce are the ones no package of its own would make (and SavedModel
    outside TensorFlow, which needs TensorFlow itself)."""
    assert not _missing
    for fmt in deploy.FORMATS:
        missing = deploy.missing_packages(BACKEND, fmt)
        assert missing in ([], ["tensorflow"]), (fmt, missing)


@pytest.mark.parametrize("model_name,data_format,fmt", CELLS)
def test_matrix_cell(model_name, data_format, fmt, models, matrix, tmp_path):
    model = models(model_name, data_format)
    path = str(tmp_path / f"{model_name}{deploy.SUFFIXES[fmt] or '_savedmodel'}")
    key = f"{model_name}/{data_format}/{fmt}"
    reasons = {b: deploy.unavailable(b, fmt) for b in deploy.BACKENDS}
    if reasons[BACKEND] is not None and all(reasons[b] is not None for b in deploy.BACKENDS):
        with pytest.raises(deploy.ExportError) as caught:
            multinet.export(model, path, fmt)
        message = str(caught.value)
        assert "\n" not in message and fmt in message and BACKEND in message
        # The line names what would produce it: a backend or a package.
        route = deploy.ROUTES[(BACKEND, fmt)]
        named = route.why if route.method is None else deploy.missing_packages(BACKEND, fmt)[0]
        assert named in message
        assert os.listdir(tmp_path) == []  # nothing half-written
        matrix[key] = {"status": "error", "reason": reasons[BACKEND], "message": message}
        return
    report = multinet.export(model, path, fmt)
    route = deploy.ROUTES[(report.backend, fmt)]
    assert report.path == path and os.path.exists(path)
    assert report.relative_difference <= deploy.TOLERANCE
    assert report.dynamic_batch == route.dynamic_batch
    assert report.batches == ((1, 7) if route.dynamic_batch else (1,))
    expected_files = {os.path.basename(p) for p in deploy._artifact_paths(path, fmt)}
    assert set(os.listdir(tmp_path)) == expected_files  # no staging file left behind
    matrix[key] = {"status": "verified", "backend": report.backend, "method": report.method,
                   "dynamic_batch": report.dynamic_batch,
                   "max_difference": float(f"{report.max_difference:.2g}")}


def test_the_matrix_matches_the_checked_in_results(matrix):
    """Runs after the cells: a cell that changes (an exporter that starts or
    stops working) fails here until docs/export_matrix/ and the README are
    regenerated on purpose."""
    checked_in = json.loads((ROOT / "docs" / "export_matrix" / f"{BACKEND}.json").read_text())
    assert checked_in["complete"]
    if REQUIRED:
        assert len(matrix) == len(CELLS), "the export session runs every cell"
    for key, cell in matrix.items():
        old = checked_in["cells"][key]
        assert (cell["status"], cell.get("method"), cell.get("dynamic_batch"),
                cell.get("reason")) == (old["status"], old.get("method"),
                                        old.get("dynamic_batch"), old.get("reason")), key


# --- verification, staging and errors ---------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    keras.utils.set_random_seed(1)
    return multinet.create_model("squeezenet1_1", input_shape=(SIZE, SIZE, 3),
                                 data_format="channels_last")


def test_a_mismatch_is_an_error_and_leaves_nothing(small, tmp_path, monkeypatch):
    real = deploy.run_artifact

    def off(path, fmt, x):
        return real(path, fmt, x) * 1.01  # an artifact that computes something else

    monkeypatch.setattr(deploy, "run_artifact", off)
    with pytest.raises(deploy.ExportError, match=r"differs from model.predict by up to .* "
                                                 r"more than 0.0001"):
        multinet.export(small, tmp_path / "m.onnx", "onnx")
    assert os.listdir(tmp_path) == []


def test_an_artifact_of_other_weights_does_not_verify(small, tmp_path):
    multinet.export(small, tmp_path / "m.onnx", "onnx")
    keras.utils.set_random_seed(2)
    other = multinet.create_model("squeezenet1_1", input_shape=(SIZE, SIZE, 3),
                                  data_format="channels_last")
    with pytest.raises(deploy.ExportError, match="differs from model.predict"):
        deploy.verify_artifact(other, str(tmp_path / "m.onnx"), "onnx")


def test_an_artifact_the_runtime_rejects_is_one_line(small, tmp_path):
    garbage = tmp_path / "bad.onnx"
    garbage.write_bytes(b"not an onnx graph")
    with pytest.raises(deploy.ExportError) as caught:
        deploy.verify_artifact(small, str(garbage), "onnx")
    assert str(caught.value).startswith("onnxruntime cannot run the onnx artifact")
    assert "\n" not in str(caught.value)


def test_a_fixed_batch_size_is_kept(small, tmp_path):
    report = multinet.export(small, tmp_path / "m.onnx", "onnx", batch_size=3)
    assert not report.dynamic_batch and report.batches == (3,)
    import onnx

    dims = onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [3, SIZE, SIZE, 3]


def test_bad_destinations(small, tmp_path):
    with pytest.raises(deploy.ExportError, match="unknown export format 'tflite'"):
        multinet.export(small, tmp_path / "m.tflite", "tflite")
    with pytest.raises(deploy.ExportError, match="does not exist"):
        multinet.export(small, tmp_path / "missing" / "m.onnx", "onnx")
    with pytest.raises(deploy.ExportError, match=r"must end in \.xml"):
        multinet.export(small, tmp_path / "m.onnx", "openvino")
    (tmp_path / "m.onnx").write_bytes(b"old")
    with pytest.raises(deploy.ExportError, match="exists; pass overwrite=True"):
        multinet.export(small, tmp_path / "m.onnx", "onnx")
    assert (tmp_path / "m.onnx").read_bytes() == b"old"
    multinet.export(small, tmp_path / "m.onnx", "onnx", overwrite=True)
    assert (tmp_path / "m.onnx").read_bytes() != b"old"


def test_another_backend_produces_in_a_subprocess(tmp_path):
    """The route for formats the current backend lacks: the model saved as a
    .keras file, rebuilt and exported by another backend's process (here the
    same backend, the one certainly installed; a small model keeps it fast)."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 3))
    x = multinet.layers.MaxPooling2D(3, strides=2, ceil_mode=True)(
        keras.layers.Conv2D(4, 3, activation="relu")(inputs))
    tiny = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Flatten()(x)))
    staging = str(tmp_path / "m.onnx")
    deploy._produce_elsewhere(tiny, staging, "onnx", None, BACKEND)
    _, relative = deploy.verify_artifact(tiny, staging, "onnx")
    assert relative <= deploy.TOLERANCE
    assert os.listdir(tmp_path) == ["m.onnx"]


# --- the command ------------------------------------------------------------------------------


def test_cli_exports_and_verifies(tmp_path, capsys):
    out = tmp_path / "s.onnx"
    assert main(["export", "squeezenet1_1", "-w", "random", "--format", "onnx", "-o", str(out),
                 "--data-format", "channels_first"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "verified with onnxruntime on batch 1 and 7" in text
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 224, 224]
    assert main(["export", "squeezenet1_1", "-w", "random", "--format", "onnx",
                 "-o", str(out)]) == 1
    assert "exists; pass --force to replace it" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--format", "onnx", "-o", "{tmp}/no/such/folder/m.onnx"], "does not exist"),
    (["--format", "openvino", "-o", "{tmp}/m.onnx"], "must end in .xml"),
])
def test_cli_bad_paths_are_one_line(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["export", "squeezenet1_1", "-w", "random", *argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("multinet export: error:")


def test_cli_unknown_format_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["export", "squeezenet1_1", "--format", "tflite", "-o", str(tmp_path / "m")])
    assert caught.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err


def test_cli_a_format_no_backend_here_produces_is_one_line(tmp_path, capsys):
    lacking = [f for f in deploy.FORMATS
               if all(deploy.unavailable(b, f) for b in deploy.BACKENDS)]
    assert lacking, "each backend's environment lacks a format of another backend"
    fmt = lacking[0]
    out = str(tmp_path / f"m{deploy.SUFFIXES[fmt] or '_saved'}")
    assert main(["export", "squeezenet1_1", "-w", "random", "--format", fmt, "-o", out]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{fmt} " in err and BACKEND in err
    assert os.listdir(tmp_path) == []


def test_jax2onnx_max_pools_are_rewritten(small, tmp_path):
    """On JAX the ONNX graph's max pools are 2D after the rewrite (onnxruntime
    rejects jax2onnx's 4D ones); elsewhere the rewrite finds nothing to do."""
    import onnx

    path = tmp_path / "m.onnx"
    multinet.export(small, path, "onnx", verify=False)
    pools = [n for n in onnx.load(str(path)).graph.node if n.op_type == "MaxPool"]
    assert len(pools) == 3
    for node in pools:
        kernel = next(a.ints for a in node.attribute if a.name == "kernel_shape")
        assert list(kernel) == [3, 3]
    assert deploy.fix_jax2onnx_max_pools(str(path)) == 0
    x = np.random.default_rng(0).uniform(0, 1, (2, SIZE, SIZE, 3)).astype("float32")
    assert np.allclose(deploy.run_artifact(str(path), "onnx", x), small.predict(x, verbose=0),
                       atol=1e-5)


@pytest.mark.skipif(BACKEND != "jax", reason="jax2onnx is the JAX backend's ONNX exporter")
def test_the_linear_jax2onnx_check_answers_as_jax2onnx(small, tmp_path, monkeypatch):
    """During an export the shortcut for jax2onnx's per-equation output check
    gives jax2onnx's own answer for every value, takes the shortcut for most of
    them, and is gone afterwards."""
    from jax2onnx.converter import output_binding

    original = output_binding._value_is_graph_connected
    calls = {"total": 0, "original": 0}

    def counting(ctx, value):
        calls["original"] += 1
        return original(ctx, value)

    monkeypatch.setattr(output_binding, "_value_is_graph_connected", counting)
    answers = []
    real_context = deploy._linear_jax2onnx_output_check

    @contextlib.contextmanager
    def checked():
        with real_context():
            shortcut = output_binding._value_is_graph_connected
            assert shortcut is not counting

            def both(ctx, value):
                calls["total"] += 1
                fast = shortcut(ctx, value)
                answers.append(fast == original(ctx, value))
                return fast

            output_binding._value_is_graph_connected = both
            try:
                yield
            finally:
                output_binding._value_is_graph_connected = shortcut

    monkeypatch.setattr(deploy, "_linear_jax2onnx_output_check", checked)
    multinet.export(small, tmp_path / "m.onnx", "onnx")
    assert calls["total"] > 100 and all(answers)
    assert calls["original"] < calls["total"] / 10  # the scan runs for few values, if any
    assert output_binding._value_is_graph_connected is counting  # restored
