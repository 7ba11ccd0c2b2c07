"""The ``multinet`` command, run as a user runs it: the installed script in a
subprocess, on the backend of this session (KERAS_BACKEND is inherited), with
a temporary KERAS_HOME and MULTINET_OFFLINE=1. Nothing is downloaded.

Weight files are made here in the published layouts (torchvision
``.safetensors``, the legacy keras-squeezenet HDF5), so predictions can be
checked: one file's classifier says "tabby" for any image, and a seeded file
is checked against the same pipeline run in this process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import weight_fixtures as wf

import multinet
from multinet import backend, cli
from multinet.cli import common, doctor

SCRIPT = Path(sys.executable).with_name("multinet")
CAT = Path(multinet.__file__).parent / "data" / "cat.jpg"
TABBY = "tabby"
TABBY_INDEX = 281
# Lines TensorFlow writes to stderr at import whatever TF_CPP_MIN_LOG_LEVEL says.
_FRAMEWORK_NOISE = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} |To enable the "
                              r"following instructions)")


def command() -> list[str]:
    if SCRIPT.exists():
        return [str(SCRIPT)]
    return [sys.executable, "-m", "multinet"]  # not installed as a script: same main()


def own_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and
            not _FRAMEWORK_NOISE.match(line)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Images and weight files, and a KERAS_HOME whose cache holds one published file."""
    from PIL import Image
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("cli")
    home = root / "keras_home"
    (home / "models").mkdir(parents=True)
    legacy = home / "models" / "squeezenet_weights_tf_dim_ordering_tf_kernels.h5"
    wf.write_legacy_h5(legacy, wf.keras_squeezenet_layers())

    state = wf.torchvision_state_dict("squeezenet1_1")
    save_file(state, root / "seeded.safetensors")
    tabby = dict(state)
    tabby["classifier.1.weight"] = np.zeros_like(state["classifier.1.weight"])
    tabby["classifier.1.bias"] = np.zeros(1000, np.float32)
    tabby["classifier.1.bias"][TABBY_INDEX] = 10.0
    save_file(tabby, root / "tabby.safetensors")
    save_file(wf.torchvision_state_dict("squeezenet1_0"), root / "squeezenet1_0.safetensors")
    (root / "garbage.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "truncated.h5").write_bytes(legacy.read_bytes()[:3000])

    with Image.open(CAT) as image:
        rgb = image.convert("RGB")
    rgba = rgb.convert("RGBA")
    rgba.save(root / "cat_rgba.png")
    rgb.convert("L").save(root / "cat_gray.png")
    rgb.convert("P", palette=Image.ADAPTIVE).save(root / "cat_palette.gif")
    (root / "broken.jpg").write_bytes(CAT.read_bytes()[:200])
    return root


@pytest.fixture(scope="module")
def env(files):
    environ = dict(os.environ, KERAS_HOME=str(files / "keras_home"), MULTINET_OFFLINE="1",
                   TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND=backend.name())
    environ.pop("MULTINET_WEIGHTS_MIRROR", None)
    return environ


def run(env, *args, cwd=None):
    return subprocess.run([*command(), *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def ok(result) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result.stdout


def fails(result, *fragments, status=None):
    """The command failed with one line on stderr holding every fragment."""
    assert result.returncode != 0, result.stdout[-2000:]
    if status is not None:
        assert result.returncode == status
    assert "Traceback" not in result.stderr
    lines = own_lines(result.stderr)
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1, result.stderr
    assert lines[-1] == errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def offline(monkeypatch, files):
    """In-process calls of ``cli.main`` see the same environment as the subprocesses."""
    monkeypatch.setenv("KERAS_HOME", str(files / "keras_home"))
    monkeypatch.setenv("MULTINET_OFFLINE", "1")
    monkeypatch.delenv("MULTINET_WEIGHTS_MIRROR", raising=False)


def call(capsys, *args):
    """``cli.main`` in this process: (status, stdout, stderr)."""
    try:
        status = cli.main([str(a) for a in args])
    except SystemExit as exit_info:
        status = exit_info.code
    out, err = capsys.readouterr()
    return status, out, err


def fails_here(capsys, *args, status=None, contains=()):
    code, out, err = call(capsys, *args)
    assert code != 0 and (status is None or code == status), out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0], err
    for fragment in contains:
        assert fragment in lines[0], lines[0]
    return lines[0]


def expected_top(weights_path, image, *, preprocessing, size, top=5, **options):
    """The pipeline predict documents, run in this process."""
    model = multinet.create_model("squeezenet1_1", input_shape=(size, size, 3), **options)
    multinet.load_weights(model, str(weights_path))
    crop = {"crop": size} if preprocessing == "torch" else {"target_size": (size, size)}
    x = multinet.load_image(str(image), **crop)[None]
    preds = model.predict(multinet.preprocess_input(x, preprocessing), verbose=0)
    return multinet.decode_predictions(preds, top=top)[0]


# --- the commands ---------------------------------------------------------------


def test_python_m_version_and_help(env, capsys):
    out = ok(subprocess.run([sys.executable, "-m", "multinet", "--version"], env=env,
                            capture_output=True, text=True, timeout=300))
    assert out.strip() == f"multinet {multinet.__version__} (Keras {keras.__version__})"
    status, out, _ = call(capsys, "--help")
    assert status == 0
    for name in ("list", "info", "predict", "convert", "bench", "doctor", "demo"):
        assert re.search(rf"^\s+{name}\s+\S", out, re.M), name


def test_list(env):
    out = ok(run(env, "list"))
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert sorted(rows) == multinet.list_models()
    assert "1,235,496" in rows["squeezenet1_1"] and "224x224" in rows["squeezenet1_1"]
    assert "torchvision*" in rows["squeezenet1_1"] and "keras-squeezenet" in rows["squeezenet1_1"]
    assert "keras*" in rows["vgg16"] and "138,357,544" in rows["vgg16"]


def test_list_json_and_patterns(offline, capsys):
    status, out, _ = call(capsys, "list", "vgg1*", "--json")
    assert status == 0
    data = json.loads(out)
    assert [d["name"] for d in data] == ["vgg11", "vgg13", "vgg16", "vgg19"]
    assert data[2]["parameters"] == 138_357_544 and data[2]["default_weights"] == "keras"
    status, out, _ = call(capsys, "list", "squeeze")  # no wildcard: a substring
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["squeezenet1_0",
                                                                  "squeezenet1_1"]
    fails_here(capsys, "list", "resnet*", contains=["no model matches 'resnet*'"])


def test_info(env, files):
    out = ok(run(env, "info", "squeezenet1_1"))
    assert out.startswith("squeezenet1_1: SqueezeNet 1.1")
    assert re.search(r"parameters\s+1,235,496", out)
    assert re.search(r"default input\s+224x224", out)
    assert "ceil_mode=True" in out and "dropout=0.5" in out
    assert "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth" in out
    assert "sha256 b8a52dc0 (prefix)" in out
    assert "no (would be " in out  # torchvision: not cached
    cached = files / "keras_home" / "models" / "squeezenet_weights_tf_dim_ordering_tf_kernels.h5"
    assert f"yes, {cached}" in out
    assert re.search(r"keras-squeezenet: .*\n(.*\n)*?\s+preprocessing\s+caffe", out)


def test_info_json(offline, capsys):
    status, out, _ = call(capsys, "info", "vgg16", "--json")
    assert status == 0
    data = json.loads(out)
    keras_entry = data["weights"][0]
    assert keras_entry["name"] == "keras" and keras_entry["default"]
    assert keras_entry["file"]["hash"] == "64373286793e3c8b2b4e3219cbf3544b"
    assert keras_entry["file"]["hash_algorithm"] == "md5"
    assert keras_entry["notop_file"]["hash"] == "6d6bbae143d832006294945121d1f1fc"
    assert keras_entry["preprocessing"] == "caffe" and not keras_entry["file"]["cached"]
    assert data["parameters"] == 138_357_544 and data["min_size"] == 32


def test_predict_labels_for_every_image_mode(env, files):
    images = [CAT, files / "cat_rgba.png", files / "cat_gray.png", files / "cat_palette.gif"]
    result = run(env, "predict", *images, "-m", "squeezenet1_1", "-w",
                 files / "tabby.safetensors", "--top", "3", "--json")
    data = json.loads(ok(result))
    assert data["model"] == "squeezenet1_1" and data["preprocessing"] == "torch"
    assert data["backend"] == backend.name() and data["random_weights"] is False
    assert [p["image"] for p in data["predictions"]] == [str(i) for i in images]
    score = np.exp(10.0) / (np.exp(10.0) + 999)
    for item in data["predictions"]:
        assert [row["rank"] for row in item["top"]] == [1, 2, 3]
        best = item["top"][0]
        assert (best["label"], best["wnid"]) == (TABBY, "n02123045")
        assert best["score"] == pytest.approx(score, rel=1e-4)
    assert "4/4" not in result.stderr  # --json without a TTY: no progress bar


def test_predict_matches_the_documented_pipeline(env, files):
    weights = files / "seeded.safetensors"
    expected = expected_top(weights, CAT, preprocessing="torch", size=224, top=3)
    images = [CAT, files / "cat_rgba.png", CAT]
    labels = [label for _, label, _ in expected]
    scores = [score for *_, score in expected]
    result = run(env, "predict", *images, "-m", "squeezenet1_1", "-w", weights, "--top", "3",
                 "--batch-size", "3", "--json")
    data = json.loads(ok(result))
    assert data["data_format"] == "channels_last"  # Keras' default
    for item in data["predictions"]:  # opaque RGBA is the same picture as the JPEG
        assert [r["label"] for r in item["top"]] == labels
        np.testing.assert_allclose([r["score"] for r in item["top"]], scores, rtol=1e-3,
                                   atol=1e-6)
    # channels_first, one image per batch, text output; more images than the batch
    # size and no --json: a progress bar on stderr.
    result = run(env, "predict", *images, "-m", "squeezenet1_1", "-w", weights, "--top", "3",
                 "--batch-size", "1", "--data-format", "channels_first")
    out = ok(result).splitlines()
    assert out[0] == (f"squeezenet1_1 with weights file {weights} (safetensors), torch "
                      f"preprocessing, 224x224, {backend.name()} channels_first")
    for i, image in enumerate(images):
        assert out[1 + 4 * i] == str(image)
        for rank in range(3):
            assert out[2 + 4 * i + rank] == (f"  {rank + 1:>2}. {scores[rank]:7.2%}  "
                                             f"{labels[rank]} ({expected[rank][0]})")
    assert "3/3" in result.stderr and "image" in result.stderr


def test_predict_from_cached_entry_and_random(env, files):
    legacy = files / "keras_home" / "models" / "squeezenet_weights_tf_dim_ordering_tf_kernels.h5"
    expected = expected_top(legacy, CAT, preprocessing="caffe", size=227, ceil_mode=False)
    out = ok(run(env, "predict", CAT, "-m", "squeezenet1_1", "-w", "keras-squeezenet"))
    assert "weights 'keras-squeezenet', caffe preprocessing, 227x227" in out
    labels = re.findall(r"%\s+(\S+) \(n\d+\)", out)
    assert labels == [label for _, label, _ in expected]



def test_predict_random_weights_warns(offline, capsys):
    status, out, err = call(capsys, "predict", CAT, "-m", "squeezenet1_1", "-w", "random",
                            "--top", "1", "--json")
    assert status == 0
    data = json.loads(out)
    assert data["random_weights"] is True and len(data["predictions"][0]["top"]) == 1
    assert "warning: squeezenet1_1 has RANDOM weights (-w random)" in err


def test_convert_legacy_and_torchvision(env, files, tmp_path):
    legacy = files / "keras_home" / "models" / "squeezenet_weights_tf_dim_ordering_tf_kernels.h5"
    dst = tmp_path / "keras_squeezenet.weights.h5"
    out = ok(run(env, "convert", legacy, dst, "-m", "squeezenet1_1"))
    assert "keras_legacy_h5 layout, 26 layers, 1,235,496 values" in out
    assert re.search(r"fire9/expand3x3 -> fire9_expand3x3\s+\(3, 3, 64, 256\), \(256,\)", out)
    assert "verified" in out and "max difference 0.0e+00" in out
    # Plain Keras reads the result; it equals the legacy file loaded by multinet.
    plain = multinet.create_model("squeezenet1_1", ceil_mode=False, input_shape=(227, 227, 3))
    plain.load_weights(str(dst))
    reference = multinet.create_model("squeezenet1_1", ceil_mode=False,
                                      input_shape=(227, 227, 3))
    multinet.load_weights(reference, str(legacy))
    for a, b in zip(plain.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    # What convert recorded makes predict feed it right: caffe, 227, ceil_mode=False.
    spec = multinet.get_model_spec("squeezenet1_1")
    info = common.describe_weights_file(spec, str(dst))
    assert (info["layout"], info["preprocessing"], info["input_size"]) == ("keras_v3", "caffe",
                                                                          227)
    assert info["arch_options"] == {"ceil_mode": False}



def test_convert_torchvision_and_mistakes(offline, files, tmp_path, capsys):
    dst = tmp_path / "torchvision.weights.h5"
    status, out, _ = call(capsys, "convert", files / "seeded.safetensors", dst, "-m",
                          "squeezenet1_1")
    assert status == 0
    assert "safetensors layout, 26 layers" in out
    assert re.search(r"features\.0 -> conv1\s+\(3, 3, 3, 64\)", out)
    assert re.search(r"classifier\.1 -> conv10\s+\(1, 1, 512, 1000\)", out)
    info = common.describe_weights_file(multinet.get_model_spec("squeezenet1_1"), str(dst))
    assert (info["preprocessing"], info["input_size"]) == ("torch", 224)
    fails_here(capsys, "convert", files / "seeded.safetensors", dst, "-m", "squeezenet1_1",
               contains=["exists; pass --force"])
    fails_here(capsys, "convert", files / "seeded.safetensors", tmp_path / "x.h5", "-m",
               "squeezenet1_1", contains=["must end in .weights.h5"])
    fails_here(capsys, "predict", CAT, "-m", "squeezenet1_0", "-w", dst,
               contains=["converted for squeezenet1_1, not squeezenet1_0"])
    fails_here(capsys, "convert", files / "squeezenet1_0.safetensors", tmp_path /
               "y.weights.h5", "-m", "squeezenet1_1", contains=["shape mismatch",
                                                                 "another model"])
    assert not (tmp_path / "y.weights.h5").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["torchvision.weights.h5"]  # no leftovers


def test_bench(env):
    data = json.loads(ok(run(env, "bench", "-m", "squeezenet1_1", "--batch-size", "1", "2",
                             "--image-size", "64", "--repeats", "2", "--warmup", "1",
                             "--data-format", "channels_first", "--json")))
    assert [r["batch_size"] for r in data] == [1, 2]
    for result in data:
        assert result["status"] == "ok" and result["images_per_s"] > 0
        assert result["backend"] == backend.name() and result["image_size"] == 64
        assert result["data_format"] == "channels_first" and result["model"] == "squeezenet1_1"
        assert result["schema"] == "multinet.benchmark/1"
        assert len(result["seconds"]) == 2


def test_doctor(env, files, tmp_path):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "keras.json").write_text(json.dumps({"image_data_format": "channels_first"}))
    cached = files / "keras_home" / "models" / "squeezenet_weights_tf_dim_ordering_tf_kernels.h5"
    (home / "models" / cached.name).write_bytes(cached.read_bytes())
    out = ok(run(dict(env, KERAS_HOME=str(home)), "doctor"))
    assert re.search(rf"^backend\s+{backend.name()} \S+ \(from KERAS_BACKEND\)", out, re.M)
    assert re.search(rf"{backend.name()} {re.escape(backend.framework_version())}", out)
    installed = re.search(r"^installed\s+(.*)$", out, re.M).group(1)
    assert all(name in installed for name in ("tensorflow", "jax", "torch"))
    assert f"{backend.name()} (not installed)" not in installed
    assert re.search(r"^devices\s+(CPU only|GPU)", out, re.M)
    assert f"channels_first (from {home / 'keras.json'})" in out
    assert f"weights cache {home / 'models'} (1 file, 4.9 MiB)" in out
    assert re.search(r"squeezenet_weights_tf_dim_ordering_tf_kernels.h5 .* "
                     r"squeezenet1_1/keras-squeezenet", out)
    assert re.search(r"self-check .* max output difference \S+: PASS", out)


def test_doctor_fails_when_the_formats_disagree(offline, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "self_check", lambda: (False, 0.25))
    assert cli.main(["doctor"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out
    assert captured.err.strip().endswith("self-check failed: outputs differ by 0.25 between "
                                         "data formats")


def test_demo(env, files):
    """The full demo, as a user runs it, within its time budget."""
    result = run(env, "demo")
    out = ok(result)
    w = float(re.search(r"learned w = (\S+),", out).group(1))
    assert abs(w - 3.0) < 0.05
    accuracy = float(re.search(r"test accuracy: (\S+)% on 450 images", out).group(1))
    assert accuracy >= 95.0
    assert "predictions identical on all 450 test images" in out
    # The cache holds (synthetic) keras-squeezenet weights; the demo finds and uses them.
    cat = out.split("[4/5]")[1].split("[5/5]")[0]
    assert "squeezenet1_1 with its pretrained 'keras-squeezenet' weights" in cat
    legacy = files / "keras_home" / "models" / "squeezenet_weights_tf_dim_ordering_tf_kernels.h5"
    expected = expected_top(legacy, CAT, preprocessing="caffe", size=227, top=3,
                            ceil_mode=False)
    assert re.findall(r"%\s+(\S+)$", cat, re.M) == [label for _, label, _ in expected]
    speeds = re.findall(r"^\s+(channels_last|channels_first)\s+([\d,]+) img/s", out, re.M)
    assert [fmt for fmt, _ in speeds] == ["channels_last", "channels_first"]
    assert all(float(rate.replace(",", "")) > 0 for _, rate in speeds)
    seconds = float(re.search(r"Done in (\d+) s", out).group(1))
    assert seconds < 180
    assert "Epoch 30/30" in out  # Keras progress bars


def test_demo_without_cached_weights_says_so(tmp_path, monkeypatch):
    from multinet import demo

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("MULTINET_OFFLINE", raising=False)  # the demo never downloads anyway
    lines = []
    result = demo.classify_cat(lambda text: lines.append(text), "channels_last")
    assert result["pretrained"] is False and len(result["top"]) == 3
    text = "\n".join(lines)
    assert ("No pretrained squeezenet1_1 weights are available offline: "
            f"squeezenet1_1-b8a52dc0.pth is not in {tmp_path / 'models'}.") in text
    assert "multinet predict IMAGE -m squeezenet1_1 -w imagenet" in text
    assert "RANDOM weights" in text
    assert not (tmp_path / "models").exists()  # nothing was downloaded


# --- mistakes: one line on stderr, a non-zero status, no traceback -------------------


def test_missing_image(env, files):
    fails(run(env, "predict", files / "nope.jpg", "-m", "squeezenet1_1", "-w", "random"),
          "image file not found:", "nope.jpg")


def test_unknown_model_suggests_close_names(env, offline, capsys):
    line = fails(run(env, "predict", CAT, "-m", "squeezenet11"), "unknown model 'squeezenet11'")
    assert "did you mean squeezenet1_1, squeezenet1_0?" in line
    line = fails_here(capsys, "info", "vgg61", contains=["unknown model 'vgg61'",
                                                         "did you mean"])
    assert "vgg16" in line


def test_weights_for_another_model(env, files):
    other = files / "squeezenet1_0.safetensors"
    fails(run(env, "predict", CAT, "-m", "squeezenet1_1", "-w", other),
          "cannot load weights", "conv1", "shape mismatch", "another model")


def test_corrupt_weights_file(env, files):
    fails(run(env, "predict", CAT, "-m", "squeezenet1_1", "-w", files / "garbage.pth"),
          "cannot read weights file", "unrecognized weights format")


def test_corrupt_inputs_in_process(offline, files, capsys):
    fails_here(capsys, "predict", files / "broken.jpg", "-m", "squeezenet1_1", "-w", "random",
               contains=["cannot read image", "broken.jpg"])
    fails_here(capsys, "predict", CAT, files / "garbage.pth", "-m", "squeezenet1_1", "-w",
               "random", contains=["cannot read image", "garbage.pth"])
    fails_here(capsys, "convert", files / "truncated.h5", files / "t.weights.h5", "-m",
               "squeezenet1_1", contains=["truncated.h5"])
    fails_here(capsys, "predict", CAT, "-m", "squeezenet1_1", "-w", files / "missing.pth",
               contains=["weights file not found"])
    fails_here(capsys, "predict", CAT, "-m", "squeezenet1_1", "-w", "imagenet1k",
               contains=["unknown weights 'imagenet1k'", "keras-squeezenet", "'random'"])


def test_offline_without_the_file(env):
    line = fails(run(env, "predict", CAT, "-m", "squeezenet1_1", "-w", "imagenet"),
                 "squeezenet1_1-b8a52dc0.pth", "MULTINET_OFFLINE", "-w PATH")
    assert "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth" in line


def test_bad_number_exits_2(env):
    fails(run(env, "predict", CAT, "-m", "squeezenet1_1", "--top", "0"),
          "argument --top", "'0'", status=2)


@pytest.mark.parametrize("args", [
    ("predict", CAT, "-m", "squeezenet1_1", "--top", "0"),
    ("predict", CAT, "-m", "squeezenet1_1", "--top", "-3"),
    ("predict", CAT, "-m", "squeezenet1_1", "--top", "2.5"),
    ("predict", CAT, "-m", "squeezenet1_1", "--top", "1001"),
    ("predict", CAT, "-m", "squeezenet1_1", "--batch-size", "0"),
    ("predict", CAT, "-m", "squeezenet1_1", "--batch-size", "-1"),
    ("predict", CAT, "-m", "squeezenet1_1", "--batch-size", "four"),
    ("bench", "-m", "squeezenet1_1", "--repeats", "0"),
    ("bench", "-m", "squeezenet1_1", "--repeats", "-2"),
    ("demo", "--epochs", "0"),
])
def test_bad_numbers_in_process(args, capsys):
    option, value = args[-2], args[-1]
    line = fails_here(capsys, *args, status=2, contains=[f"argument {option}", value])
    assert line.startswith(f"multinet {args[0]}: error: ")


def test_debug_shows_the_traceback(env):
    result = run(env, "predict", "nope.jpg", "-m", "squeezenet1_1", "--debug")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "image file not found: nope.jpg" in result.stderr

