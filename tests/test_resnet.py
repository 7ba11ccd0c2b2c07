"""ResNet against independent references: torchvision's model code and tf-keras' applications.

resnet18 (torchvision) and resnet50 (torchvision and keras) are checked at full
depth: weights files in each source's real layout (seeded weights, BatchNorm
statistics calibrated by the reference, see tests/make_expected_resnet.py)
load through ``multinet.create_model(name, weights=PATH)``, which picks the
variant from the file's content; the logits must match the reference's within
1e-4 relative at 224 and 199, in both data formats, each computed in its own
format. The references' outputs are stored in tests/data; where a reference
runs (torchvision in the torch session, tf-keras in the tensorflow session)
the test also runs it live. resnet34/101/152 are checked by structure (a
weights file of the reference's layout loads with every tensor placed) and by
parameter count.
"""

from __future__ import annotations

import functools
import inspect

import keras
import make_expected_resnet as expected_data
import numpy as np
import pytest
from helpers import infer
from references import rel_error, structured_images, write_legacy_h5

import multinet
from multinet.weights import WeightsLoadError, loaded_weights

TOL = 1e-4
FULL_DEPTH = [("resnet18", "torchvision"), ("resnet50", "torchvision"), ("resnet50", "keras")]
FORMATS = ("channels_last", "channels_first")
SIZES = expected_data.SIZES
HEAD = {"torchvision": "fc", "keras": "predictions"}

# Keras' count_params() with the 1000-class top (BatchNorm moving statistics
# included), and the trainable part, which for torchvision is its Weights.meta
# num_params. keras: tf-keras 2.21's ResNet50/101/152.count_params().
COUNTS = {
    ("resnet18", "torchvision"): (11_699_112, 11_689_512),
    ("resnet34", "torchvision"): (21_814_696, 21_797_672),
    ("resnet50", "torchvision"): (25_610_152, 25_557_032),
    ("resnet101", "torchvision"): (44_654_504, 44_549_160),
    ("resnet152", "torchvision"): (60_344_232, 60_192_808),
    ("resnet50", "keras"): (25_636_712, 25_583_592),
    ("resnet101", "keras"): (44_707_176, 44_601_832),
    ("resnet152", "keras"): (60_419_944, 60_268_520),
}
ALL_CASES = sorted(COUNTS)
DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3),
          "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}
WIDTH = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048,
         "resnet152": 2048}


def has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def reference_runs(source: str) -> bool:
    return has("torch") if source == "torchvision" else has("tf_keras")


def network_inputs(size: int, source: str) -> np.ndarray:
    """The test images as each source's published preprocessing makes them,
    written out from REFERENCE.md (NHWC float32)."""
    x = structured_images(size, expected_data.TEST_IMAGES).astype(np.float64)
    if source == "torchvision":
        x = (x / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    else:
        x = x[..., ::-1] - [103.939, 116.779, 123.68]
    return np.ascontiguousarray(x, dtype=np.float32)


def in_format(x: np.ndarray, data_format: str) -> np.ndarray:
    return x if data_format == "channels_last" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))



@functools.cache
def expected(model_name: str, source: str) -> dict:
    return expected_data.load_expected(model_name, source)


def write_weights_file(folder, model_name: str, source: str, calibrated: bool = True) -> str:
    """The weights file in the source's real layout: a .pth (torch session) or
    .safetensors state dict for torchvision, a legacy Keras 2 .h5 for keras."""
    data = expected(model_name, source)
    stats = data["stats"] if calibrated else None
    if source == "keras":
        path = folder / f"{model_name}_weights_tf_dim_ordering_tf_kernels.h5"
        write_legacy_h5(path, expected_data.keras_layers(data["layout"], stats))
        return str(path)
    state = expected_data.torchvision_state(data["layout"], stats)
    if has("torch"):
        import torch

        path = folder / f"{model_name}.pth"
        torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, path)
    else:
        from safetensors.numpy import save_file

        path = folder / f"{model_name}.safetensors"
        save_file(state, str(path))
    return str(path)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resnet_weights")
    return {case: write_weights_file(folder, *case) for case in FULL_DEPTH}


