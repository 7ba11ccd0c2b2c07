"""EfficientNet against references nobody here wrote: torchvision's model
code and tf-keras' (the original Keras 2 applications).

EfficientNet-B0 at full depth, from a weights file in each source's real
layout (torchvision: ``.pth`` where PyTorch runs, else ``.safetensors``;
keras: the legacy ``.h5`` that tf-keras' ``save_weights`` writes), in both
data formats, each computing in that format (channels_first on TensorFlow's
CPU included), at 224 and 199: even and odd sizes tell keras' ``correct_pad``
from torchvision's symmetric padding. The raw images go through
``multinet.preprocess_input(x, model=m)`` and are compared with the
reference's own pipeline on the same raw images. Where the reference runs in
this session it writes the file and is compared live too; elsewhere the file
is rebuilt from ``tests/data/efficientnet_b0_<source>.npz``
(``make_expected_efficientnet.py``). B1 to B7: structure and parameter counts.
"""

from __future__ import annotations

import importlib.util
import inspect
import re

import h5py
import keras
import make_expected_efficientnet as ex
import numpy as np
import pytest
from helpers import infer
from references import assert_inputs_matter, rel_error, structured_images

import multinet
from multinet import backend
from multinet.layers import DepthwiseConv2D, Normalization
from multinet.models import efficientnet

# Every model here gets all its weights from a file, or is never run.
pytestmark = pytest.mark.usefixtures("numpy_initial_weights")

FORMATS = ("channels_last", "channels_first")
MODES = {"keras": "none", "torchvision": "torch"}
MODEL = "efficientnet_b0"

# torchvision 0.28: (parameters, BatchNorm running statistics) per model; the
# keras variant has the same trainable parameters (tf-keras' trainable count)
# and count_params() adds the statistics and its Normalization's 7 values.
TORCHVISION_COUNTS = {
    "efficientnet_b0": (5_288_548, 42_016),
    "efficientnet_b1": (7_794_184, 62_048),
    "efficientnet_b2": (9_109_994, 67_568),
    "efficientnet_b3": (12_233_232, 87_296),
    "efficientnet_b4": (19_341_616, 125_200),
    "efficientnet_b5": (30_389_784, 172_736),
    "efficientnet_b6": (43_040_704, 224_432),
    "efficientnet_b7": (66_347_960, 310_720),
}


def reference_runs(source: str) -> bool:
    """Whether ``source``'s reference runs in this session."""
    if source == "torchvision":
        return backend.name() == "torch" and importlib.util.find_spec("torchvision") is not None
    return backend.name() == "tensorflow" and importlib.util.find_spec("tf_keras") is not None


def in_format(batch_nhwc, data_format):
    if data_format == "channels_last":
        return batch_nhwc
    return np.ascontiguousarray(batch_nhwc.transpose(0, 3, 1, 2))


def shape_of(size, data_format):
    return (size, size, 3) if data_format == "channels_last" else (3, size, size)



def structure(name, **kwargs):
    """A model built for its structure only (variables never initialized)."""
    with keras.StatelessScope(initialize_variables=False):
        return multinet.create_model(name, **kwargs)


