"""multinet.load_weights: every layout, both data formats, every backend.

Fidelity: relative error < 1e-4 (float32) against independent references:
the PyTorch reference of torchvision's architectures (live in the torch
session, stored outputs elsewhere), keras.applications on the same legacy
file, and a plain-Keras rebuild of keras-squeezenet.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import sys

import keras
import numpy as np
import pytest
import weight_fixtures as wf
from helpers import TorchTensor, infer, write_torch_zip

import multinet
from multinet.weights import WeightsLoadError, loaded_weights

FORMATS = ("channels_last", "channels_first")
TOL = 1e-4


def rel_error(a, b):
    a, b = np.asarray(a, dtype="float64"), np.asarray(b, dtype="float64")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def input_shape(size, data_format):
    return (size, size, 3) if data_format == "channels_last" else (3, size, size)


def build(name, size, data_format, **kwargs):
    kwargs.setdefault("classifier_activation", None)
    return multinet.create_model(name, input_shape=input_shape(size, data_format),
                                 data_format=data_format, **kwargs)



def snapshot(model):
    return [np.array(w) for w in model.get_weights()]


def assert_unchanged(model, before):
    after = model.get_weights()
    assert len(after) == len(before)
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)


@functools.lru_cache(maxsize=1)
def state_dict(name):
    return wf.torchvision_state_dict(name)


def has_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=2)
def reference(name, size):
    """Outputs of torchvision's architecture: live with PyTorch, else stored."""
    stored = np.load(wf.EXPECTED)[f"{name}_{size}"]
    if not has_torch():
        return stored
    from make_expected import reference_outputs

    live = reference_outputs(name, size, state_dict(name))
    assert rel_error(stored, live) < TOL, "tests/data is stale: run tests/make_expected.py"
    return live


# -- torchvision layout -------------------------------------------------------

SQUEEZE_CASES = [("squeezenet1_0", 224), ("squeezenet1_1", 227), ("squeezenet1_1", 224)]


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("name,size", SQUEEZE_CASES)
@pytest.mark.parametrize("source", ["mapping", "safetensors"])
def test_torchvision_squeezenet(name, size, data_format, source, tmp_path):
    state = state_dict(name)
    if source == "safetensors":
        from safetensors.numpy import save_file

        path = tmp_path / f"{name}.safetensors"
        save_file(state, str(path))
        state = path
    model = build(name, size, data_format)
    report = multinet.load_weights(model, state)
    assert report.layout == "torchvision" and not report.skipped
    assert report.num_values == model.count_params()
    out = infer(model, wf.to_format(wf.inputs_nchw(size), data_format))
    assert rel_error(out, reference(name, size)) < TOL
    assert loaded_weights(model)["preprocessing"] == "torch"


VGG_CASES = [(name, fmt) for name in ("vgg11", "vgg13", "vgg16", "vgg19") for fmt in FORMATS]


@pytest.mark.parametrize("name,data_format", VGG_CASES)
def test_torchvision_vgg(name, data_format):
    model = build(name, 224, data_format)
    report = multinet.load_weights(model, state_dict(name))
    assert len(report.loaded) == len(model.trainable_weights) // 2
    out = infer(model, wf.to_format(wf.inputs_nchw(224), data_format))
    assert rel_error(out, reference(name, 224)) < TOL


@functools.lru_cache(maxsize=2)
def torch_module_and_output(name, size):
    """A reference module with PyTorch's own random initialization, and its output."""
    import torch
    import torch_reference

    module = torch_reference.build(name)
    with torch.inference_mode():
        return module, module(torch.from_numpy(wf.inputs_nchw(size))).numpy()


@pytest.mark.parametrize("data_format", FORMATS)
def test_torch_pth_and_module_state_dict(data_format, tmp_path):
    torch = pytest.importorskip("torch")

    module, expected = torch_module_and_output("squeezenet1_1", 227)
    x = wf.inputs_nchw(227)
    path = tmp_path / "squeezenet1_1-custom.pth"
    torch.save(module.state_dict(), path)
    wrapped = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": module.state_dict(), "epoch": 3}, wrapped)
    for source in (module.state_dict(), path, wrapped):
        model = build("squeezenet1_1", 227, data_format)
        multinet.load_weights(model, source)
        out = infer(model, wf.to_format(x, data_format))
        assert rel_error(out, expected) < TOL
    # The VGG flatten permutation, with a real torch module's state dict.
    vgg, expected = torch_module_and_output("vgg11", 224)
    model = build("vgg11", 224, data_format)
    multinet.load_weights(model, vgg.state_dict())
    out = infer(model, wf.to_format(wf.inputs_nchw(224), data_format))
    assert rel_error(out, expected) < TOL


