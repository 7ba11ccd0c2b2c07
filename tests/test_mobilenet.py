"""MobileNet V2 / V3 Small / V3 Large against references nobody here wrote:
torchvision's model code and tf-keras' (the original Keras 2 applications).

Every model at full depth, from a weights file in each source's real layout
(torchvision: ``.pth`` where PyTorch runs, else ``.safetensors``; keras: the
legacy ``.h5`` that tf-keras' ``save_weights`` writes), in both data formats,
each computing in that format (channels_first on TensorFlow's CPU included),
at 224 and 199: even and odd sizes tell keras' ``correct_pad`` from
torchvision's symmetric padding. The raw images go through
``multinet.preprocess_input(x, model=m)`` and are compared with the
reference's own pipeline on the same raw images. Where the reference runs in
this session it writes the file and is compared live too; elsewhere the file
is rebuilt from ``tests/data/<model>_<source>.npz`` (``make_expected_mobilenet.py``).
"""

from __future__ import annotations

import importlib.util
import inspect
import re

import keras
import make_expected_mobilenet as mx
import numpy as np
import pytest
from helpers import infer
from references import assert_inputs_matter, rel_error, structured_images

import multinet
from multinet import backend
from multinet.layers import DepthwiseConv2D
from multinet.models import mobilenet

# Every model here gets all its weights from a file, or is never run.
pytestmark = pytest.mark.usefixtures("numpy_initial_weights")

FORMATS = ("channels_last", "channels_first")
MODES = {("mobilenet_v2", "keras"): "tf", ("mobilenet_v3_small", "keras"): "none",
         ("mobilenet_v3_large", "keras"): "none"}
HEADS = {"mobilenet_v2": ("predictions",), "mobilenet_v3_small": ("Conv_2", "Logits"),
         "mobilenet_v3_large": ("Conv_2", "Logits")}