@pytest.fixture(scope="module")
def source_files(tmp_path_factory):
    """``source -> (path, stored logits, live logits or None)`` for B0."""
    folder = tmp_path_factory.mktemp("efficientnet")
    cache = {}

    def make(source):
        expected = ex.load_expected(MODEL, source)
        live = None
        if source == "torchvision":
            state = ex.torchvision_state(expected["structure"], expected["stats"])
            if reference_runs(source):
                import torch

                module = ex.torchvision_module(MODEL, state)
                path = folder / f"{MODEL}.pth"
                torch.save(module.state_dict(), path)
                live = {size: ex.torchvision_pipeline(module, structured_images(size, 2))
                        for size in ex.SIZES}
            else:
                from safetensors.numpy import save_file

                path = folder / f"{MODEL}.safetensors"
                save_file(state, str(path))
        else:
            path = folder / f"{MODEL}.h5"
            if reference_runs(source):
                live = {}
                for size in ex.SIZES:
                    reference = ex.tf_keras_model(MODEL, size)
                    ex.set_keras_weights(reference, expected["structure"], expected["stats"])
                    if size == 224:
                        reference.save_weights(str(path))
                    live[size] = ex.keras_pipeline(reference, structured_images(size, 2))
            else:
                ex.write_keras_file(path, MODEL)
        return str(path), expected["logits"], live

    def get(source):
        if source not in cache:
            cache[source] = make(source)
        return cache[source]

    return get


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("source", ex.SOURCES)
def test_outputs_match_the_reference(source, data_format, source_files):
    path, stored, live = source_files(source)
    for size in ex.SIZES:
        assert_inputs_matter(stored[size])
        model = multinet.create_model(
            MODEL, weights=path, input_shape=shape_of(size, data_format),
            data_format=data_format, compute_format=data_format, classifier_activation=None)
        info = multinet.model_info(model)
        assert info["options"]["variant"] == source  # chosen from the file's content
        assert info["options"]["variance_correction"] is False  # a file by path: none
        assert info["weights"]["preprocessing"] == MODES[source]
        assert model.get_layer("top_conv").data_format == data_format
        raw = structured_images(size, 2)
        out = infer(model, multinet.preprocess_input(in_format(raw, data_format), model=model))
        assert rel_error(out, stored[size]) < 1e-4, (size, rel_error(out, stored[size]))
        if live is not None:
            assert rel_error(out, live[size]) < 1e-4, (size, rel_error(out, live[size]))


def test_stored_reference_data_is_what_the_reference_gives(source_files):
    checked = 0
    for source in ex.SOURCES:
        if not reference_runs(source):
            continue
        _, stored, live = source_files(source)
        for size in ex.SIZES:
            assert rel_error(live[size], stored[size]) < 1e-5
            checked += 1
    if not checked:
        pytest.skip("no reference runs in this session")


def test_rebuilt_keras_file_is_the_file_tf_keras_writes(source_files, tmp_path):
    if not reference_runs("keras"):
        pytest.skip("tf-keras runs in the tensorflow session only")
    from multinet.weights.keras_h5 import read_list_attr

    path, _, _ = source_files("keras")
    rebuilt = tmp_path / f"{MODEL}.h5"
    ex.write_keras_file(rebuilt, MODEL)
    with h5py.File(path, "r") as real, h5py.File(rebuilt, "r") as ours:
        real_names = read_list_attr(real, "layer_names")
        assert read_list_attr(ours, "layer_names") == real_names
        assert "normalization" in real_names and "block1a_se_reduce" in real_names
        for name in real_names:
            weights = read_list_attr(real[name], "weight_names")
            assert read_list_attr(ours[name], "weight_names") == weights, name
            for weight in weights:
                np.testing.assert_array_equal(ours[name][weight], real[name][weight])


def test_imagenet_path_corrects_the_stored_variance(source_files, tmp_path, monkeypatch):
    """``weights="imagenet"`` (the ``keras`` entry) adds keras' Rescaling by
    1 / sqrt(stddev) after the Normalization: the same outputs as the file
    with its variance multiplied by the stddev, loaded by path (no
    correction); in the tensorflow session also tf-keras' own
    ``weights="imagenet"`` model on the same file."""
    path, _, _ = source_files("keras")
    monkeypatch.setattr("multinet.weights.fetch", lambda entry, **kwargs: path)
    corrected = multinet.models.EfficientNetB0(
        classifier_activation=None, data_format="channels_first",
        compute_format="channels_first")
    assert multinet.model_info(corrected)["options"]["variance_correction"] is True
    assert multinet.model_info(corrected)["weights"]["entry"] == "keras"
    raw = structured_images(224, 2)
    x = in_format(raw, "channels_first")
    got = infer(corrected, multinet.preprocess_input(x, model=corrected))

    stddev = np.array(efficientnet.IMAGENET_STDDEV_RGB, np.float32)
    changed = tmp_path / "changed.h5"
    with h5py.File(path, "r") as source, h5py.File(changed, "w") as target:
        for key, value in source.attrs.items():
            target.attrs[key] = value
        for key in source:
            source.copy(source[key], target, name=key)
        variance = target["normalization/normalization/variance:0"]
        variance[...] = variance[...] * stddev
    plain = multinet.create_model(MODEL, weights=str(changed), classifier_activation=None,
                                  data_format="channels_first", compute_format="channels_first")
    assert multinet.model_info(plain)["options"]["variance_correction"] is False
    expected = infer(plain, x)
    assert_inputs_matter(expected)
    assert rel_error(got, expected) < 1e-4
    _, stored, _ = source_files("keras")
    assert rel_error(stored[224], expected) > 1e-2  # without the correction: other outputs
    if reference_runs("keras"):
        import tf_keras
        from tf_keras.src.applications import efficientnet as tf_keras_efficientnet

        applications = ex.tf_keras_applications()
        monkeypatch.setattr(tf_keras_efficientnet.data_utils, "get_file",
                            lambda *args, **kwargs: path)
        tf_keras.backend.clear_session()
        reference = applications.EfficientNetB0(weights="imagenet", classifier_activation=None)
        live = reference.predict(applications.efficientnet.preprocess_input(raw.copy()),
                                 verbose=0)
        assert rel_error(got, live) < 1e-4