@pytest.fixture(scope="module")
def models(weight_files):
    """One model per (model, source, format), built once for the module."""
    cache = {}

    def get(model_name, source, data_format):
        key = (model_name, source, data_format)
        if key not in cache:
            shape = (None, None, 3) if data_format == "channels_last" else (3, None, None)
            cache[key] = multinet.create_model(
                model_name, weights=weight_files[(model_name, source)], input_shape=shape,
                data_format=data_format, compute_format=data_format,
                classifier_activation=None)
        return cache[key]

    yield get
    cache.clear()


@functools.cache
def live_reference(model_name: str, source: str, size: int) -> np.ndarray:
    """The reference's logits on its own pipeline, with the stored weights."""
    data = expected(model_name, source)
    images = structured_images(size, expected_data.TEST_IMAGES)
    if source == "torchvision":
        import torch
        from references import torchvision_models

        module = getattr(torchvision_models(), model_name)()
        state = expected_data.torchvision_state(data["layout"], data["stats"])
        module.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
        module.eval()
        with torch.inference_mode():
            return module(expected_data._torchvision_pipeline(images)).numpy()
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = write_weights_file(Path(folder), model_name, source)
        reference = expected_data.tf_keras_model(model_name, size)
        reference.load_weights(path)  # tf-keras reads a legacy file in layer order
    return reference(expected_data._keras_pipeline(images)).numpy()


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("model_name,source", FULL_DEPTH)
def test_matches_the_reference(models, model_name, source, data_format):
    model = models(model_name, source, data_format)
    assert multinet.model_info(model)["options"] == {"variant": source}
    for size in SIZES:
        got = infer(model, in_format(network_inputs(size, source), data_format))
        stored = expected(model_name, source)["outputs"][size]
        assert got.shape == stored.shape == (2, 1000)
        assert rel_error(got, stored) < TOL, size
        if reference_runs(source):
            live = live_reference(model_name, source, size)
            assert rel_error(live, stored) < TOL, (
                f"tests/data is stale: run tests/make_expected_resnet.py {source}")
            assert rel_error(got, live) < TOL, size


def test_stored_outputs_depend_on_the_input():
    from references import assert_inputs_matter

    for case in FULL_DEPTH:
        for size in SIZES:
            assert_inputs_matter(expected(*case)["outputs"][size])


@pytest.mark.parametrize("model_name,source", FULL_DEPTH)
def test_preprocess_input_feeds_the_model_as_the_reference_pipeline(models, model_name, source):
    """Raw 8-bit images through ``preprocess_input(x, model=m)`` give the
    reference's logits on its own pipeline (torchvision's ToTensor + Normalize,
    keras.applications.resnet.preprocess_input)."""
    for data_format in FORMATS:
        model = models(model_name, source, data_format)
        assert loaded_weights(model)["preprocessing"] == {"torchvision": "torch",
                                                          "keras": "caffe"}[source]
        raw = in_format(structured_images(224, expected_data.TEST_IMAGES), data_format)
        got = infer(model, multinet.preprocess_input(raw.astype(np.uint8), model=model))
        assert rel_error(got, expected(model_name, source)["outputs"][224]) < TOL, data_format


@pytest.mark.parametrize("model_name,source", FULL_DEPTH)
def test_include_top_false_skips_only_the_head(models, weight_files, model_name, source):
    full = models(model_name, source, "channels_last")
    notop = multinet.create_model(model_name, include_top=False, pooling="avg",
                                  variant=source, data_format="channels_last",
                                  compute_format="channels_last")
    report = multinet.load_weights(notop, weight_files[(model_name, source)])
    assert list(report.skipped) == [HEAD[source]]
    assert sorted(report.loaded) == sorted(layer.name for layer in notop.layers if layer.weights)
    features = keras.Model(full.input, full.get_layer(HEAD[source]).input)
    x = network_inputs(199, source)
    assert rel_error(infer(notop, x), infer(features, x)) < TOL


def _weighted_layers(model) -> dict:
    return {layer.name: [tuple(w.shape) for w in layer.weights]
            for layer in model.layers if layer.weights}