# keras.applications (tf-keras 2.21 count_params(), trainable weights) per
# (model, alpha, minimalistic, include_top).
KERAS_COUNTS = {
    ("mobilenet_v2", 0.35, False, True): (1_691_208, 1_677_128),
    ("mobilenet_v2", 0.5, False, True): (1_987_224, 1_968_680),
    ("mobilenet_v2", 0.75, False, True): (2_663_064, 2_636_424),
    ("mobilenet_v2", 1.0, False, True): (3_538_984, 3_504_872),
    ("mobilenet_v2", 1.3, False, True): (5_431_048, 5_386_792),
    ("mobilenet_v2", 1.4, False, True): (6_156_712, 6_108_776),
    ("mobilenet_v2", 1.0, False, False): (2_257_984, 2_223_872),
    ("mobilenet_v3_small", 1.0, False, True): (2_554_968, 2_542_856),
    ("mobilenet_v3_small", 0.75, False, True): (2_051_552, 2_041_872),
    ("mobilenet_v3_small", 1.0, True, True): (2_056_848, 2_044_736),
    ("mobilenet_v3_small", 1.3, False, True): (3_999_536, 3_983_152),
    ("mobilenet_v3_small", 1.0, False, False): (939_120, 927_008),
    ("mobilenet_v3_large", 1.0, False, True): (5_507_432, 5_483_032),
    ("mobilenet_v3_large", 0.75, False, True): (4_012_616, 3_993_528),
    ("mobilenet_v3_large", 1.0, True, True): (3_948_688, 3_924_288),
    ("mobilenet_v3_large", 1.3, False, True): (8_741_320, 8_709_384),
    ("mobilenet_v3_large", 1.0, False, False): (2_996_352, 2_971_952),
}
# torchvision 0.28 (parameters, BatchNorm running statistics) per (model, width_mult).
TORCHVISION_COUNTS = {
    ("mobilenet_v2", 0.5): (1_968_680, 18_544),
    ("mobilenet_v2", 1.0): (3_504_872, 34_112),
    ("mobilenet_v2", 1.4): (6_108_776, 47_936),
    ("mobilenet_v3_small", 0.5): (917_264, 6_144),
    ("mobilenet_v3_small", 0.75): (1_653_920, 9_200),
    ("mobilenet_v3_small", 1.0): (2_542_856, 12_112),
    ("mobilenet_v3_large", 0.75): (3_377_576, 18_416),
    ("mobilenet_v3_large", 1.0): (5_483_032, 24_400),
    ("mobilenet_v3_large", 1.4): (9_989_328, 34_208),
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


def counts(model) -> tuple[int, int]:
    return model.count_params(), sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def structure(name, **kwargs):
    """A model built for its structure only: variables are not initialized
    (no random draws, which JAX compiles per shape), so it cannot run."""
    with keras.StatelessScope(initialize_variables=False):
        return multinet.create_model(name, **kwargs)


@pytest.fixture(scope="module")
def source_files(tmp_path_factory):
    """``(model, source) -> (path, stored logits, live logits or None)``: the
    weights file in the source's real layout, written by the reference where
    it runs in this session, else rebuilt from the stored data."""
    folder = tmp_path_factory.mktemp("mobilenet")
    cache = {}

    def make(model, source):
        expected = mx.load_expected(model, source)
        live = None
        if source == "torchvision":
            state = mx.torchvision_state(expected["structure"], expected["stats"])
            if reference_runs(source):
                import torch

                module = mx.torchvision_module(model, state)
                path = folder / f"{model}.pth"
                torch.save(module.state_dict(), path)
                live = {size: mx.torchvision_pipeline(module, structured_images(size, 2))
                        for size in mx.SIZES}
            else:
                from safetensors.numpy import save_file

                path = folder / f"{model}.safetensors"
                save_file(state, str(path))
        else:
            path = folder / f"{model}.h5"
            if reference_runs(source):
                live = {}
                for size in mx.SIZES:
                    reference = mx.tf_keras_model(model, size)
                    mx.set_keras_weights(reference, expected["structure"], expected["stats"])
                    if size == 224:
                        reference.save_weights(str(path))
                    live[size] = mx.keras_pipeline(reference, model, structured_images(size, 2))
            else:
                mx.write_keras_file(path, model)
        return str(path), expected["logits"], live

    def get(model, source):
        if (model, source) not in cache:
            cache[model, source] = make(model, source)
        return cache[model, source]

    return get


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("source", mx.SOURCES)
@pytest.mark.parametrize("name", mx.MODELS)
def test_outputs_match_the_reference(name, source, data_format, source_files):
    path, stored, live = source_files(name, source)
    for size in mx.SIZES:
        assert_inputs_matter(stored[size])
        model = multinet.create_model(
            name, weights=path, input_shape=shape_of(size, data_format),
            data_format=data_format, compute_format=data_format, classifier_activation=None)
        info = multinet.model_info(model)
        assert info["options"]["variant"] == source  # chosen from the file's content
        assert info["weights"]["preprocessing"] == MODES.get((name, source), "torch")
        assert model.get_layer("Conv_1").data_format == data_format
        raw = structured_images(size, 2)
        out = infer(model, multinet.preprocess_input(in_format(raw, data_format), model=model))
        assert rel_error(out, stored[size]) < 1e-4, (size, rel_error(out, stored[size]))
        if live is not None:
            assert rel_error(out, live[size]) < 1e-4, (size, rel_error(out, live[size]))


def test_stored_reference_data_is_what_the_reference_gives(source_files):
    """In a session where a reference runs, the stored logits are its logits
    on the rebuilt weights (so the data the other sessions use is sound)."""
    checked = 0
    for source in mx.SOURCES:
        if not reference_runs(source):
            continue
        for name in mx.MODELS:
            _, stored, live = source_files(name, source)
            for size in mx.SIZES:
                assert rel_error(live[size], stored[size]) < 1e-5
                checked += 1
    if not checked:
        pytest.skip("no reference runs in this session")


def test_rebuilt_keras_file_is_the_file_tf_keras_writes(source_files, tmp_path):
    if not reference_runs("keras"):
        pytest.skip("tf-keras runs in the tensorflow session only")
    import h5py

    from multinet.weights.keras_h5 import read_list_attr

    for name in mx.MODELS:
        path, _, _ = source_files(name, "keras")
        rebuilt = tmp_path / f"{name}.h5"
        mx.write_keras_file(rebuilt, name)
        with h5py.File(path, "r") as real, h5py.File(rebuilt, "r") as ours:
            real_names = read_list_attr(real, "layer_names")
            our_names = read_list_attr(ours, "layer_names")
            assert len(our_names) == len(real_names)
            for real_name, our_name in zip(real_names, our_names):
                weights = read_list_attr(real[real_name], "weight_names")
                assert read_list_attr(ours[our_name], "weight_names") == weights, real_name
                if not weights:  # auto-names (input_3, re_lu_7) count up per build
                    assert re.sub(r"_\d+$", "", our_name) == re.sub(r"_\d+$", "", real_name)
                    continue
                assert our_name == real_name
                for weight in weights:
                    np.testing.assert_array_equal(ours[our_name][weight], real[real_name][weight])
            assert "top_level_model_weights" in ours


def test_keras_v3_without_in_model_preprocessing(source_files):
    """include_preprocessing=False: keras' weights then take [-1, 1] inputs
    ('tf' mode), and preprocess_input(model=...) says so."""
    path, stored, _ = source_files("mobilenet_v3_small", "keras")
    model = multinet.create_model("mobilenet_v3_small", weights=path,
                                  include_preprocessing=False, classifier_activation=None,
                                  data_format="channels_first", compute_format="channels_first")
    assert multinet.model_info(model)["weights"]["preprocessing"] == "tf"
    assert not any(isinstance(layer, keras.layers.Rescaling) for layer in model.layers)
    raw = in_format(structured_images(224, 2), "channels_first")
    x = multinet.preprocess_input(raw, model=model)
    np.testing.assert_allclose(x, raw / 127.5 - 1.0, rtol=1e-6, atol=1e-6)
    assert rel_error(model.predict(x, verbose=0), stored[224]) < 1e-4


@pytest.mark.parametrize("source", mx.SOURCES)
@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small"])
def test_include_top_false_skips_only_the_head(name, source, source_files):
    path, _, _ = source_files(name, source)
    full = multinet.create_model(name, weights=path, data_format="channels_last")
    notop = multinet.create_model(name, weights=path, include_top=False, pooling="avg",
                                  data_format="channels_last")
    report = multinet.load_weights(notop, path)
    assert len(report.skipped) == len(HEADS[name])
    for head in HEADS[name]:
        assert sum(head in key for key in report.skipped) == 1, report.skipped
        assert all("include_top=False" in why for why in report.skipped.values())
    weighted = [layer for layer in notop.layers if layer.weights]
    assert sorted(report.loaded) == sorted(layer.name for layer in weighted)
    for layer in weighted:
        for ours, theirs in zip(layer.get_weights(), full.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(ours, theirs)


# --- structure and parameter counts (no forward pass) -------------------------


@pytest.mark.parametrize("key", list(KERAS_COUNTS), ids=str)
def test_keras_variant_parameter_counts(key):
    name, alpha, minimalistic, include_top = key
    kwargs = {"minimalistic": minimalistic} if name != "mobilenet_v2" else {}
    model = structure(name, alpha=alpha, include_top=include_top, **kwargs)
    assert counts(model) == KERAS_COUNTS[key]


@pytest.mark.parametrize("key", list(TORCHVISION_COUNTS), ids=str)
def test_torchvision_variant_parameter_counts(key):
    name, width = key
    model = structure(name, alpha=width, variant="torchvision", data_format="channels_first")
    total, trainable = counts(model)
    assert (trainable, total - trainable) == TORCHVISION_COUNTS[key]


def test_parameter_tables_are_the_references():
    """The tables above are what the references count, where they run."""
    checked = 0
    if reference_runs("torchvision"):
        models = mx.torchvision_models()
        for (name, width), expected in TORCHVISION_COUNTS.items():
            module = getattr(models, name)(width_mult=width)
            stats = sum(b.numel() for n, b in module.named_buffers() if "running" in n)
            assert (sum(p.numel() for p in module.parameters()), stats) == expected
            checked += 1
    if reference_runs("keras"):
        applications = mx.tf_keras_applications()
        for key in [("mobilenet_v2", 0.35, False, True), ("mobilenet_v3_small", 1.0, True, True),
                    ("mobilenet_v3_large", 0.75, False, True),
                    ("mobilenet_v3_small", 1.0, False, False)]:
            name, alpha, minimalistic, include_top = key
            kwargs = {"minimalistic": minimalistic} if name != "mobilenet_v2" else {}
            reference = getattr(applications, mx.KERAS_CONSTRUCTORS[name])(
                weights=None, alpha=alpha, include_top=include_top, **kwargs)
            trainable = sum(int(np.prod(w.shape)) for w in reference.trainable_weights)
            assert (reference.count_params(), trainable) == KERAS_COUNTS[key]
            checked += 1
    if not checked:
        pytest.skip("no reference runs in this session")


@pytest.mark.parametrize("size", [224, 199, 37, None])
def test_keras_padding_is_correct_pad_and_torchvision_pads_symmetrically(size):
    """Every stride-2 depthwise convolution: keras' own correct_pad on its
    input (asymmetric on even sizes, and on unknown ones), torchvision's k // 2."""
    from keras.src.applications.imagenet_utils import correct_pad

    for name in mx.MODELS:
        for variant in mx.SOURCES:
            model = structure(name, variant=variant, include_top=False,
                              input_shape=(size, size, 3), data_format="channels_last")
            pads = [layer for layer in model.layers
                    if isinstance(layer, keras.layers.ZeroPadding2D)]
            strided = [layer for layer in model.layers
                       if isinstance(layer, DepthwiseConv2D) and layer.strides == (2, 2)]
            assert len(strided) == 4
            for conv in strided:
                pad = conv.input._keras_history.operation
                assert pad in pads, conv.name
                kernel = conv.kernel_size[0]
                if variant == "keras":  # keras' correct_pad reads channels_last shapes
                    shape = pad.input.shape[1:]
                    if pad.data_format == "channels_first":
                        shape = (*shape[1:], shape[0])
                    expected = correct_pad(keras.Input(shape), kernel)
                else:
                    expected = ((kernel // 2, kernel // 2),) * 2
                assert tuple(map(tuple, pad.padding)) == tuple(map(tuple, expected)), (
                    name, variant, conv.name)
            stem = model.get_layer("Conv1" if name == "mobilenet_v2" else "Conv")
            assert stem.padding == ("same" if variant == "keras" else "valid")


def test_layer_names_and_settings_per_source():
    v2 = {variant: structure("mobilenet_v2", variant=variant) for variant in mx.SOURCES}
    v3 = {variant: structure("mobilenet_v3_large", variant=variant) for variant in mx.SOURCES}
    for name in ("Conv1", "bn_Conv1", "expanded_conv_depthwise", "expanded_conv_project_BN",
                 "block_1_expand_BN", "block_1_pad", "block_16_project", "Conv_1_bn",
                 "predictions"):
        v2["keras"].get_layer(name)
    for name in ("Conv", "Conv_BatchNorm", "expanded_conv_depthwise",
                 "expanded_conv_3_squeeze_excite_Conv", "expanded_conv_3_squeeze_excite_Conv_1",
                 "expanded_conv_14_project_BatchNorm", "Conv_1", "Conv_2", "Logits"):
        v3["keras"].get_layer(name)
    bn = {(version, variant): model.get_layer(norm)
          for version, models, norm in (("v2", v2, "bn_Conv1"), ("v3", v3, "Conv_BatchNorm"))
          for variant, model in models.items()}
    assert (bn["v2", "keras"].epsilon, bn["v2", "keras"].momentum) == (1e-3, 0.999)
    assert (bn["v2", "torchvision"].epsilon, bn["v2", "torchvision"].momentum) == (1e-5, 0.9)
    assert (bn["v3", "keras"].epsilon, bn["v3", "keras"].momentum) == (1e-3, 0.999)
    assert (bn["v3", "torchvision"].epsilon, bn["v3", "torchvision"].momentum) == (1e-3, 0.99)
    assert isinstance(v3["keras"].get_layer("rescaling"), keras.layers.Rescaling)
    assert not any(isinstance(layer, keras.layers.Rescaling) for layer in v3["torchvision"].layers)
    assert v2["torchvision"].get_layer("dropout").rate == 0.2
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in v2["keras"].layers)


@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("mobilenet_v2", dict(variant="tf"), r"mobilenet_v2: variant must be one of"),
        ("mobilenet_v2", dict(alpha=0), r"mobilenet_v2: alpha must be a positive number, got 0"),
        ("mobilenet_v3_small", dict(alpha="wide"), r"alpha must be a positive number, got 'wide'"),
        ("mobilenet_v3_small", dict(variant="torchvision", minimalistic=True),
         r"minimalistic=True is a keras architecture"),
        ("mobilenet_v3_large", dict(variant="torchvision", include_preprocessing=True),
         r"include_preprocessing=True is keras' in-model Rescaling"),
        ("mobilenet_v3_large", dict(dropout_rate=1.5), r"dropout_rate must be in \[0, 1\)"),
        ("mobilenet_v2", dict(input_shape=(31, 31, 3)), r"too small; .* at least 32"),
    ],
)
def test_invalid_options_are_clear_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        structure(name, data_format="channels_last", **kwargs)


def test_file_options_win_over_conflicting_arguments(source_files):
    path, _, _ = source_files("mobilenet_v3_small", "torchvision")
    with pytest.raises(ValueError, match=r"need variant='torchvision', got variant='keras'"):
        multinet.create_model("mobilenet_v3_small", weights=path, variant="keras")


def test_source_options_from_file_content():
    family = multinet.get_model_spec("mobilenet_v3_small").family
    names = frozenset({"Conv", "Conv_BatchNorm", "expanded_conv_depthwise", "Conv_1"})
    assert family.source_options("keras_legacy_h5", names) == {"variant": "keras",
                                                               "minimalistic": True}
    se = names | {"expanded_conv_squeeze_excite_Conv"}
    assert family.source_options("keras_legacy_h5", se)["minimalistic"] is False
    assert family.source_options("torchvision", frozenset({"features.0.0"})) == {
        "variant": "torchvision"}
    assert family.preprocessing_for("keras_legacy_h5", {"include_preprocessing": False}) == "tf"
    assert family.preprocessing_for("keras_legacy_h5") == "none"
    assert multinet.get_model_spec("mobilenet_v2").family.preprocessing_for(
        "keras_legacy_h5") == "tf"


# --- weights entries and constructors ------------------------------------------


def test_weights_entries_are_the_published_files():
    from keras.src.applications import mobilenet_v2 as keras_v2
    from keras.src.applications import mobilenet_v3 as keras_v3

    v2 = multinet.get_model_spec("mobilenet_v2")
    assert v2.default_weights == "keras"
    keras_entry = v2.get_weights("imagenet")
    assert keras_entry.url == (keras_v2.BASE_WEIGHT_PATH
                               + "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5")
    assert keras_entry.notop_url == keras_entry.url.replace(".h5", "_no_top.h5")
    assert keras_entry.file_hash is None and keras_entry.preprocessing == "tf"
    assert {e.arch_options["alpha"] for e in v2.weights if e.layout == "keras_legacy_h5"} == {
        0.35, 0.5, 0.75, 1.0, 1.3, 1.4}
    for name in ("mobilenet_v3_small", "mobilenet_v3_large"):
        spec = multinet.get_model_spec(name)
        size = name.rsplit("_", 1)[-1]
        for entry in spec.weights:
            if entry.layout != "keras_legacy_h5":
                continue
            key = "{}{}_224_{}_float".format(size, "_minimalistic" * bool(
                entry.arch_options["minimalistic"]), entry.arch_options["alpha"])
            assert entry.url == f"{keras_v3.BASE_WEIGHT_PATH}weights_mobilenet_v3_{key}.h5"
            assert entry.notop_url == entry.url.replace(".h5", "_no_top_v2.h5")
            assert (entry.file_hash, entry.notop_file_hash) == keras_v3.WEIGHTS_HASHES[key]
            assert entry.hash_algorithm == "md5" and entry.preprocessing == "none"
    torch_files = {(n, e.name): (e.filename, e.resize_size)
                   for n in mx.MODELS for e in multinet.get_model_spec(n).weights
                   if e.layout == "torchvision"}
    assert torch_files == {
        ("mobilenet_v2", "torchvision"): ("mobilenet_v2-b0353104.pth", 256),
        ("mobilenet_v2", "torchvision_v2"): ("mobilenet_v2-7ebf99e0.pth", 232),
        ("mobilenet_v3_small", "torchvision"): ("mobilenet_v3_small-047dcff4.pth", 256),
        ("mobilenet_v3_large", "torchvision"): ("mobilenet_v3_large-8738ca79.pth", 256),
        ("mobilenet_v3_large", "torchvision_v2"): ("mobilenet_v3_large-5c1a4163.pth", 232),
    }


@pytest.mark.parametrize("public,keras_name", [("MobileNetV2", "MobileNetV2"),
                                               ("MobileNetV3Small", "MobileNetV3Small"),
                                               ("MobileNetV3Large", "MobileNetV3Large")])
def test_constructors_take_keras_arguments_in_keras_order(public, keras_name):
    ours = inspect.signature(getattr(multinet.models, public)).parameters
    theirs = inspect.signature(getattr(keras.applications, keras_name)).parameters
    assert list(ours)[:len(theirs)] == list(theirs)
    for param, value in theirs.items():
        # weights: None (no download unless asked); include_preprocessing:
        # None means keras' True for the keras variant.
        expected = {"weights": None, "include_preprocessing": None}.get(param, value.default)
        assert ours[param].default == expected, param
    constructor = getattr(multinet.models, public)
    with keras.StatelessScope(initialize_variables=False):
        model = constructor((96, 96, 3), 0.75, classes=7, data_format="channels_last")
    assert model.input_shape == (None, 96, 96, 3) and model.output_shape == (None, 7)
    assert multinet.model_info(model)["options"]["alpha"] == 0.75
    assert model.name == ("mobilenet_v2" if public == "MobileNetV2" else public)


def test_make_divisible_is_keras_and_torchvision_rounding():
    from keras.src.applications.mobilenet_v3 import _depth

    for value in [3.5, 4, 12, 18, 22.5, 36.0, 88 * 0.75, 1280 * 1.3, 960 * 0.35]:
        assert mobilenet.make_divisible(value) == _depth(value), value


def test_constructor_imagenet_weights_follow_alpha_like_keras(monkeypatch):
    """``weights="imagenet"`` picks the file for the alpha (and minimalistic)
    asked for, and an unpublished combination fails before any download."""
    fetched = []

    def fake_fetch(entry, include_top=True, model_name=None):
        fetched.append(entry.name)
        raise multinet.WeightsUnavailableError(f"not fetched: {entry.name}")

    monkeypatch.setattr("multinet.weights.fetch", fake_fetch)
    for constructor, kwargs, entry in [
        (multinet.models.MobileNetV2, dict(alpha=0.35), "keras-0.35"),
        (multinet.models.MobileNetV2, dict(), "keras"),
        (multinet.models.MobileNetV3Small, dict(minimalistic=True), "keras-minimalistic"),
        (multinet.models.MobileNetV3Large, dict(alpha=0.75), "keras-0.75"),
        (multinet.models.MobileNetV3Large, dict(variant="torchvision"), "torchvision"),
    ]:
        with pytest.raises(multinet.WeightsUnavailableError, match=f"not fetched: {entry}$"):
            constructor(weights="imagenet", **kwargs)
    with pytest.raises(ValueError, match=r"mobilenet_v3_small: no ImageNet weights for "
                                         r"alpha=0.75, minimalistic=True; published: alpha=1.0,"):
        multinet.models.MobileNetV3Small(alpha=0.75, minimalistic=True, weights="imagenet")
    with pytest.raises(ValueError, match=r"weights 'keras' need alpha=1.0, got alpha=0.5"):
        multinet.create_model("mobilenet_v3_small", weights="keras", alpha=0.5)
    assert len(fetched) == 5  # the errors came before any fetch
