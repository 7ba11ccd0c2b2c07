"""Keras' OpenVINO backend (KERAS_BACKEND=openvino): every registered model builds
and predicts in both data formats and gives the other backends' numbers; it
runs inference only, and says so in one line where training is asked for.

The nox session ``openvino`` runs this file in an environment with keras and
openvino and no other framework. In the tensorflow, jax and torch sessions a few
models recheck the stored numbers live (tests/backend_parity.py), so that the
file the OpenVINO backend is held to is what the training backends compute.
"""

from __future__ import annotations

import json

import backend_parity as parity
import numpy as np
import pytest
from helpers import rel_error

import multinet
from multinet import backend, cli

ON_OPENVINO = backend.name() == "openvino"
# Rechecked live on the training backends: the fire modules with ceil pooling,
# depthwise convolutions with squeeze-excitation and hard-swish, and attention
# with layer normalization. The families' own tests hold every model to
# torchvision and keras.applications on those backends.
RECHECKED = ("squeezenet1_1", "mobilenet_v3_small", "vit_b_16")
MODELS = multinet.list_models() if ON_OPENVINO else RECHECKED

openvino_only = pytest.mark.skipif(not ON_OPENVINO, reason="KERAS_BACKEND=openvino only "
                                   "(nox -s openvino)")


@pytest.fixture(scope="module")
def stored():
    return parity.expected()


def test_the_stored_numbers_cover_every_model(stored):
    assert sorted(stored) == multinet.list_models()
    for name, logits in stored.items():
        assert logits.shape == (parity.BATCH, 1000), name
        assert np.all(np.isfinite(logits)), name
        # Two images, answered differently: the weights reach the output.
        assert rel_error(logits[0], logits[1]) > 1e-2, name


@pytest.mark.parametrize("name", MODELS)
def test_logits_equal_the_other_backends(name, data_format, stored):
    model = parity.build(name, data_format)
    assert model.layers[0].output.shape[1:] == (
        (parity.size_of(name),) * 2 + (3,) if data_format == "channels_last"
        else (3,) + (parity.size_of(name),) * 2)
    got = model.predict(parity.inputs(name, data_format), verbose=0)
    error = rel_error(got, stored[name])
    assert error < parity.TOLERANCE, (
        f"{name} {data_format} on {backend.name()}: relative difference {error:.2e}")


def test_seeded_weights_depend_on_the_name_and_shape_only():
    a = parity.build("squeezenet1_1", "channels_last").get_weights()
    b = parity.build("squeezenet1_1", "channels_first").get_weights()
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    # The same model drawn under another name gets other values.
    model = parity.build("squeezenet1_1", "channels_last")
    other = parity.seeded_weights(model, "squeezenet1_0")
    assert [w.shape for w in other] == [w.shape for w in a]
    assert not any(np.array_equal(x, y) for x, y in zip(other, a) if x.size > 1)


# --- OpenVINO only -------------------------------------------------------------------


@openvino_only
def test_predict_compiles_in_float32():
    """Keras compiles predict's graph without a precision hint, which lets
    OpenVINO compute in bfloat16 on CPUs with bfloat16 units (about 1e-2 off);
    multinet's models ask for f32, and Keras' own trainer is left as it was."""
    import openvino
    from keras.src.backend.openvino import trainer as ov_trainer

    model = parity.build("squeezenet1_1", "channels_last")
    model.predict(parity.inputs("squeezenet1_1", "channels_last"), verbose=0)
    hint = model.ov_compiled_model.get_property("INFERENCE_PRECISION_HINT")
    assert repr(hint) == "<Type: 'float32'>", hint
    assert ov_trainer.ov is openvino


@openvino_only
def test_weights_files_load_on_openvino(tmp_path, stored):
    """A weights file written on this backend loads back through create_model."""
    model = parity.build("squeezenet1_1", "channels_first")
    path = tmp_path / "squeezenet1_1.weights.h5"
    model.save_weights(path)
    loaded = multinet.create_model("squeezenet1_1", weights=str(path),
                                   input_shape=(3, 67, 67), classifier_activation=None,
                                   data_format="channels_first")
    got = loaded.predict(parity.inputs("squeezenet1_1", "channels_first"), verbose=0)
    assert rel_error(got, stored["squeezenet1_1"]) < parity.TOLERANCE