@pytest.mark.parametrize("model_name,source", ALL_CASES)
def test_parameter_counts_and_structure(model_name, source, tmp_path):
    """Each variant: Keras' count, torchvision's or keras.applications' count,
    and a file of the reference's layout placing every tensor (random BatchNorm
    statistics: nothing is run)."""
    model = multinet.create_model(model_name, variant=source, data_format="channels_last")
    total, trainable = COUNTS[(model_name, source)]
    assert model.count_params() == total
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable
    path = write_weights_file(tmp_path, model_name, source, calibrated=False)
    report = multinet.load_weights(model, path)
    assert not report.skipped
    assert sorted(report.loaded) == sorted(_weighted_layers(model))
    assert report.num_values == total
    assert model.get_layer(HEAD[source]).input.shape == (None, WIDTH[model_name])
    first_convs = "_1_conv" if source == "keras" else "_conv1"
    blocks = [name for name in _weighted_layers(model) if name.endswith(first_convs)
              and name != "conv1"]
    stages = ("conv2", "conv3", "conv4", "conv5") if source == "keras" else (
        "layer1", "layer2", "layer3", "layer4")
    assert tuple(sum(name.startswith(stage + "_") for name in blocks)
                 for stage in stages) == DEPTHS[model_name]
    if source == "keras":
        # The legacy layout lists every layer, weightless ones too: the same
        # names as multinet's, save the input layer (and multinet's own: the
        # model information, a data-format permutation).
        listed = [name for name, _ in expected(model_name, source)["layout"]][1:]
        ours = [layer.name for layer in model.layers[1:]
                if layer.name != "multinet_info" and not layer.name.startswith("to_channels")]
        assert sorted(listed) == sorted(ours)
    # The file's layout came from the reference (tests/data); for the models
    # run at full depth, and for every torchvision one (cheap), the live
    # reference's own count too.
    if reference_runs(source) and (source == "torchvision" or
                                   (model_name, source) in FULL_DEPTH):
        check_counts_with_the_reference(model_name, source)


def check_counts_with_the_reference(model_name, source):
    total, trainable = COUNTS[(model_name, source)]
    if source == "torchvision":
        from references import torchvision_models

        module = getattr(torchvision_models(), model_name)()
        params = sum(p.numel() for p in module.parameters())
        buffers = sum(b.numel() for n, b in module.named_buffers()
                      if not n.endswith("num_batches_tracked"))
        assert (params + buffers, params) == (total, trainable)
    else:
        reference = expected_data.tf_keras_model(model_name, 224)
        assert reference.count_params() == total
        assert sum(int(np.prod(w.shape)) for w in reference.trainable_weights) == trainable


def test_torchvision_entries_match_torchvision():
    for model_name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        spec = multinet.get_model_spec(model_name)
        entries = {e.name: e for e in spec.weights}
        has_v2 = model_name not in ("resnet18", "resnet34")
        names = {"torchvision", "keras", "torchvision_v2"} if has_v2 else {"torchvision"}
        assert set(entries) == names
        assert spec.default_weights == ("keras" if has_v2 else "torchvision")
        v1 = entries["torchvision"]
        assert (v1.layout, v1.preprocessing, v1.resize_size, v1.input_size) == (
            "torchvision", "torch", 256, 224)
        assert dict(v1.arch_options) == {"variant": "torchvision"}
        if has_v2:
            v2 = entries["torchvision_v2"]
            assert (v2.resize_size, v2.input_size, dict(v2.arch_options)) == (
                232, 224, {"variant": "torchvision"})
        if not has("torch"):
            continue
        from references import torchvision_models

        enum = getattr(torchvision_models(), f"ResNet{model_name[6:]}_Weights")
        for entry_name, member in (("torchvision", "IMAGENET1K_V1"),
                                   ("torchvision_v2", "IMAGENET1K_V2")):
            if entry_name not in entries:
                assert not hasattr(enum, member)
                continue
            published = getattr(enum, member)
            entry = entries[entry_name]
            assert entry.url == published.url
            assert published.url.endswith(f"-{entry.file_hash}.pth")
            assert published.meta["num_params"] == COUNTS[(model_name, "torchvision")][1]
            transform = published.transforms()
            assert (list(transform.resize_size), list(transform.crop_size)) == (
                [entry.resize_size], [entry.input_size])


def test_keras_entries_are_keras_applications():
    from keras.src.applications import resnet as keras_resnet

    for model_name in ("resnet50", "resnet101", "resnet152"):
        check_keras_entry(model_name, keras_resnet)