class _Payload:
    """Unpickling this calls ``function(*args)``, as a hostile checkpoint would."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("payload", ["os.system", "open"])
def test_pth_payload_is_refused_and_never_run(payload, protocol, tmp_path):
    created = tmp_path / "created-by-the-payload"
    if payload == "os.system":
        hostile = _Payload(os.system, f"touch {shlex.quote(str(created))}")
        refused = r"refused global (posix|nt)\.system"
    else:
        hostile = _Payload(open, str(created), "w")
        refused = r"refused global io\.open"  # builtins.open is io.open
    path = write_torch_zip(tmp_path / "evil.pth", {
        "features.0.weight": TorchTensor.of(np.zeros((64, 3, 3, 3), "float32")),
        "features.0.bias": hostile,
    }, protocol=protocol)
    model = build("squeezenet1_1", 64, "channels_last")
    before = snapshot(model)
    with pytest.raises(WeightsLoadError) as info:
        multinet.load_weights(model, path)
    assert not created.exists()
    assert re.search(refused, str(info.value)), str(info.value)
    assert "evil.pth" in str(info.value) and "\n" not in str(info.value)
    assert_unchanged(model, before)


def test_torch_saved_pth_loads_with_torch_blocked(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    module, expected = torch_module_and_output("squeezenet1_1", 227)
    path = tmp_path / "squeezenet1_1.pth"
    torch.save(module.state_dict(), path)
    model = build("squeezenet1_1", 227, "channels_last")
    with monkeypatch.context() as blocked:
        blocked.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
        report = multinet.load_weights(model, path)
    assert report.layout == "torchvision" and report.num_values == model.count_params()
    out = infer(model, wf.to_format(wf.inputs_nchw(227), "channels_last"))
    assert rel_error(out, expected) < TOL


# -- legacy Keras HDF5 ---------------------------------------------------------


@pytest.fixture(scope="module")
def keras_squeezenet_file(tmp_path_factory):
    layers = wf.keras_squeezenet_layers()
    path = tmp_path_factory.mktemp("ksq") / "squeezenet_weights_tf_dim_ordering_tf_kernels.h5"
    wf.write_legacy_h5(path, layers)
    return path, layers


@pytest.mark.parametrize("data_format", FORMATS)
def test_keras_squeezenet_file(keras_squeezenet_file, data_format):
    path, layers = keras_squeezenet_file
    x = np.random.default_rng(0).uniform(-100, 100, (2, 227, 227, 3)).astype("float32")
    expected = infer(wf.keras_squeezenet_reference(layers), x)
    model = build("squeezenet1_1", 227, data_format, ceil_mode=False)
    report = multinet.load_weights(model, path)
    assert report.layout == "keras_legacy_h5" and len(report.loaded) == 26
    assert "fire2_squeeze1x1" in report.loaded
    out = infer(model, x if data_format == "channels_last" else x.transpose(0, 3, 1, 2))
    assert rel_error(out, expected) < TOL
    assert loaded_weights(model)["preprocessing"] == "caffe"


def file_weights_match(model, layers):
    """Every layer of a keras-squeezenet file landed in the layer of that name."""
    arrays = {name.replace("/", "_"): values for name, values in layers if values}
    assert len(arrays) == 26
    for name, values in arrays.items():
        got = model.get_layer(name).get_weights()
        assert len(got) == len(values), name
        for a, b in zip(got, values):
            np.testing.assert_array_equal(a, b)


def test_legacy_model_weights_group_and_chunked_names(keras_squeezenet_file, tmp_path):
    path, layers = keras_squeezenet_file
    other = tmp_path / "saved_model.bin"  # suffix is irrelevant: content decides
    wf.write_legacy_h5(other, layers, chunks=3, model_weights=True)
    b = build("squeezenet1_1", 64, "channels_first", ceil_mode=False)
    multinet.load_weights(b, other)
    file_weights_match(b, layers)
    # A legacy file named like a Keras 3 file is still read as what it is.
    renamed = tmp_path / "legacy.weights.h5"
    renamed.write_bytes(path.read_bytes())
    c = build("squeezenet1_1", 64, "channels_last", ceil_mode=False)
    assert multinet.load_weights(c, renamed).layout == "keras_legacy_h5"
    file_weights_match(c, layers)


def test_include_top_false_skips_only_the_head(keras_squeezenet_file):
    path, layers = keras_squeezenet_file
    model = multinet.create_model("squeezenet1_1", include_top=False, ceil_mode=False,
                                  input_shape=(96, 96, 3))
    report = multinet.load_weights(model, path)
    assert list(report.skipped) == ["conv10"]
    assert "include_top=False" in str(report)
    assert len(report.loaded) == 25
    # A missing feature tensor is still an error on a no-top model.
    state = {k: v for k, v in state_dict("squeezenet1_1").items()
             if not k.startswith("features.12.expand3x3")}
    before = snapshot(model)
    with pytest.raises(WeightsLoadError, match=r"fire9_expand3x3: missing"):
        multinet.load_weights(model, state)
    assert_unchanged(model, before)
    notop = multinet.create_model("squeezenet1_1", include_top=False, input_shape=(96, 96, 3))
    report = multinet.load_weights(notop, state_dict("squeezenet1_1"))
    assert set(report.skipped) == {"conv10 (file: classifier.1)"}


@pytest.fixture(scope="module")
def legacy_vgg(tmp_path_factory):
    """keras.applications-layout files (Keras 1 weight names, written with h5py)
    and keras.applications' own outputs on them (channels_last, logits)."""
    folder = tmp_path_factory.mktemp("vgg")
    made = {}

    def make(name, include_top):
        key = (name, include_top)
        if key not in made:
            suffix = "" if include_top else "_notop"
            path = folder / f"{name}_weights_tf_dim_ordering_tf_kernels{suffix}.h5"
            layers = wf.legacy_vgg_layers(name, include_top=include_top)
            wf.write_legacy_h5(path, layers, keras_version="1.2.2",
                               weight_name=wf.keras1_weight_name)
            app = {"vgg16": keras.applications.VGG16, "vgg19": keras.applications.VGG19}[name]
            size = 224 if include_top else 64
            reference_model = app(weights=str(path), include_top=include_top,
                                  input_shape=(size, size, 3), classifier_activation=None)
            x = np.random.default_rng(1).uniform(-120, 120, (2, size, size, 3)).astype("float32")
            # Keep one kernel to check against, not the whole file's arrays.
            made[key] = path, x, infer(reference_model, x), {"block5_conv3": dict(layers)[
                "block5_conv3"][0]}
            del reference_model, layers
        return made[key]

    return make


