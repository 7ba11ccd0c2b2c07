"""``multinet.train``, ``multinet train`` and ``multinet evaluate`` on real
image folders (the demo's handwritten digits written as PNG files).

The kill test runs ``python -m multinet train`` in a subprocess, kills it with
SIGKILL as soon as the first epoch's backup is in place (the process is then
inside the second epoch), runs the same command again and checks that the
training resumed there, finished, and left only complete files. Its output
folder then serves the evaluation tests, whose numbers are recomputed here
from ``model.predict`` on images read with Pillow and scaled with numpy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import own_lines

import multinet
from multinet import backend, distribute, training
from multinet.cli.main import main
from multinet.demo import load_digits

MODEL = "squeezenet1_1"
SIZE = 24
TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype="float32")
TORCH_STD = np.array([0.229, 0.224, 0.225], dtype="float32")


def write_digits(folder: Path, classes=(0, 1, 2, 3), per_class=50, size=SIZE) -> Path:
    """``per_class`` digit images of each of ``classes`` as PNG files."""
    from PIL import Image

    images, labels = load_digits()
    for label in classes:
        sub = folder / str(label)
        sub.mkdir(parents=True)
        for index in np.flatnonzero(labels == label)[:per_class]:
            pixels = Image.fromarray(np.round(images[index] * 255).astype("uint8"), mode="L")
            pixels.resize((size, size), Image.BILINEAR).save(sub / f"{index:04d}.png")
    return folder


def environ() -> dict:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND=backend.name(),
                PYTHONPATH=str(Path(multinet.__file__).parent.parent))


def one_error(stderr: str, *fragments) -> str:
    lines = own_lines(stderr)
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- kill and resume --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A training killed in its second epoch and run again to the end."""
    root = tmp_path_factory.mktemp("train")
    data = write_digits(root / "data")
    (data / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = root / "out"
    args = [sys.executable, "-m", "multinet", "train", str(data), "-m", MODEL, "--out",
            str(out), "--epochs", "3", "--batch-size", "16", "--image-size", str(SIZE),
            "--lr", "0.0005", "--seed", "7"]
    backup = out / training.BACKUP_DIR / "phase1" / "latest.weights.h5"
    first = subprocess.Popen(args, env=environ(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not backup.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    _, killed_err = first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL, killed_err
    assert backup.exists(), killed_err
    assert not (out / "last.keras").exists()
    second = subprocess.run(args, env=environ(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"data": data, "out": out, "killed": killed_err, "stderr": second.stderr,
            "stdout": second.stdout}


def test_a_killed_training_resumes_and_finishes(trained):
    out = trained["out"]
    assert "Traceback" not in trained["stderr"]
    assert "skipped 1 unreadable image(s)" in trained["stderr"]
    assert "resuming after epoch" in trained["stderr"]
    resumed = int(trained["stderr"].split("resuming after epoch ")[1].split()[0])
    assert 1 <= resumed < 3
    assert "epoch 3/3" not in trained["killed"]
    lines = [line for line in trained["stderr"].splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == [
        f"epoch {e}/3" for e in range(resumed + 1, 4)]
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert all(np.isfinite(row[k]) for row in history for k in ("loss", "val_accuracy"))
    # Every file complete and readable; no backup or temporary file left.
    assert sorted(p.name for p in out.iterdir()) == sorted(training.OUTPUT_FILES)
    assert json.loads((out / "classes.json").read_text()) == ["0", "1", "2", "3"]
    run = json.loads((out / "run.json").read_text())
    assert run["finished"] is True
    assert run["best_val_accuracy"] == max(row["val_accuracy"] for row in history)
    model = keras.saving.load_model(out / "last.keras")
    assert model.output_shape == (None, 4)
    best, _, _ = training.load_trained(MODEL, out / "best.weights.h5")
    assert best.output_shape == (None, 4)
    from PIL import Image

    with Image.open(out / "curves.png") as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_the_same_command_again_is_refused_once_finished(trained):
    before = snapshot(trained["out"])
    args = [str(trained["data"]), "-m", MODEL, "--out", str(trained["out"]), "--epochs", "3",
            "--batch-size", "16", "--image-size", str(SIZE), "--lr", "0.0005", "--seed", "7"]
    result = subprocess.run([sys.executable, "-m", "multinet", "train", *args], env=environ(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    one_error(result.stderr, "holds this training, finished", "--force")
    assert snapshot(trained["out"]) == before


# --- evaluate ---------------------------------------------------------------------------


def reference_inputs(paths, size, data_format):
    """Images read with Pillow and scaled with numpy (torch mean and std)."""
    from PIL import Image

    batch = []
    for path in paths:
        with Image.open(path) as image:
            pixels = image.convert("RGB").resize((size, size), Image.BILINEAR)
        x = (np.asarray(pixels, dtype="float32") / 255.0 - TORCH_MEAN) / TORCH_STD
        batch.append(x.transpose(2, 0, 1) if data_format == "channels_first" else x)
    return np.stack(batch)


@pytest.mark.parametrize("weights", ["best.weights.h5", "last.keras"])
def test_evaluate_numbers_match_numpy(trained, weights, capsys):
    out, data = trained["out"], trained["data"]
    plot = out.parent / f"confusion-{weights}.png"
    status = main(["evaluate", str(data), "-m", MODEL, "-w", str(out / weights), "--plot",
                   str(plot), "--json"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "skipped 1 unreadable image(s)" in captured.err
    report = json.loads(captured.out)
    # Independently: the model's probabilities, then numpy.
    if weights.endswith(".keras"):
        model = keras.saving.load_model(out / weights)
    else:
        model, _, _ = training.load_trained(MODEL, out / weights)
    run = json.loads((out / "run.json").read_text())
    assert run["preprocessing"] == "torch"
    names = ["0", "1", "2", "3"]
    paths = sorted(p for p in data.rglob("*.png") if p.name != "broken.png")
    labels = np.array([names.index(p.parent.name) for p in paths])
    probs = model.predict(reference_inputs(paths, SIZE, run["data_format"]), verbose=0)
    predicted = probs.argmax(axis=1)
    assert report["images"] == len(paths) == 200
    assert report["top1"] == pytest.approx(np.mean(predicted == labels), abs=1e-9)
    top4 = np.argsort(-probs, axis=1)[:, :4]
    assert report["top5_k"] == 4
    assert report["top5"] == pytest.approx(np.mean([y in t for y, t in zip(labels, top4)]))
    matrix = np.zeros((4, 4), dtype=int)
    for truth, guess in zip(labels, predicted):
        matrix[truth, guess] += 1
    assert report["confusion_matrix"] == matrix.tolist()
    for index, name in enumerate(names):
        assert report["per_class"][name]["accuracy"] == pytest.approx(
            matrix[index, index] / matrix[index].sum())
    from PIL import Image

    with Image.open(plot) as image:
        assert image.format == "PNG"


def test_evaluate_text_output_and_wrong_model(trained, capsys):
    out, data = trained["out"], trained["data"]
    plot = out.parent / "text.png"
    assert main(["evaluate", str(data), "-m", MODEL, "-w", str(out / "best.weights.h5"),
                 "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "top-1 accuracy" in text and "top-4 accuracy" in text and str(plot) in text
    assert main(["evaluate", str(data), "-m", "mobilenet_v3_small", "-w",
                 str(out / "best.weights.h5")]) == 1
    one_error(capsys.readouterr().err, "trained as squeezenet1_1, not mobilenet_v3_small")


# --- bad input --------------------------------------------------------------------------


def test_bad_input_is_one_line_and_touches_nothing(trained, tmp_path, capsys, monkeypatch):
    data = trained["data"]
    empty = tmp_path / "empty"
    empty.mkdir()
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "a.png").write_bytes((data / "0" / os.listdir(data / "0")[0]).read_bytes())
    broken = tmp_path / "broken"
    (broken / "x").mkdir(parents=True)
    (broken / "y").mkdir()
    (broken / "x" / "a.png").write_bytes(b"nothing")
    (broken / "y" / "b.jpg").write_bytes(b"nothing")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    wrong_weights = tmp_path / "mobilenet.weights.h5"
    multinet.create_model("mobilenet_v3_small", input_shape=(32, 32, 3),
                          data_format="channels_last").save_weights(wrong_weights)
    out = tmp_path / "out"
    cases = [
        ([str(empty)], "is empty"),
        ([str(loose)], "no class subfolders"),
        ([str(broken)], "no readable images"),
        ([str(tmp_path / "missing")], "data folder not found"),
        ([str(data), "-w", str(wrong_weights)], "another model"),
        ([str(data), "--devices", "64"], "64 devices were asked for"),
        ([str(data), "--batch-size", "500"], "larger than the"),
    ]
    common = ["-m", MODEL, "--out", str(out), "--epochs", "1", "--image-size", str(SIZE)]
    for args, fragment in cases:
        assert main(["train", *args, *common]) == 1, args
        one_error(capsys.readouterr().err, fragment)
        assert not out.exists(), args
    # An --out that holds something else, or another training: refused, untouched.
    for folder, fragment in ((other, "holds no multinet training"),
                             (trained["out"], "holds a different training")):
        before = snapshot(folder)
        assert main(["train", str(data), "-m", MODEL, "--out", str(folder), "--epochs", "1",
                     "--image-size", str(SIZE)]) == 1
        one_error(capsys.readouterr().err, fragment, "--force")
        assert snapshot(folder) == before
    # A global batch the device count does not divide (four devices seen here).
    monkeypatch.setattr(distribute, "device_count", lambda: 4)
    assert main(["train", str(data), "--devices", "4", "--batch-size", "6", *common]) == 1
    one_error(capsys.readouterr().err, "--batch-size 6 is not divisible by the device count 4")
    assert not out.exists()
    assert main(["demo", "--export-digits", str(other)]) == 1
    one_error(capsys.readouterr().err, "not an empty folder")


# --- two-phase fine-tuning --------------------------------------------------------------


class Watch(keras.callbacks.Callback):
    """The learning rate at each epoch's start, the backbone's weights at its end."""

    def __init__(self):
        super().__init__()
        self.rates, self.weights = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_epoch_end(self, epoch, logs=None):
        backbone = self.model.get_layer("backbone")
        self.weights.append({w.path: keras.ops.convert_to_numpy(w).copy()
                             for w in backbone.weights})


def test_two_phase_fine_tuning(trained, tmp_path):
    model_name = MODEL
    pretrained = tmp_path / "pretrained.weights.h5"
    source = multinet.create_model(model_name, input_shape=(SIZE, SIZE, 3),
                                   data_format="channels_last")
    # "Pretrained": He-normal kernels, whose features do not vanish with depth.
    rng = np.random.default_rng(0)
    for weight in source.weights:
        if weight.path.endswith("kernel"):
            fan_in = int(np.prod(weight.shape[:-1]))
            weight.assign(rng.normal(0.0, np.sqrt(2.0 / fan_in), weight.shape))
    source.save_weights(pretrained)
    start = {w.path: keras.ops.convert_to_numpy(w) for w in source.weights}
    watch = Watch()
    summary = training.train(trained["data"], model_name, tmp_path / "out", weights=pretrained,
                             epochs=2, head_epochs=1, freeze_backbone=True, batch_size=16,
                             image_size=SIZE, lr=1e-3, fine_tune_lr=1e-4,
                             data_format="channels_last", callbacks=[watch], verbose=0)
    assert summary["best_val_accuracy"] is not None
    assert watch.rates == pytest.approx([1e-3, 1e-4])
    after_head, after_all = watch.weights
    assert set(after_head) <= set(start)
    for name, value in after_head.items():  # phase 1: the backbone as loaded
        np.testing.assert_array_equal(value, start[name], err_msg=name)
    for name, value in after_all.items():
        if name.endswith("kernel"):  # phase 2: the backbone trains
            assert not np.array_equal(value, start[name]), name
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["head"] == "new"
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert [(row["epoch"], row["phase"]) for row in history] == [(1, 1), (2, 2)]
    model = keras.saving.load_model(tmp_path / "out" / "last.keras")
    assert model.output_shape == (None, 4)


def test_freeze_backbone_needs_pretrained_weights(trained, tmp_path):
    with pytest.raises(training.TrainingError, match="needs pretrained weights"):
        training.train(trained["data"], MODEL, tmp_path / "out", freeze_backbone=True)
    assert not (tmp_path / "out").exists()


# --- the digits: export and the accuracy bar -------------------------------------------


def test_digits_reach_95_percent(tmp_path, capsys):
    """The exported digits, mobilenet_v3_small from random weights, at a cheap setting."""
    assert main(["demo", "--export-digits", str(tmp_path / "digits"), "--export-size",
                 "32"]) == 0
    assert "wrote 1797 digit images" in capsys.readouterr().out
    folders = sorted(p.name for p in (tmp_path / "digits").iterdir())
    assert folders == [str(d) for d in range(10)]
    assert sum(1 for _ in (tmp_path / "digits").rglob("*.png")) == 1797
    summary = training.train(tmp_path / "digits", "mobilenet_v3_small", tmp_path / "out",
                             epochs=8, lr=2e-3, image_size=32, batch_size=32, augment=False,
                             verbose=0)
    assert summary["best_val_accuracy"] >= 0.95, summary


def test_mixed_precision_trains_in_float16_and_restores_the_policy(trained, tmp_path):
    """--mixed-precision: the layers compute in float16 with float32 variables (Keras'
    mixed_float16), the loss stays finite, the saved model keeps the policy, and the
    global policy is float32 again afterwards."""
    assert keras.config.dtype_policy().name == "float32"
    summary = training.train(trained["data"], MODEL, tmp_path / "out", epochs=1,
                             batch_size=16, image_size=SIZE, mixed_precision=True,
                             augment=False, verbose=0)
    assert keras.config.dtype_policy().name == "float32"
    assert summary["best_val_accuracy"] is not None
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    model = keras.saving.load_model(tmp_path / "out" / "last.keras")
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and {layer.dtype_policy.name for layer in convs} == {"mixed_float16"}
    assert {layer.compute_dtype for layer in convs} == {"float16"}
    assert {v.dtype for layer in convs for v in layer.weights} == {"float32"}
