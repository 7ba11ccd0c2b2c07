"""The ``multinet`` command, run as a user runs it: the installed script in a
subprocess, on the backend of this session (KERAS_BACKEND is inherited), with
a temporary KERAS_HOME and MULTINET_OFFLINE=1; or ``multinet.cli.main`` in
this process where a test must reach inside (a test-only registered model, a
model builder that must not be called). Nothing is downloaded.

Weight files are made here in the published layouts (torchvision
``.safetensors``, the legacy keras-squeezenet HDF5). The labels ``predict``
must give come from pipelines that do not use multinet: Pillow and numpy
prepare the image (``tests/references.py``), and the network is
``tests/torch_reference.py`` (live where PyTorch is installed, else its
stored answer in ``tests/data/cli_expected.json``), the keras-squeezenet
network rebuilt from plain ``keras.layers``, or, for the test-only model, a
numpy matrix product.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest
import references as ref
import weight_fixtures as wf
from helpers import own_lines

import multinet
from multinet import backend, cli, registry
from multinet.cli import common, doctor

SCRIPT = Path(sys.executable).with_name("multinet")
CAT = Path(multinet.__file__).parent / "data" / "cat.jpg"
CLI_DIR = Path(multinet.__file__).parent / "cli"
CLI_EXPECTED = wf.DATA / "cli_expected.json"
LEGACY_NAME = "squeezenet_weights_tf_dim_ordering_tf_kernels.h5"
BACKENDS = ("tensorflow", "jax", "torch")


def command() -> list[str]:
    if SCRIPT.exists():
        return [str(SCRIPT)]
    return [sys.executable, "-m", "multinet"]  # not installed as a script: same main()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Images and weight files, and a KERAS_HOME whose cache holds one published file."""
    import h5py
    from PIL import Image
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("cli")
    home = root / "keras_home"
    (home / "models").mkdir(parents=True)
    wf.write_legacy_h5(home / "models" / LEGACY_NAME, wf.keras_squeezenet_layers())
    notop = [(n, w) for n, w in wf.keras_squeezenet_layers() if n != "conv10"]
    wf.write_legacy_h5(root / "squeezenet_notop.h5", notop)

    save_file(wf.torchvision_state_dict("squeezenet1_1"), root / "seeded.safetensors")
    save_file(wf.torchvision_state_dict("squeezenet1_0"), root / "squeezenet1_0.safetensors")
    save_file(wf.torchvision_state_dict("squeezenet1_1", classes=10), root / "ft10.safetensors")
    # A fine-tuned 10-class model saved by plain Keras: its file names layers by class
    # and order (conv2d_25 is the model's conv10).
    fine_tuned = multinet.create_model("squeezenet1_1", classes=10, input_shape=(64, 64, 3))
    fine_tuned.save_weights(root / "ft10.weights.h5")
    (root / "converted.weights.h5").write_bytes((root / "ft10.weights.h5").read_bytes())
    with h5py.File(root / "converted.weights.h5", "a") as h5file:
        h5file.attrs[common.MULTINET_ATTRS] = json.dumps({"model": "squeezenet1_1"})
    with h5py.File(root / "nokeras.h5", "w") as h5file:
        h5file.create_dataset("x", data=np.zeros(3))
    (root / "garbage.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "truncated.h5").write_bytes((home / "models" / LEGACY_NAME).read_bytes()[:3000])

    rgb = ref.rgb_image(CAT)
    rgb.convert("RGBA").save(root / "cat_rgba.png")
    rgb.convert("L").save(root / "cat_gray.png")
    rgb.convert("P", palette=Image.ADAPTIVE).save(root / "cat_palette.gif")
    Image.fromarray(ref.structured_images(96, 2)[1].astype(np.uint8)).save(root / "drawn.png")
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


# --- what predict must answer, computed without multinet --------------------------


def seeded_cat_expected(top: int) -> list[tuple[str, str, float]]:
    """The seeded squeezenet1_1 checkpoint on the cat photo (short side 256, crop 224,
    torch scaling): tests/torch_reference.py where PyTorch is installed, else its
    stored answer."""
    stored = json.loads(CLI_EXPECTED.read_text())["squeezenet1_1 seeded cat.jpg"]
    if importlib.util.find_spec("torch") is not None:
        from make_expected import predict_reference

        live = predict_reference("squeezenet1_1", CAT)
        order = np.argsort(-live, kind="stable")[:len(stored["classes"])]
        assert order.tolist() == stored["classes"], "stale: run tests/make_expected.py cli"
        np.testing.assert_allclose(live[order], stored["probabilities"], rtol=1e-4)
    labels = ref.imagenet_labels()
    return [(*labels[c], p) for c, p in zip(stored["classes"], stored["probabilities"])][:top]


def keras_squeezenet_expected(image, top: int) -> list[tuple[str, str, float]]:
    """The legacy keras-squeezenet file in the cache, on the network rebuilt from plain
    keras.layers (floor pooling), the image resized to 227x227, caffe scaling."""
    network = wf.keras_squeezenet_reference(wf.keras_squeezenet_layers())
    x = ref.scale(ref.eval_image(image, 227), "caffe")[None]
    logits = keras.ops.convert_to_numpy(network(x))
    return ref.top_labels(ref.softmax(logits)[0], top)


def labels_of(rows) -> list[str]:
    return [row[1] if isinstance(row, tuple) else row["label"] for row in rows]


def assert_same_top(got_rows, expected, rtol=1e-3):
    assert [r["label"] for r in got_rows] == labels_of(expected)
    np.testing.assert_allclose([r["score"] for r in got_rows], [e[2] for e in expected],
                               rtol=rtol, atol=1e-6)


# --- a test-only model family ---------------------------------------------------------

TINY = "tinynet_test"
TINY_INPUT, TINY_RESIZE, TINY_INTERPOLATION = 16, 20, "bicubic"


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A model registered for one test only: Flatten and a 1000-class Dense on 16x16
    images (so every pixel counts), with one weights entry in the cache whose
    evaluation transform is: short side 20, center crop 16, bicubic, 'tf' scaling."""
    from multinet.models.base import build_model

    def classifier(x, fmt, classes, activation):
        x = keras.layers.Flatten(data_format=fmt, name="flatten")(x)
        return keras.layers.Dense(classes, activation=activation, name="logits")(x)

    def builder(*, include_top, input_tensor, input_shape, pooling, classes,
                classifier_activation, data_format, has_weights=False,
                default_size=TINY_INPUT, compute_format=None, name=None):
        return build_model(
            TINY, features=lambda x, fmt: x, classifier=classifier, include_top=include_top,
            input_tensor=input_tensor, input_shape=input_shape, pooling=pooling,
            classes=classes, classifier_activation=classifier_activation,
            data_format=data_format, compute_format=compute_format, default_size=default_size,
            min_size=4, fixed_top_size=TINY_INPUT, has_weights=has_weights, name=name)

    home = tmp_path / "keras_home"
    (home / "models").mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setenv("MULTINET_OFFLINE", "1")
    monkeypatch.delenv("MULTINET_WEIGHTS_MIRROR", raising=False)
    rng = np.random.default_rng(13)
    kernel = rng.normal(0.0, 0.05, (TINY_INPUT * TINY_INPUT * 3, 1000)).astype("float32")
    bias = rng.normal(0.0, 0.05, 1000).astype("float32")
    path = home / "models" / f"{TINY}.weights.h5"
    model = builder(include_top=True, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", data_format="channels_last")
    model.get_layer("logits").set_weights([kernel, bias])
    model.save_weights(path)
    entry = registry.WeightsSpec(
        name="tiny-entry", url=f"https://example.invalid/weights/{path.name}",
        file_hash=hashlib.md5(path.read_bytes()).hexdigest(), hash_algorithm="md5",
        layout="keras_v3", preprocessing="tf", input_size=TINY_INPUT, resize_size=TINY_RESIZE,
        interpolation=TINY_INTERPOLATION, description="test-only weights")
    family = registry.Family(name="tinytest", head_layers=("logits",),
                             preprocessing={"keras_v3": "tf"})
    registry.register_model(registry.ModelSpec(
        name=TINY, family=family, builder=builder, default_size=TINY_INPUT, min_size=4,
        num_params=kernel.size + bias.size, weights=(entry,), default_weights=entry.name,
        description="a test-only model", fixed_top_size=TINY_INPUT))
    try:
        yield types.SimpleNamespace(kernel=kernel, bias=bias, path=path, entry=entry)
    finally:
        registry._MODELS.pop(TINY, None)


def tiny_expected(tiny, image, resize_size=TINY_RESIZE, interpolation=TINY_INTERPOLATION):
    """The test-only model's class probabilities, in numpy."""
    x = ref.scale(ref.eval_image(image, TINY_INPUT, resize_size, interpolation), "tf")
    return ref.softmax(x.reshape(-1).astype(np.float64) @ tiny.kernel + tiny.bias)


# --- help, version, --debug, and no Keras until needed ------------------------------


def test_python_m_version_and_help(env, capsys):
    out = ok(subprocess.run([sys.executable, "-m", "multinet", "--version"], env=env,
                            capture_output=True, text=True, timeout=300))
    assert out.strip() == f"multinet {multinet.__version__} (Keras {keras.__version__})"
    status, out, _ = call(capsys, "--help")
    assert status == 0
    for name in ("list", "info", "predict", "train", "evaluate", "convert", "export", "bench",
                 "doctor", "demo"):
        assert re.search(rf"^\s+{name}\s+\S", out, re.M), name


def test_help_needs_no_keras(env):
    """With Keras unimportable, --help and --version work; a command says why it cannot run."""
    code = ("import sys\nsys.modules['keras'] = None  # any `import keras` fails\n"
            "from multinet.cli.main import main\n"
            "args = sys.argv[1:]\n"
            "try:\n    status = main(args)\nexcept SystemExit as e:\n    status = e.code\n"
            "print('exit', status, 'keras' in sys.modules and sys.modules['keras'] is not None)")
    for args in (["--help"], ["predict", "--help"], ["convert", "--help"], ["--version"]):
        result = subprocess.run([sys.executable, "-c", code, *args], env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.stdout.splitlines()[-1] == "exit 0 False", result.stderr[-2000:]
        assert "usage: multinet" in result.stdout or "multinet 0" in result.stdout
    result = subprocess.run([sys.executable, "-c", code, "list"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.stdout.splitlines()[-1] == "exit 1 False"
    line = own_lines(result.stderr)
    assert len(line) == 1 and line[0].startswith("multinet: error: the Keras backend "), line


def test_debug_before_or_after_the_command_shows_the_traceback(env, offline, capsys):
    for args in (["--debug", "predict", "nope.jpg", "-m", "squeezenet1_1"],
                 ["predict", "nope.jpg", "-m", "squeezenet1_1", "--debug"],
                 ["--debug", "info", "vgg61"]):
        with pytest.raises(common.CommandError):
            cli.main(args)
    fails_here(capsys, "info", "vgg61", contains=["unknown model 'vgg61'"])
    result = run(env, "--debug", "predict", "nope.jpg", "-m", "squeezenet1_1")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "image file not found: nope.jpg" in result.stderr


def test_the_commands_name_no_model_family():
    """What a family needs comes from the registry: no module of the command names a
    model, a family, a classifier layer or a family's own option (the demo's default
    model aside; "predictions", a VGG layer, is also the key of predict's JSON)."""
    words = {"fire", "ceil_mode"}
    for name in multinet.list_models():
        spec = multinet.get_model_spec(name)
        words |= {name, spec.family.name, *spec.family.head_layers}
    words -= {"predictions"}
    found = []
    for path in sorted(CLI_DIR.glob("*.py")):
        text = path.read_text().lower()
        if path.name == "demo.py":
            text = text.replace("(default: squeezenet1_1)", "")
        found += [f"{path.name}: {w}" for w in sorted(words) if re.search(rf"\b{w}", text)]
    assert found == []


# --- list, info -------------------------------------------------------------------


def test_list(env):
    out = ok(run(env, "list"))
    table, footer = out.rstrip().split("\n\n")
    rows = {line.split()[0]: line for line in table.splitlines()[2:]}
    assert sorted(rows) == multinet.list_models()
    assert footer == ("Every model trains and predicts on tensorflow, jax, torch and predicts on "
                      "openvino (inference only), in both data formats; this session: "
                      f"{backend.name()}.")
    assert re.search(r"squeezenet\s+1,235,496\s+224x224\s+torchvision\*, keras-squeezenet$",
                     rows["squeezenet1_1"])
    assert re.search(r"vgg\s+138,357,544\s+224x224\s+keras\*, torchvision$", rows["vgg16"])


def test_list_json_and_patterns(offline, capsys):
    status, out, _ = call(capsys, "list", "vgg1*", "--json")
    assert status == 0
    data = json.loads(out)
    assert [d["name"] for d in data] == ["vgg11", "vgg13", "vgg16", "vgg19"]
    assert data[2]["parameters"] == 138_357_544 and data[2]["default_weights"] == "keras"
    assert data[2]["backends"] == {"train": ["tensorflow", "jax", "torch"],
                                   "predict": ["tensorflow", "jax", "torch", "openvino"]}
    status, out, _ = call(capsys, "list", "squeeze")  # no wildcard: a substring
    assert [line.split()[0] for line in out.split("\n\n")[0].splitlines()[2:]] == [
        "squeezenet1_0", "squeezenet1_1"]
    fails_here(capsys, "list", "densenet*", contains=["no model matches 'densenet*'"])


def test_info(env, files):
    out = ok(run(env, "info", "squeezenet1_1"))
    assert out.startswith("squeezenet1_1: SqueezeNet 1.1")
    assert re.search(r"parameters\s+1,235,496", out)
    assert re.search(r"default input\s+224x224", out)
    assert re.search(r"classifier\s+conv10\n", out)
    assert re.search(r"preprocessing\s+torch for torchvision files, caffe for keras_legacy_h5 "
                     r"files", out)
    assert "ceil_mode=True" in out and "dropout=0.5" in out
    assert "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth" in out
    assert "sha256 b8a52dc0 (prefix)" in out
    assert re.search(r"transform\s+short side 256, center crop 224x224, bilinear", out)
    assert re.search(r"transform\s+resized to 227x227, bilinear", out)
    assert "no (would be " in out  # torchvision: not cached
    assert f"yes, {files / 'keras_home' / 'models' / LEGACY_NAME}" in out
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
    assert (keras_entry["resize_size"], data["weights"][1]["resize_size"]) == (None, 256)
    assert data["parameters"] == 138_357_544 and data["min_size"] == 32
    assert data["fixed_top_size"] == 224 and data["head_layers"] == ["fc1", "fc2",
                                                                     "predictions"]


def test_list_and_info_read_any_registered_model(tiny, capsys):
    status, out, _ = call(capsys, "list", "tiny*")
    assert status == 0
    assert re.search(r"^tinynet_test\s+tinytest\s+769,000\s+16x16\s+tiny-entry\*$", out, re.M)
    status, out, _ = call(capsys, "info", TINY)
    assert status == 0
    assert re.search(r"top input\s+16x16 only", out)
    assert re.search(r"classifier\s+logits\n", out)
    assert re.search(r"transform\s+short side 20, center crop 16x16, bicubic", out)
    assert re.search(r"cached\s+yes, " + re.escape(str(tiny.path)), out)
    data = json.loads(call(capsys, "info", TINY, "--json")[1])
    assert data["weights"][0]["interpolation"] == "bicubic"
    assert data["preprocessing_by_layout"] == {"keras_v3": "tf"}


# --- predict ------------------------------------------------------------------------


def test_predict_matches_an_independent_pipeline(env, files):
    weights = files / "seeded.safetensors"
    expected = seeded_cat_expected(3)
    images = [CAT, files / "cat_rgba.png", CAT]  # opaque RGBA: the same picture
    result = run(env, "predict", *images, "-m", "squeezenet1_1", "-w", weights, "--top", "3",
                 "--batch-size", "3", "--json")
    data = json.loads(ok(result))
    assert data["data_format"] == "channels_last"  # Keras' default
    assert (data["preprocessing"], data["resize_size"], data["input_size"]) == ("torch", 256,
                                                                               [224, 224])
    assert [p["image"] for p in data["predictions"]] == [str(i) for i in images]
    for item in data["predictions"]:
        assert [row["rank"] for row in item["top"]] == [1, 2, 3]
        assert_same_top(item["top"], expected)
    assert "3/3" not in result.stderr  # stderr is not a terminal: no progress bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stderr", ["terminal", "pipe"])
def test_predict_text_channels_first_with_progress(stderr, offline, files, capsys, monkeypatch):
    weights = files / "seeded.safetensors"
    expected = seeded_cat_expected(3)
    terminal = Terminal()
    if stderr == "terminal":
        monkeypatch.setattr(sys, "stderr", terminal)
    status, out, err = call(capsys, "predict", CAT, CAT, "-m", "squeezenet1_1", "-w", weights,
                            "--top", "3", "--batch-size", "1", "--data-format",
                            "channels_first")
    assert status == 0, err
    out = out.splitlines()
    assert out[0] == (f"squeezenet1_1 with weights file {weights} (safetensors), torch "
                      f"preprocessing, short side 256, center crop 224x224, bilinear, "
                      f"{backend.name()} channels_first")
    for i in range(2):
        assert out[1 + 4 * i] == str(CAT)
        for rank, (wnid, label, score) in enumerate(expected, start=1):
            assert out[1 + 4 * i + rank] == f"  {rank:>2}. {score:7.2%}  {label} ({wnid})"
    # More images than the batch: a progress bar, on a terminal only.
    if stderr == "terminal":
        assert "2/2" in terminal.getvalue() and "image" in terminal.getvalue()
    else:
        assert err == "" and terminal.getvalue() == ""


def test_predict_from_a_cached_entry(env):
    out = ok(run(env, "predict", CAT, "-m", "squeezenet1_1", "-w", "keras-squeezenet"))
    assert ("weights 'keras-squeezenet', caffe preprocessing, resized to 227x227, bilinear"
            in out.splitlines()[0])
    assert re.findall(r"%\s+(\S+) \(n\d+\)", out) == labels_of(
        keras_squeezenet_expected(CAT, 5))


def test_predict_uses_the_entrys_transform(tiny, capsys):
    """Resize size, crop, interpolation and scaling come from the weights entry."""
    status, out, err = call(capsys, "predict", CAT, "-m", TINY, "--top", "5", "--json")
    assert status == 0, err
    data = json.loads(out)
    assert (data["preprocessing"], data["input_size"], data["resize_size"],
            data["interpolation"]) == ("tf", [16, 16], 20, "bicubic")
    expected = tiny_expected(tiny, CAT)
    got = data["predictions"][0]["top"]
    assert_same_top(got, ref.top_labels(expected, 5), rtol=1e-4)
    # The test tells the transforms apart: each other one gives other scores.
    for other in (tiny_expected(tiny, CAT, resize_size=None),
                  tiny_expected(tiny, CAT, interpolation="bilinear"),
                  tiny_expected(tiny, CAT, resize_size=24)):
        assert np.max(np.abs(other - expected) / expected) > 1e-2
    # The same file passed as a path: its layout's entry gives the same transform.
    status, out, _ = call(capsys, "predict", CAT, "-m", TINY, "-w", tiny.path, "--top", "5",
                          "--json", "--data-format", "channels_first")
    assert status == 0
    assert_same_top(json.loads(out)["predictions"][0]["top"], ref.top_labels(expected, 5),
                    rtol=1e-4)


def test_predict_every_image_mode(tiny, files, capsys):
    images = [CAT, files / "cat_rgba.png", files / "cat_gray.png", files / "cat_palette.gif",
              files / "drawn.png"]
    status, out, err = call(capsys, "predict", *images, "-m", TINY, "--top", "3", "--json",
                            "--batch-size", "2")
    assert status == 0, err
    predictions = json.loads(out)["predictions"]
    for image, item in zip(images, predictions):
        assert item["image"] == str(image)
        assert_same_top(item["top"], ref.top_labels(tiny_expected(tiny, image), 3), rtol=1e-4)
    best = [item["top"][0]["label"] for item in predictions]
    assert best[0] == best[1]  # opaque RGBA is the same picture
    assert len({best[0], best[2], best[4]}) == 3  # color, gray and drawn images differ


def test_predict_random_weights_warns(offline, capsys):
    status, out, err = call(capsys, "predict", CAT, "-m", "squeezenet1_1", "-w", "random",
                            "--top", "1", "--json")
    assert status == 0
    data = json.loads(out)
    assert data["random_weights"] is True and len(data["predictions"][0]["top"]) == 1
    assert "warning: squeezenet1_1 has RANDOM weights (-w random)" in err


# --- weights problems come before the (slow) model build ---------------------------


@pytest.fixture
def builders_must_not_run(monkeypatch):
    """vgg16 (a build of about 15 s) and squeezenet1_1, whose builders fail if called."""
    calls = []

    def builder(**kwargs):
        calls.append(kwargs)
        raise AssertionError("the model was built before its weights were checked")

    for name in ("vgg16", "squeezenet1_1"):
        spec = registry.get_model_spec(name)
        monkeypatch.setitem(registry._MODELS, name, dataclasses.replace(spec, builder=builder))
    return calls


@pytest.mark.parametrize("source, message", [
    ("missing.pth", "weights file not found: {files}/missing.pth"),
    ("garbage.pth", "cannot read weights file {files}/garbage.pth: unrecognized weights format"),
    ("nokeras.h5", "cannot read weights file {files}/nokeras.h5: an HDF5 file with no Keras "
                   "weights"),
    ("squeezenet1_0.safetensors", "{files}/squeezenet1_0.safetensors does not fit vgg16: its "
                                  "torchvision modules classifier.1, features.10.expand1x1"),
    ("converted.weights.h5", "was converted for squeezenet1_1, not vgg16"),
])
@pytest.mark.parametrize("command", ["predict", "convert"])
def test_weights_file_problems_come_before_the_build(command, source, message, files, offline,
                                                     builders_must_not_run, tmp_path, capsys):
    args = (["predict", CAT, "-w", files / source] if command == "predict"
            else ["convert", files / source, tmp_path / "out.weights.h5"])
    fails_here(capsys, *args, "-m", "vgg16", contains=[message.format(files=files)])
    assert builders_must_not_run == []
    assert not (tmp_path / "out.weights.h5").exists()


def test_weights_entry_problems_come_before_the_build(files, offline, builders_must_not_run,
                                                      capsys):
    line = fails_here(capsys, "predict", CAT, "-m", "vgg16",
                      contains=["vgg16_weights_tf_dim_ordering_tf_kernels.h5",
                                "offline mode (MULTINET_OFFLINE=1)", "-w PATH"])
    assert "storage.googleapis.com" in line
    fails_here(capsys, "predict", CAT, "-m", "vgg16", "-w", "torchvison",
               contains=["unknown weights 'torchvison'; did you mean torchvision?",
                         "a weights file, or 'random'"])
    fails_here(capsys, "predict", CAT, "-m", "squeezenet1_1", "-w", "imagnet",
               contains=["did you mean imagenet?"])
    assert builders_must_not_run == []


# --- convert ---------------------------------------------------------------------------


def test_convert_legacy(env, files, tmp_path):
    legacy = files / "keras_home" / "models" / LEGACY_NAME
    dst = tmp_path / "keras_squeezenet.weights.h5"
    out = ok(run(env, "convert", legacy, dst, "-m", "squeezenet1_1"))
    assert "keras_legacy_h5 layout, 26 layers, 1,235,496 values" in out
    assert "(include_top=True, classes=1000)" in out
    assert re.search(r"fire9/expand3x3 -> fire9_expand3x3\s+\(3, 3, 64, 256\), \(256,\)", out)
    assert "verified" in out and "max difference 0.0e+00" in out
    # Plain Keras reads the result, and it computes what the keras-squeezenet network does.
    plain = multinet.create_model("squeezenet1_1", ceil_mode=False, input_shape=(227, 227, 3),
                                  classifier_activation=None, data_format="channels_last")
    plain.load_weights(str(dst))
    network = wf.keras_squeezenet_reference(wf.keras_squeezenet_layers())
    x = ref.scale(ref.structured_images(227, 2), "caffe")
    expected = keras.ops.convert_to_numpy(network(x))
    ref.assert_inputs_matter(expected)
    np.testing.assert_allclose(plain.predict(x, verbose=0), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
    # What convert recorded makes predict feed it right: caffe, 227, ceil_mode=False.
    info = common.describe_weights_file(multinet.get_model_spec("squeezenet1_1"), str(dst))
    assert (info["layout"], info["preprocessing"], info["input_size"], info["resize_size"],
            info["classes"]) == ("keras_v3", "caffe", 227, None, 1000)
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
    assert (info["preprocessing"], info["input_size"], info["resize_size"]) == ("torch", 224,
                                                                                256)
    fails_here(capsys, "convert", files / "seeded.safetensors", dst, "-m", "squeezenet1_1",
               contains=["exists; pass --force"])
    fails_here(capsys, "convert", files / "seeded.safetensors", tmp_path / "x.h5", "-m",
               "squeezenet1_1", contains=["must end in .weights.h5"])
    fails_here(capsys, "predict", CAT, "-m", "squeezenet1_0", "-w", dst,
               contains=["converted for squeezenet1_1, not squeezenet1_0"])
    # A legacy file of another model: its layer names fit, its shapes do not.
    fails_here(capsys, "convert", files / "keras_home" / "models" / LEGACY_NAME,
               tmp_path / "y.weights.h5", "-m", "squeezenet1_0",
               contains=["cannot load weights", "conv1", "shape mismatch", "another model"])
    assert [p.name for p in tmp_path.iterdir()] == ["torchvision.weights.h5"]  # no leftovers


@pytest.mark.parametrize("source, label", [
    ("ft10.safetensors", "conv10 (file: classifier.1)"),
    ("ft10.weights.h5", "conv10 (file: layers/conv2d_25)"),
])
def test_convert_a_fine_tuned_classifier(source, label, offline, files, tmp_path, capsys):
    """A classifier of another class count is an error naming the model's layer, never
    dropped silently; --classes converts it, --no-include-top leaves it out."""
    src, dst = files / source, tmp_path / "ft.weights.h5"
    line = fails_here(capsys, "convert", src, dst, "-m", "squeezenet1_1")
    assert f"squeezenet1_1: the classifier {label} in {src} has 10 classes, the model's has " \
           f"1000 (file (1, 1, 512, 10), (10,); model (1, 1, 512, 1000), (1000,)); pass " \
           f"--classes 10 to convert the fine-tuned file with its classifier, or " \
           f"--no-include-top to convert it without" in line
    assert not dst.exists()

    status, out, err = call(capsys, "convert", src, dst, "-m", "squeezenet1_1", "--classes", 10)
    assert status == 0, err
    assert "26 layers" in out and "(include_top=True, classes=10)" in out
    assert re.search(r"conv10\s+\(1, 1, 512, 10\), \(10,\)", out)
    fails_here(capsys, "predict", CAT, "-m", "squeezenet1_1", "-w", dst,
               contains=["(converted with --classes 10) has 10 classes; predict labels "
                         "ImageNet's 1000"])
    fails_here(capsys, "predict", CAT, "-m", "squeezenet1_1", "-w", src,
               contains=[f"the classifier {label} in {src} has 10 classes"])

    status, out, err = call(capsys, "convert", src, dst, "-m", "squeezenet1_1",
                            "--no-include-top", "--force")
    assert status == 0, err
    assert "25 layers" in out and "(include_top=False)" in out
    skipped = re.findall(r"^  skipped (.*)$", out, re.M)
    assert len(skipped) == 1 and "classifier tensors" in skipped[0] and "(10,)" in skipped[0]
    fails_here(capsys, "convert", src, dst, "-m", "squeezenet1_1", "--no-include-top",
               "--classes", 10, "--force", contains=["pass one of them"])


def test_convert_a_file_without_classifier(offline, files, tmp_path, capsys):
    src = files / "squeezenet_notop.h5"
    line = fails_here(capsys, "convert", src, tmp_path / "a.weights.h5", "-m", "squeezenet1_1",
                      "--include-top")
    assert line.endswith(f"squeezenet1_1: {src} has no classifier (conv10 is not in it); "
                         f"leave out --include-top to convert it without one")
    status, out, err = call(capsys, "convert", src, tmp_path / "b.weights.h5", "-m",
                            "squeezenet1_1")
    assert status == 0, err
    assert "25 layers" in out and "(include_top=False)" in out
    info = common.describe_weights_file(multinet.get_model_spec("squeezenet1_1"),
                                        str(tmp_path / "b.weights.h5"))
    assert info["classes"] is None and info["arch_options"] == {"ceil_mode": False}


# --- bench, doctor ------------------------------------------------------------------


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
    cached = files / "keras_home" / "models" / LEGACY_NAME
    (home / "models" / cached.name).write_bytes(cached.read_bytes())
    out = ok(run(dict(env, KERAS_HOME=str(home)), "doctor"))
    assert re.search(rf"^backend\s+{backend.name()} \S+ \(from KERAS_BACKEND\)", out, re.M)
    installed = re.search(r"^installed\s+(.*)$", out, re.M).group(1).split(", ")
    assert len(installed) == len(BACKENDS) + 1
    for name, shown in zip((*BACKENDS, "openvino"), installed):
        if importlib.util.find_spec(name) is None:
            assert shown == f"{name} (not installed)"
        else:
            suffix = " \\(inference only\\)" if name == "openvino" else ""
            assert re.fullmatch(rf"{name} \d+\.\d+\S*{suffix}", shown), shown
    assert f"{backend.name()} {backend.framework_version()}" in installed
    assert re.search(r"^devices\s+(CPU only|GPU)", out, re.M)
    assert f"channels_first (from {home / 'keras.json'})" in out
    assert f"weights cache {home / 'models'} (1 file, 4.9 MiB)" in out
    assert re.search(rf"{LEGACY_NAME} .* squeezenet1_1/keras-squeezenet", out)
    smallest = min(multinet.list_models(), key=lambda n: multinet.get_model_spec(n).num_params)
    assert re.search(rf"self-check\s+{smallest} at 64x64 .* max output difference \S+: PASS",
                     out)


def test_doctor_fails_when_the_formats_disagree(offline, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "self_check", lambda: (False, 0.25, "a model"))
    assert cli.main(["doctor"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out
    assert captured.err.strip().endswith("self-check failed: outputs differ by 0.25 between "
                                         "data formats")


def test_doctor_self_check_takes_the_smallest_registered_model(tiny):
    assert doctor.self_check_model() == TINY  # 769,000 parameters, the fewest
    passed, difference, what = doctor.self_check()
    assert passed and difference < 1e-4
    assert what == f"{TINY} at 64x64 without its top"  # its classifier takes 16x16 only


# --- demo ----------------------------------------------------------------------------


def test_demo(env, files):
    """The full demo, its output a pipe: plain lines, a few per training."""
    result = run(env, "demo")
    out = ok(result)
    assert "\x1b[" not in out + result.stderr and "\b" not in out and "\r" not in out
    assert len(out.splitlines()) <= 50
    epochs = re.findall(r"^    epoch\s+(\d+)/30: loss \S+, accuracy \S+%$", out, re.M)
    assert epochs == ["5", "10", "15", "20", "25", "30"]
    w = float(re.search(r"learned w = (\S+),", out).group(1))
    assert abs(w - 3.0) < 0.05
    accuracy = float(re.search(r"test accuracy: (\S+)% on 450 images", out).group(1))
    assert accuracy >= 95.0
    assert "predictions identical on all 450 test images" in out
    # The cache holds (synthetic) keras-squeezenet weights; the demo finds and uses them.
    cat = out.split("[4/5]")[1].split("[5/5]")[0]
    assert "squeezenet1_1 with its pretrained 'keras-squeezenet' weights" in cat
    assert re.findall(r"%\s+(\S+)$", cat, re.M) == labels_of(keras_squeezenet_expected(CAT, 3))
    speeds = re.findall(r"^\s+(channels_last|channels_first)\s+([\d,]+) img/s", out, re.M)
    assert [fmt for fmt, _ in speeds] == ["channels_last", "channels_first"]


def test_demo_training_progress_fits_the_output():
    from multinet import demo

    verbose, callbacks = demo._progress(print, "auto", Terminal())
    assert verbose == 0 and [type(c) for c in callbacks] == [demo.TrainingBar]
    verbose, callbacks = demo._progress(print, "auto", io.StringIO())
    assert verbose == 0 and [type(c) for c in callbacks] == [demo.EpochLines]
    assert demo._progress(print, 2, Terminal()) == (2, [])


def test_demo_without_cached_weights_says_so(tmp_path, monkeypatch):
    from multinet import demo

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("MULTINET_OFFLINE", raising=False)  # the demo never downloads anyway
    lines = []
    result = demo.classify_cat(lines.append, "channels_last")
    assert result["pretrained"] is False and len(result["top"]) == 3
    text = "\n".join(lines)
    assert ("No pretrained squeezenet1_1 weights are available offline: "
            f"squeezenet1_1-b8a52dc0.pth is not in {tmp_path / 'models'}.") in text
    assert "multinet predict IMAGE -m squeezenet1_1 -w imagenet" in text
    assert "RANDOM weights" in text
    assert not (tmp_path / "models").exists()  # nothing was downloaded


def test_demo_classifies_with_any_registered_model(tiny):
    from multinet import demo

    lines = []
    result = demo.classify_cat(lines.append, "channels_last", TINY)
    assert result["pretrained"] is True and result["weights"] == "tiny-entry"
    expected = ref.top_labels(tiny_expected(tiny, CAT), 3)
    assert [label for label, _ in result["top"]] == labels_of(expected)
    np.testing.assert_allclose([p for _, p in result["top"]], [e[2] for e in expected],
                               rtol=1e-4)


# --- mistakes: one line on stderr, a non-zero status, no traceback -------------------


def test_missing_image(env, files):
    fails(run(env, "predict", files / "nope.jpg", "-m", "squeezenet1_1", "-w", "random"),
          "image file not found:", "nope.jpg")


def test_unknown_model_suggests_close_names(env, offline, capsys):
    line = fails(run(env, "predict", CAT, "-m", "squeezenet11"), "unknown model 'squeezenet11'")
    assert "did you mean squeezenet1_1, squeezenet1_0" in line
    line = fails_here(capsys, "info", "vgg61", contains=["unknown model 'vgg61'",
                                                         "did you mean"])
    assert "vgg16" in line


def test_weights_for_another_model(env, files):
    fails(run(env, "predict", CAT, "-m", "squeezenet1_1", "-w",
              files / "squeezenet1_0.safetensors"),
          "does not fit squeezenet1_1", "features.5.squeeze", "another model")


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
    fails_here(capsys, "predict", CAT, "-m", "squeezenet1_1", "-w", "imagenet1k",
               contains=["unknown weights 'imagenet1k'; did you mean imagenet?",
                         "keras-squeezenet", "'random'"])


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
    ("convert", CAT, "x.weights.h5", "-m", "squeezenet1_1", "--classes", "0"),
    ("bench", "-m", "squeezenet1_1", "--repeats", "0"),
    ("bench", "-m", "squeezenet1_1", "--repeats", "-2"),
    ("demo", "--epochs", "0"),
])
def test_bad_numbers_in_process(args, capsys):
    option, value = args[-2], args[-1]
    line = fails_here(capsys, *args, status=2, contains=[f"argument {option}", value])
    assert line.startswith(f"multinet {args[0]}: error: ")