@pytest.mark.parametrize("source", ex.SOURCES)
def test_include_top_false_skips_only_the_head(source, source_files):
    path, _, _ = source_files(source)
    full = multinet.create_model(MODEL, weights=path, data_format="channels_last")
    notop = multinet.create_model(MODEL, weights=path, include_top=False, pooling="avg",
                                  data_format="channels_last")
    report = multinet.load_weights(notop, path)
    assert len(report.skipped) == 1
    assert all("predictions" in key and "include_top=False" in why
               for key, why in report.skipped.items())
    weighted = [layer for layer in notop.layers if layer.weights]
    assert sorted(report.loaded) == sorted(layer.name for layer in weighted)
    for layer in weighted:
        for ours, theirs in zip(layer.get_weights(), full.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(ours, theirs)


# --- structure and parameter counts (no forward pass) -------------------------


# B1-B6: the keras variant's counts in tests/test_models.py (the same
# trainable parameters and statistics; the torchvision variant has no
# Normalization); this table against torchvision in the torch session.
@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_b7"])
def test_torchvision_variant_parameter_counts(name):
    model = structure(name, variant="torchvision", data_format="channels_first")
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert (trainable, model.count_params() - trainable) == TORCHVISION_COUNTS[name]
    assert trainable == multinet.get_model_spec(name).num_params
    size = efficientnet.MODELS[name][3]
    assert model.input_shape == (None, 3, size, size)  # torchvision's crop size


def test_parameter_tables_are_the_references():
    checked = 0
    if reference_runs("torchvision"):
        models = ex.torchvision_models()
        for name, expected in TORCHVISION_COUNTS.items():
            module = getattr(models, name)()
            stats = sum(b.numel() for n, b in module.named_buffers() if "running" in n)
            assert (sum(p.numel() for p in module.parameters()), stats) == expected
            checked += 1
    if reference_runs("keras"):
        applications = ex.tf_keras_applications()
        import tf_keras

        for name in ("efficientnet_b0", "efficientnet_b2"):
            tf_keras.backend.clear_session()  # the published names (normalization)
            reference = getattr(applications, efficientnet.PUBLIC_NAMES[name])(weights=None)
            trainable = sum(int(np.prod(w.shape)) for w in reference.trainable_weights)
            ours = structure(name, data_format="channels_last")
            assert reference.count_params() == ours.count_params()
            assert trainable == TORCHVISION_COUNTS[name][0]
            assert [layer.name for layer in reference.layers if layer.weights] == [
                layer.name for layer in ours.layers if layer.weights]
            checked += 1
    if not checked:
        pytest.skip("no reference runs in this session")


@pytest.mark.parametrize("size", [224, 199, None])
def test_keras_padding_is_correct_pad_and_torchvision_pads_symmetrically(size):
    """The stem and every stride-2 depthwise convolution: keras' own
    correct_pad on its input, torchvision's k // 2."""
    from keras.src.applications.imagenet_utils import correct_pad

    for variant in ex.SOURCES:
        model = structure(MODEL, variant=variant, include_top=False,
                          input_shape=(size, size, 3), data_format="channels_last")
        pads = [layer for layer in model.layers if isinstance(layer, keras.layers.ZeroPadding2D)]
        strided = [layer for layer in model.layers
                   if isinstance(layer, (DepthwiseConv2D, keras.layers.Conv2D))
                   and layer.strides == (2, 2)]
        assert len(strided) == 5 and len(pads) == 5
        for conv in strided:
            pad = conv.input._keras_history.operation
            assert pad in pads and conv.padding == "valid", conv.name
            kernel = conv.kernel_size[0]
            if variant == "keras":
                shape = pad.input.shape[1:]  # keras' correct_pad reads channels_last
                if pad.data_format == "channels_first":
                    shape = (*shape[1:], shape[0])
                expected = correct_pad(keras.Input(shape), kernel)
            else:
                expected = ((kernel // 2, kernel // 2),) * 2
            assert tuple(map(tuple, pad.padding)) == tuple(map(tuple, expected)), conv.name


def test_layer_names_and_settings_per_source():
    models = {variant: structure("efficientnet_b5", variant=variant) for variant in ex.SOURCES}
    b0 = structure(MODEL, variant="torchvision")
    for name in ("stem_conv", "stem_bn", "block1a_dwconv", "block1a_se_reduce",
                 "block1a_project_bn", "block2a_expand_conv", "block2a_dwconv_pad",
                 "block2b_drop", "block7c_project_conv", "top_conv", "top_bn",
                 "top_dropout", "predictions"):
        models["keras"].get_layer(name)
        models["torchvision"].get_layer(name)
    assert isinstance(models["keras"].get_layer("normalization"), Normalization)
    assert models["keras"].get_layer("rescaling").scale == pytest.approx(1 / 255)
    assert not any(isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))
                   for layer in models["torchvision"].layers)
    epsilons = {(name, variant): {layer.epsilon for layer in model.layers
                                  if isinstance(layer, keras.layers.BatchNormalization)}
                for (name, variant), model in [
                    (("b5", "keras"), models["keras"]),
                    (("b5", "torchvision"), models["torchvision"]),
                    (("b0", "torchvision"), b0)]}
    assert epsilons == {("b5", "keras"): {1e-3}, ("b5", "torchvision"): {1e-3},
                        ("b0", "torchvision"): {1e-5}}
    assert b0.get_layer("stem_bn").momentum == 0.9
    assert models["keras"].get_layer("top_dropout").rate == 0.4
    drops = [layer.rate for layer in b0.layers if isinstance(layer, keras.layers.Dropout)
             and layer.name.endswith("_drop")]
    # drop_connect_rate * block index / 16 for the blocks with a residual
    assert drops[0] == pytest.approx(0.2 * 2 / 16) and drops[-1] == pytest.approx(0.2 * 14 / 16)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(variant="tf"), r"efficientnet_b0: variant must be one of"),
        (dict(variant="torchvision", variance_correction=True),
         r"variance_correction=True corrects keras' in-model Normalization"),
        (dict(dropout_rate=1.5), r"dropout_rate must be in \[0, 1\)"),
        (dict(input_shape=(31, 31, 3)), r"too small; .* at least 32"),
    ],
)
def test_invalid_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        structure(MODEL, data_format="channels_last", **kwargs)