@openvino_only
def test_fit_and_train_on_batch_say_which_backends_train():
    model = multinet.create_model("squeezenet1_1", input_shape=(67, 67, 3), classes=3)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = np.zeros((2, 67, 67, 3), "float32"), np.zeros((2,), "int32")
    message = ("needs a backend that trains: the openvino backend runs inference only; "
               "set KERAS_BACKEND to tensorflow, jax or torch to train")
    with pytest.raises(NotImplementedError, match=f"^fit {message}$"):
        model.fit(x, y, verbose=0)
    with pytest.raises(NotImplementedError, match=f"^train_on_batch {message}$"):
        model.train_on_batch(x, y)


@openvino_only
def test_train_is_a_one_line_error_that_writes_nothing(tmp_path, capsys):
    data = tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
    out = tmp_path / "run"
    with pytest.raises(multinet.training.TrainingError, match="^training needs a backend"):
        multinet.train(data, "squeezenet1_1", out, epochs=1)
    assert not out.exists()
    status = cli.main(["train", str(data), "-m", "squeezenet1_1", "--out", str(out)])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status != 0 and len(lines) == 1, captured.err
    assert lines[0].endswith("multinet train needs a backend that trains: the openvino "
                             "backend runs inference only; set KERAS_BACKEND to "
                             "tensorflow, jax or torch to train")
    assert not out.exists()


@openvino_only
def test_list_and_doctor_know_openvino(capsys):
    assert cli.main(["list", "squeezenet1_1", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert "openvino" in row["backends"]["predict"]
    assert "openvino" not in row["backends"]["train"]
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    version = backend.framework_version()
    assert version != "unknown"
    assert f"openvino {version}" in out and "inference only" in out
    assert "self-check" in out and "PASS" in out


@openvino_only
def test_predict_command_runs_on_openvino(tmp_path, capsys):
    """``multinet predict`` on the cat photo, a weights file and both data formats:
    the same classes and scores."""
    from pathlib import Path

    cat = Path(multinet.__file__).parent / "data" / "cat.jpg"
    weights = tmp_path / "squeezenet1_1.weights.h5"
    model = multinet.create_model("squeezenet1_1")
    model.set_weights(parity.seeded_weights(model, "squeezenet1_1"))
    model.save_weights(weights)
    tops = []
    for data_format in ("channels_last", "channels_first"):
        status = cli.main(["predict", str(cat), "-m", "squeezenet1_1", "-w", str(weights),
                           "--top", "5", "--json", "--data-format", data_format])
        captured = capsys.readouterr()
        assert status == 0, captured.err
        tops.append(json.loads(captured.out)["predictions"][0]["top"])
    assert len(tops[0]) == 5
    assert [row["wnid"] for row in tops[0]] == [row["wnid"] for row in tops[1]]
    scores = [[row["score"] for row in top] for top in tops]
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-4)
    assert scores[0] == sorted(scores[0], reverse=True) and 0 < scores[0][0] <= 1


@openvino_only
def test_export_names_the_backends_that_export(tmp_path, capsys):
    model = multinet.create_model("squeezenet1_1", input_shape=(67, 67, 3))
    message = "the openvino backend exports nothing; use KERAS_BACKEND=tensorflow, jax or torch"
    with pytest.raises(multinet.ExportError, match=f"^{message}$"):
        multinet.export(model, tmp_path / "squeezenet1_1.onnx", "onnx")
    status = cli.main(["export", "squeezenet1_1", "-w", "random", "--format", "openvino",
                       "-o", str(tmp_path / "squeezenet1_1.xml")])
    captured = capsys.readouterr()
    assert status != 0 and captured.err.strip().splitlines() == [
        f"multinet export: error: {message}"]
    assert list(tmp_path.iterdir()) == []