def check_keras_entry(model_name, keras_resnet):
    entry = multinet.get_model_spec(model_name).get_weights("keras")
    top, notop = keras_resnet.WEIGHTS_HASHES[model_name]
    stem = f"{keras_resnet.BASE_WEIGHTS_PATH}{model_name}_weights_tf_dim_ordering_tf_kernels"
    assert (entry.url, entry.file_hash, entry.hash_algorithm) == (stem + ".h5", top, "md5")
    assert (entry.notop_url, entry.notop_file_hash) == (stem + "_notop.h5", notop)
    assert (entry.layout, entry.preprocessing, dict(entry.arch_options)) == (
        "keras_legacy_h5", "caffe", {"variant": "keras"})
    assert multinet.get_model_spec(model_name).get_weights("imagenet") is entry


def test_constructors_follow_keras_applications():
    from multinet.models import ResNet18, ResNet34, ResNet50, ResNet101, ResNet152

    keras_params = list(inspect.signature(keras.applications.ResNet50).parameters)
    for constructor in (ResNet18, ResNet34, ResNet50, ResNet101, ResNet152):
        ours = list(inspect.signature(constructor).parameters)
        assert ours[:len(keras_params)] == keras_params, constructor.__name__
    model = ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3), pooling="max")
    assert multinet.model_info(model)["options"] == {"variant": "keras"}
    assert model.get_layer("conv2_block1_0_conv").kernel.shape == (1, 1, 64, 256)
    assert model.output_shape == (None, 2048)
    model = ResNet18(weights=None, classes=7, input_shape=(3, 64, 64), data_format="channels_first")
    assert multinet.model_info(model)["options"] == {"variant": "torchvision"}
    assert model.output_shape == (None, 7)


def test_variant_comes_from_the_file_and_conflicts_are_errors(weight_files):
    keras_file = weight_files[("resnet50", "keras")]
    torch_file = weight_files[("resnet50", "torchvision")]
    with pytest.raises(ValueError, match=r"resnet50: weights file .*keras_legacy_h5.* need "
                                         r"variant='keras', got variant='torchvision'"):
        multinet.create_model("resnet50", weights=keras_file, variant="torchvision")
    with pytest.raises(ValueError, match=r"resnet18: weights file .*torchvision.* need "
                                         r"variant='torchvision', got variant='keras'"):
        multinet.create_model("resnet18", weights=torch_file, variant="keras")
    with pytest.raises(ValueError, match=r"resnet18: variant 'keras' exists only for "
                                         r"resnet50, resnet101, resnet152"):
        multinet.create_model("resnet18", variant="keras")
    with pytest.raises(ValueError, match=r"resnet50: variant must be one of \('torchvision', "
                                         r"'keras'\), got 'v2'"):
        multinet.create_model("resnet50", variant="v2")
    # A torchvision checkpoint into a keras-variant model built beforehand.
    model = multinet.create_model("resnet50", include_top=False, input_shape=(32, 32, 3))
    before = [np.array(w) for w in model.get_weights()]
    with pytest.raises(WeightsLoadError,
                       match=r"resnet50 variant 'keras' has no torchvision layout.*"
                             r"variant='torchvision'"):
        multinet.load_weights(model, torch_file)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))


def test_strides_and_padding_per_variant():
    """Where each variant puts a stage's stride, and explicit symmetric padding
    where torchvision pads a stride-2 3x3 convolution."""
    tv = multinet.create_model("resnet50", variant="torchvision", include_top=False,
                               input_shape=(224, 224, 3), data_format="channels_last",
                               compute_format="channels_last")
    assert tv.get_layer("layer2_0_conv1").strides == (1, 1)
    assert tv.get_layer("layer2_0_conv2").strides == (2, 2)
    assert tv.get_layer("layer2_0_conv2").padding == "valid"
    assert tv.get_layer("layer2_0_conv2_pad").padding == ((1, 1), (1, 1))
    assert tv.get_layer("bn1").epsilon == 1e-5
    assert not tv.get_layer("conv1").use_bias
    ks = multinet.create_model("resnet50", variant="keras", include_top=False,
                               input_shape=(224, 224, 3), data_format="channels_last",
                               compute_format="channels_last")
    assert ks.get_layer("conv3_block1_1_conv").strides == (2, 2)
    assert ks.get_layer("conv3_block1_2_conv").strides == (1, 1)
    assert ks.get_layer("conv1_bn").epsilon == 1.001e-5
    assert ks.get_layer("conv1_conv").use_bias
    for model in (tv, ks):
        assert model.output_shape == (None, 7, 7, 2048)