def test_file_options_win_over_conflicting_arguments(source_files):
    path, _, _ = source_files("torchvision")
    with pytest.raises(ValueError, match=r"need variant='torchvision', got variant='keras'"):
        multinet.create_model(MODEL, weights=path, variant="keras")


# --- weights entries and constructors ------------------------------------------


def test_weights_entries_are_the_published_files():
    from keras.src.applications import efficientnet as keras_efficientnet

    from multinet.preprocessing import image_options

    expected_torch = {
        "efficientnet_b0": ("efficientnet_b0_rwightman-7f5810bc.pth", 256, 224),
        "efficientnet_b1": ("efficientnet_b1_rwightman-bac287d4.pth", 256, 240),
        "efficientnet_b2": ("efficientnet_b2_rwightman-c35c1473.pth", 288, 288),
        "efficientnet_b3": ("efficientnet_b3_rwightman-b3899882.pth", 320, 300),
        "efficientnet_b4": ("efficientnet_b4_rwightman-23ab8bcd.pth", 384, 380),
        "efficientnet_b5": ("efficientnet_b5_lukemelas-1a07897c.pth", 456, 456),
        "efficientnet_b6": ("efficientnet_b6_lukemelas-24a108a5.pth", 528, 528),
        "efficientnet_b7": ("efficientnet_b7_lukemelas-c5b4e57e.pth", 600, 600),
    }
    keras_sizes = dict(zip(expected_torch, (224, 240, 260, 300, 380, 456, 528, 600)))
    for name in expected_torch:
        spec = multinet.get_model_spec(name)
        short = name.rsplit("_", 1)[-1]
        assert spec.default_weights == "keras"
        entry = spec.get_weights("imagenet")
        assert entry.url == f"{keras_efficientnet.BASE_WEIGHTS_PATH}efficientnet{short}.h5"
        assert entry.notop_url == entry.url.replace(".h5", "_notop.h5")
        assert (entry.file_hash, entry.notop_file_hash) == keras_efficientnet.WEIGHTS_HASHES[
            short]
        assert entry.hash_algorithm == "md5" and entry.preprocessing == "none"
        assert dict(entry.arch_options) == {"variant": "keras", "variance_correction": True}
        assert entry.input_size == keras_sizes[name]
        torch_entry = spec.get_weights("torchvision")
        assert (torch_entry.filename, torch_entry.resize_size, torch_entry.input_size) == (
            expected_torch[name])
        assert torch_entry.interpolation == "bicubic" and torch_entry.preprocessing == "torch"
        assert dict(torch_entry.arch_options) == {"variant": "torchvision"}
        assert spec.default_size == expected_torch[name][2]
    v2 = multinet.get_model_spec("efficientnet_b1").get_weights("torchvision_v2")
    assert (v2.filename, v2.resize_size, v2.input_size, v2.interpolation) == (
        "efficientnet_b1-c27df63c.pth", 255, 240, "bilinear")
    assert image_options(v2.input_size, v2.resize_size, v2.interpolation)["interpolation"] == (
        "bilinear")
    assert [e.name for e in multinet.get_model_spec("efficientnet_b0").weights] == [
        "keras", "torchvision"]