# The published full files at 224, and VGG19's _notop file at 64x64.
LEGACY_VGG = [(n, top, f) for n, top in (("vgg16", True), ("vgg19", True), ("vgg19", False))
              for f in FORMATS]


@pytest.mark.parametrize("name,include_top,data_format", LEGACY_VGG)
def test_keras_applications_vgg_file(legacy_vgg, name, include_top, data_format):
    path, x, expected, _ = legacy_vgg(name, include_top)
    size = x.shape[1]
    model = build(name, size, data_format, include_top=include_top)
    report = multinet.load_weights(model, path)
    assert report.layout == "keras_legacy_h5" and not report.skipped
    assert report.num_values == model.count_params()
    out = infer(model, x if data_format == "channels_last" else x.transpose(0, 3, 1, 2))
    if out.ndim == 4 and data_format == "channels_first":
        out = out.transpose(0, 2, 3, 1)
    assert rel_error(out, expected) < TOL


def test_vgg_other_class_count_is_one_clear_error(legacy_vgg):
    path, _, _, layers = legacy_vgg("vgg16", True)
    model = build("vgg16", 224, "channels_last", classes=10)
    before = snapshot(model)
    with pytest.raises(WeightsLoadError) as info:
        multinet.load_weights(model, path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "predictions: shape mismatch, expected (4096, 10), (10,), found (4096, 1000), (1000,)" \
        in message
    assert "fc1" not in message and "1 problem:" in message
    assert_unchanged(model, before)
    notop = multinet.create_model("vgg16", include_top=False, input_shape=(32, 32, 3))
    report = multinet.load_weights(notop, path)
    assert set(report.skipped) == {"fc1", "fc2", "predictions"} and len(report.loaded) == 13
    np.testing.assert_array_equal(notop.get_layer("block5_conv3").kernel,
                                  layers["block5_conv3"])


# -- errors leave the model unchanged --------------------------------------------


def test_classes_mismatch_and_skip_mismatch():
    state = state_dict("squeezenet1_1")
    model = build("squeezenet1_1", 64, "channels_first", classes=10)
    before = snapshot(model)
    with pytest.raises(WeightsLoadError) as info:
        multinet.load_weights(model, state)
    assert ("conv10 (file: classifier.1): shape mismatch, expected (1, 1, 512, 10), (10,), "
            "found (1, 1, 512, 1000), (1000,)") in str(info.value)
    assert isinstance(info.value, ValueError)
    assert_unchanged(model, before)
    report = multinet.load_weights(model, state, skip_mismatch=True)
    assert list(report.skipped) == ["conv10"] and len(report.loaded) == 25
    assert report.skipped["conv10"] == ("shape mismatch, expected (1, 1, 512, 10), (10,), "
                                        "found (1, 1, 512, 1000), (1000,) (file: classifier.1)")
    assert "conv10: shape mismatch" in str(report)
    np.testing.assert_array_equal(model.get_layer("conv1").kernel,
                                  state["features.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.get_layer("conv10").kernel, before[-2])


def test_missing_and_unexpected_tensors_in_one_error():
    state = dict(state_dict("squeezenet1_0"))
    del state["features.4.expand3x3.bias"]
    state["features.40.weight"] = np.zeros((3, 3), "float32")
    model = build("squeezenet1_0", 64, "channels_last")
    before = snapshot(model)
    with pytest.raises(WeightsLoadError) as info:
        multinet.load_weights(model, state)
    message = str(info.value)
    assert "2 problems" in message
    assert "fire3_expand3x3 (file: features.4.expand3x3): has no 'bias'" in message
    assert "features.40.weight: unexpected" in message
    assert_unchanged(model, before)
    # A torchvision file of another model: every mismatch is named.
    with pytest.raises(WeightsLoadError, match=r"conv1 \(file: features.0\): shape mismatch"):
        multinet.load_weights(model, state_dict("squeezenet1_1"))
    assert_unchanged(model, before)


@pytest.mark.parametrize("damage", ["truncated_h5", "garbage", "truncated_safetensors", "empty"])
def test_corrupt_files_change_nothing(keras_squeezenet_file, tmp_path, damage):
    path, _ = keras_squeezenet_file
    data = path.read_bytes()
    bad = tmp_path / "bad.h5"
    if damage == "truncated_h5":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "truncated_safetensors":
        from safetensors.numpy import save_file

        save_file(state_dict("squeezenet1_1"), str(tmp_path / "full.safetensors"))
        full = (tmp_path / "full.safetensors").read_bytes()
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(full[: len(full) - 1000])
    else:
        bad.write_bytes(b"")
    model = build("squeezenet1_1", 64, "channels_last", ceil_mode=False)
    before = snapshot(model)
    with pytest.raises(WeightsLoadError, match="cannot read weights from .*bad") as info:
        multinet.load_weights(model, bad)
    assert "\n" not in str(info.value)
    assert_unchanged(model, before)


def test_bad_sources():
    model = build("squeezenet1_1", 64, "channels_last")
    with pytest.raises(FileNotFoundError, match="no/such/file.h5"):
        multinet.load_weights(model, "no/such/file.h5")
    with pytest.raises(TypeError, match="path or a mapping"):
        multinet.load_weights(model, 42)
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
    with pytest.raises(WeightsLoadError, match="a model multinet did not build"):
        multinet.load_weights(plain, state_dict("squeezenet1_1"))
    report = multinet.load_weights(plain, {"d": [np.ones((4, 2)), np.zeros(2)]})
    assert report.loaded == ["d"]


def test_module_names_mixing_indices_and_words():
    model = build("squeezenet1_1", 64, "channels_last")
    state = dict(state_dict("squeezenet1_1"), **{"features.x.weight": np.zeros(3, "float32")})
    before = snapshot(model)
    with pytest.raises(WeightsLoadError, match=r"1 problem: features\.x\.weight: unexpected"):
        multinet.load_weights(model, state)
    assert_unchanged(model, before)


# -- Keras 3 files ---------------------------------------------------------------


@pytest.mark.parametrize("data_format", FORMATS)
def test_keras3_weights_h5_and_archive(data_format, tmp_path):
    source = build("squeezenet1_0", 96, "channels_last")
    multinet.load_weights(source, state_dict("squeezenet1_0"))
    source.save_weights(tmp_path / "a.weights.h5")
    source.save(tmp_path / "a.keras")
    (tmp_path / "renamed.h5").write_bytes((tmp_path / "a.weights.h5").read_bytes())
    for name in ("a.weights.h5", "a.keras", "renamed.h5"):
        model = build("squeezenet1_0", 96, data_format)
        report = multinet.load_weights(model, tmp_path / name)
        assert report.layout == "keras_v3" and len(report.loaded) == 26
        for x, y in zip(model.get_weights(), source.get_weights()):
            np.testing.assert_array_equal(x, y)
        if name == "a.keras":  # a whole model says what its weights expect
            x = np.random.default_rng(0).uniform(0, 255, (1, *input_shape(96, data_format)))
            np.testing.assert_array_equal(
                multinet.preprocess_input(x, model=model),
                multinet.preprocess_input(x, "torch", data_format=data_format))
        else:  # a weights-only file does not
            with pytest.raises(ValueError, match="preprocess_input: cannot tell"):
                multinet.preprocess_input(np.zeros((1, *input_shape(96, data_format))),
                                          model=model)
    notop = multinet.create_model("squeezenet1_0", include_top=False, input_shape=(96, 96, 3))
    for name in ("a.weights.h5", "a.keras"):
        report = multinet.load_weights(notop, tmp_path / name)
        assert len(report.skipped) == 1 and len(report.loaded) == 25
    wrong = build("squeezenet1_0", 96, data_format, classes=7)
    with pytest.raises(WeightsLoadError, match=r"conv10 \(file: layers/conv2d_25\)"):
        multinet.load_weights(wrong, tmp_path / "a.weights.h5")


def test_create_model_with_a_path_remembers_the_mode(keras_squeezenet_file, tmp_path):
    path, _ = keras_squeezenet_file
    model = multinet.create_model("squeezenet1_1", weights=str(path), ceil_mode=False,
                                  input_shape=(227, 227, 3))
    assert loaded_weights(model)["preprocessing"] == "caffe"
    x = np.full((1, 227, 227, 3), 200, dtype="uint8")
    np.testing.assert_allclose(multinet.preprocess_input(x, model=model)[0, 0, 0],
                               [200 - 103.939, 200 - 116.779, 200 - 123.68], rtol=1e-6)
    from safetensors.numpy import save_file

    save_file(state_dict("squeezenet1_1"), str(tmp_path / "tv.safetensors"))
    model = multinet.create_model("squeezenet1_1", weights=str(tmp_path / "tv.safetensors"))
    assert loaded_weights(model)["layout"] == "torchvision"
    assert multinet.preprocess_input(x[:, :224, :224], model=model).dtype == np.float32


def test_text_arrays_are_a_weights_error_that_names_the_layer():
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="d")])
    before = [w.copy() for w in plain.get_weights()]
    with pytest.raises(WeightsLoadError, match=r"d holds <U1 values that are not numbers"):
        multinet.load_weights(plain, {"d": [np.array([["a", "b"], ["c", "d"]]),
                                            np.array(["e", "f"])]})
    for x, y in zip(plain.get_weights(), before):
        np.testing.assert_array_equal(x, y)