@pytest.mark.parametrize("index", range(8))
def test_constructors_take_keras_arguments_in_keras_order(index):
    public = f"EfficientNetB{index}"
    ours = inspect.signature(getattr(multinet.models, public)).parameters
    theirs = inspect.signature(getattr(keras.applications, public)).parameters
    assert list(ours)[:len(theirs)] == list(theirs)
    for param, value in theirs.items():
        assert ours[param].default == value.default, param


def test_constructor_imagenet_weights_follow_the_variant(monkeypatch):
    fetched = []

    def fake_fetch(entry, include_top=True, model_name=None):
        fetched.append((model_name, entry.name, include_top))
        raise multinet.WeightsUnavailableError(f"not fetched: {entry.name}")

    monkeypatch.setattr("multinet.weights.fetch", fake_fetch)
    with pytest.raises(multinet.WeightsUnavailableError, match="not fetched: keras$"):
        multinet.models.EfficientNetB3(include_top=False)
    with pytest.raises(multinet.WeightsUnavailableError, match="not fetched: torchvision$"):
        multinet.models.EfficientNetB7(variant="torchvision")
    with pytest.raises(ValueError, match=r"weights 'keras' need variant='keras', got "
                                         r"variant='torchvision'"):
        multinet.create_model("efficientnet_b2", weights="keras", variant="torchvision")
    assert fetched == [("efficientnet_b3", "keras", False),
                       ("efficientnet_b7", "torchvision", True)]


def test_source_options_and_modes():
    family = multinet.get_model_spec(MODEL).family
    assert family.source_options("keras_legacy_h5", frozenset({"stem_conv"})) == {
        "variant": "keras"}
    assert family.source_options("torchvision", frozenset({"features.0.0"})) == {
        "variant": "torchvision"}
    assert family.preprocessing_for("keras_legacy_h5") == "none"
    assert family.preprocessing_for("torchvision") == "torch"
    names = efficientnet.torchvision_names("efficientnet_b0", {})
    assert names["features.1.0.block.0.0"] == "block1a_dwconv"
    assert names["features.1.0.block.1.fc1"] == "block1a_se_reduce"
    assert names["features.2.1.block.3.1"] == "block2b_project_bn"
    assert names["features.8.0"] == "top_conv" and names["classifier.1"] == "predictions"
    assert re.fullmatch(r"block\d[a-z]_\w+", names["features.7.0.block.2.fc2"])
