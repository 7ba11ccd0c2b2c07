"""ConvNeXt against independent references: torchvision's model code and tf-keras' applications.

convnext_tiny is checked at full depth for both sources: weights files in
each source's real layout (seeded weights, see tests/make_expected_convnext.py)
load through ``multinet.create_model(name, weights=PATH)``, which picks
``include_preprocessing`` from the file's content; the logits must match the
reference's within 1e-4 relative at 224 and 121, in both data formats, each
computed in its own format. The references' outputs are stored in tests/data;
where a reference runs (torchvision in the torch session, tf-keras in the
tensorflow session) the test also runs it live. convnext_small/base/large are
checked by structure (every tensor of the reference's layout finds a layer of
its converted shape) and parameter count, without initializing a variable.
"""

from __future__ import annotations

import functools
import inspect

import keras
import make_expected_convnext as expected_data
import numpy as np
import pytest
from helpers import infer
from references import rel_error, structured_images, write_legacy_h5

import multinet
from multinet import backend, layers
from multinet.weights import WeightsLoadError, loaded_weights
from multinet.weights.keras_h5 import keras_layer_name, nested_layers
from multinet.weights.torchvision import convert_module, group_modules

TOL = 1e-4
SOURCES = ("torchvision", "keras")
FORMATS = ("channels_last", "channels_first")
SIZES = expected_data.SIZES
MODELS = expected_data.MODELS
FULL = "convnext_tiny"
# torchvision's num_params (no buffers) and keras' count_params() alike.
PARAMS = {"convnext_tiny": 28_589_128, "convnext_small": 50_223_688,
          "convnext_base": 88_591_464, "convnext_large": 197_767_336}
WIDTH = {"convnext_tiny": 768, "convnext_small": 768, "convnext_base": 1024,
         "convnext_large": 1536}
DEPTHS = {"convnext_tiny": (3, 3, 9, 3), "convnext_small": (3, 3, 27, 3),
          "convnext_base": (3, 3, 27, 3), "convnext_large": (3, 3, 27, 3)}
RESIZE = {"convnext_tiny": 236, "convnext_small": 230, "convnext_base": 232,
          "convnext_large": 232}
# The in-model normalization each source's files come with.
PREPROCESSING = {"torchvision": False, "keras": True}

pytestmark = pytest.mark.usefixtures("numpy_initial_weights")


def has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def reference_runs(source: str) -> bool:
    return has("torch") if source == "torchvision" else has("tf_keras")


def network_inputs(size: int, source: str) -> np.ndarray:
    """The test images as each source's model takes them (NHWC float32):
    torchvision's normalization written out from REFERENCE.md, keras' [0, 255]."""
    x = structured_images(size, expected_data.TEST_IMAGES).astype(np.float64)
    if source == "torchvision":
        x = (x / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return np.ascontiguousarray(x, dtype=np.float32)


def in_format(x: np.ndarray, data_format: str) -> np.ndarray:
    return x if data_format == "channels_last" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))



@functools.cache
def expected(model_name: str, source: str) -> dict:
    return expected_data.load_expected(model_name, source)


def write_weights_file(folder, model_name: str, source: str, top: bool = True) -> str:
    """The weights file in the source's real layout: a .pth (torch session) or
    .safetensors state dict for torchvision, a legacy Keras 2 .h5 for keras."""
    data = expected(model_name, source)
    if source == "keras":
        layout = data["layout"] if top else data["layout_notop"]
        path = folder / f"{model_name}{'' if top else '_notop'}.h5"
        write_legacy_h5(path, expected_data.keras_layers(layout))
        return str(path)
    state = expected_data.torchvision_state(data["layout"])
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
    folder = tmp_path_factory.mktemp("convnext_weights")
    return {source: write_weights_file(folder, FULL, source) for source in SOURCES}


@pytest.fixture(scope="module")
def models(weight_files):
    """One convnext_tiny per (source, format), built once for the module."""
    cache = {}

    def get(source, data_format):
        key = (source, data_format)
        if key not in cache:
            shape = (None, None, 3) if data_format == "channels_last" else (3, None, None)
            cache[key] = multinet.create_model(
                FULL, weights=weight_files[source], input_shape=shape,
                data_format=data_format, compute_format=data_format,
                classifier_activation=None)
        return cache[key]

    yield get
    cache.clear()


@functools.cache
def live_reference(source: str, size: int) -> np.ndarray:
    """The reference's logits on its own pipeline, with the same weights."""
    data = expected(FULL, source)
    images = structured_images(size, expected_data.TEST_IMAGES)
    if source == "torchvision":
        import torch

        module = expected_data.torchvision_module(FULL, data["layout"])
        with torch.inference_mode():
            return module(expected_data.torchvision_pipeline(images)).numpy()
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = write_weights_file(Path(folder), FULL, source)
        reference = expected_data.tf_keras_model(FULL, size)
        reference.load_weights(path)  # tf-keras reads a legacy file in layer order
    return reference(expected_data.keras_pipeline(images)).numpy()


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("source", SOURCES)
def test_matches_the_reference(models, source, data_format):
    """At 224, raw 8-bit images through ``preprocess_input(x, model=m)``
    against the reference on its own pipeline (torchvision's ToTensor +
    Normalize; keras' [0, 255] pixels into its in-model normalization); at
    121, the inputs as written out in ``network_inputs``."""
    model = models(source, data_format)
    assert multinet.model_info(model)["options"] == {
        "include_preprocessing": PREPROCESSING[source]}
    assert loaded_weights(model)["preprocessing"] == {"torchvision": "torch",
                                                      "keras": "none"}[source]
    for size in SIZES:
        if size == 224:
            raw = structured_images(size, expected_data.TEST_IMAGES).astype(np.uint8)
            x = multinet.preprocess_input(in_format(raw, data_format), model=model)
        else:
            x = in_format(network_inputs(size, source), data_format)
        got = infer(model, x)
        stored = expected(FULL, source)["outputs"][size]
        assert got.shape == stored.shape == (2, 1000)
        assert rel_error(got, stored) < TOL, size
        if reference_runs(source) and data_format == "channels_last":
            live = live_reference(source, size)
            assert rel_error(live, stored) < TOL, (
                f"tests/data is stale: run tests/make_expected_convnext.py {source}")
            assert rel_error(got, live) < TOL, size


def test_stored_outputs_depend_on_the_input():
    from references import assert_inputs_matter

    for source in SOURCES:
        for size in SIZES:
            assert_inputs_matter(expected(FULL, source)["outputs"][size])
    # The two sources' weights differ (drawn from different names): the
    # comparison above is with each source's own reference.
    assert rel_error(expected(FULL, "keras")["outputs"][224],
                     expected(FULL, "torchvision")["outputs"][224]) > 0.1


@pytest.mark.parametrize("source", SOURCES)
def test_include_top_false_skips_only_the_head(models, weight_files, source, tmp_path):
    """A full file into a model without its top leaves out only the classifier
    Dense; the features end in the head's LayerNorm after the pooling, as in
    keras.applications (and as the input of torchvision's last Linear)."""
    full = models(source, "channels_first")
    notop = multinet.create_model(FULL, include_top=False, pooling="avg",
                                  include_preprocessing=PREPROCESSING[source],
                                  data_format="channels_first", compute_format="channels_first")
    report = multinet.load_weights(notop, weight_files[source])
    label = {"torchvision": " (file: classifier.2)", "keras": ""}[source]
    assert list(report.skipped) == [f"{FULL}_head_dense{label}"]
    assert sorted(report.loaded) == sorted(layer.name for layer in notop.layers if layer.weights)
    if source == "torchvision":
        features = keras.Model(full.input, full.get_layer(f"{FULL}_head_dense").input)
        x = in_format(network_inputs(64, source), "channels_first")
        assert rel_error(infer(notop, x), infer(features, x)) < TOL
        return
    # keras' own file without the top: its last LayerNorm is auto-named.
    assert expected(FULL, source)["layout_notop"][-1][0] == "layer_normalization"
    path = write_weights_file(tmp_path, FULL, source, top=False)
    assert multinet.load_weights(notop, path).skipped == {}
    (name, ((_, gamma), _)), = expected_data.keras_layers(
        [expected(FULL, source)["layout_notop"][-1]])
    norm = notop.get_layer(f"{FULL}_head_layernorm")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(norm.gamma), gamma)
    assert loaded_weights(notop)["preprocessing"] == "none"


def test_weights_decide_the_in_model_normalization(weight_files, tmp_path):
    torch_file, keras_file = weight_files["torchvision"], weight_files["keras"]
    with pytest.raises(ValueError, match=r"convnext_tiny: weights file .*torchvision.* need "
                                         r"include_preprocessing=False, got "
                                         r"include_preprocessing=True"):
        multinet.create_model(FULL, weights=torch_file, include_preprocessing=True)
    with pytest.raises(ValueError, match=r"convnext_tiny: weights file .*keras_legacy_h5.* need "
                                         r"include_preprocessing=True"):
        multinet.create_model(FULL, weights=keras_file, include_preprocessing=False)
    with pytest.raises(ValueError, match=r"include_preprocessing must be True or False, "
                                         r"got 'yes'"):
        multinet.create_model(FULL, include_preprocessing="yes")
    # A Keras 2 file of a model built without the normalization: no such layer.
    layout = [entry for entry in expected(FULL, "keras")["layout"]
              if not entry[0].endswith("_prestem_normalization")]
    path = tmp_path / "no_prestem.h5"
    write_legacy_h5(path, expected_data.keras_layers(layout))
    model = multinet.create_model(FULL, weights=str(path), include_top=False,
                                  input_shape=(64, 64, 3))
    assert multinet.model_info(model)["options"] == {"include_preprocessing": False}
    assert loaded_weights(model)["preprocessing"] == "torch"
    assert not any(isinstance(layer, keras.layers.Normalization) for layer in model.layers)


# --- structure and parameter counts (no forward pass) -------------------------


def structure(model_name, **kwargs):
    """A model built for its structure only (no variable initialized)."""
    with keras.StatelessScope(initialize_variables=False):
        return multinet.create_model(model_name, **kwargs)


def _shapes(layer):
    return [tuple(w.shape) for w in layer.weights]


@pytest.mark.parametrize("model_name", MODELS)
def test_parameter_counts_and_structure(model_name):
    """Every tensor of the reference's weights file (torchvision's state dict,
    keras' legacy layout with its nested stem and downsampling groups) finds
    the layer its name maps to, with the shape its conversion gives, and
    every weighted layer gets one."""
    model = structure(model_name, include_preprocessing=False, data_format="channels_first")
    assert model.count_params() == PARAMS[model_name]
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == PARAMS[model_name]
    assert model.get_layer(f"{model_name}_head_dense").input.shape == (None, WIDTH[model_name])
    weighted = {layer.name: layer for layer in model.layers if layer.weights}
    blocks = [name for name in weighted if name.endswith("_layer_scale")]
    assert tuple(sum(f"_stage_{stage}_" in name for name in blocks)
                 for stage in range(4)) == DEPTHS[model_name]
    # torchvision: module by module, through the converter, on zero-cost arrays.
    names = model_info_family(model).torchvision_names(model_name, {})
    layout = expected(model_name, "torchvision")["layout"]
    placed = []
    for module, params in group_modules({k: tuple(s) for k, s in layout}).items():
        layer = weighted[names[module]]
        arrays = convert_module(module, {p: np.broadcast_to(np.float32(0), s)
                                         for p, s in params.items()}, layer)
        assert [a.shape for a in arrays] == _shapes(layer), module
        placed.append(layer.name)
    assert sorted(placed) == sorted(weighted)
    # keras: the legacy file's groups, nested Sequentials split, by name.
    placed = []
    for group, weights in expected(model_name, "keras")["layout"]:
        shapes = [tuple(shape) for _, shape in weights]
        for inner, inner_shapes in nested_layers(group, [w for w, _ in weights], shapes):
            if not inner_shapes:
                continue
            layer = weighted[keras_layer_name(inner)]
            assert list(inner_shapes) == _shapes(layer), inner
            placed.append(layer.name)
    assert sorted(placed) == sorted(weighted)
    # With keras' normalization: the same parameters, one more (weightless) layer.
    keras_model = structure(model_name, data_format="channels_first")
    assert keras_model.count_params() == PARAMS[model_name]
    assert len(keras_model.layers) == len(model.layers) + 1
    if model_name == FULL:
        check_counts_with_the_references()


def model_info_family(model):
    return multinet.get_model_spec(multinet.model_info(model)["model"]).family


def check_counts_with_the_references():
    if has("torch"):
        module = expected_data.torchvision_module(FULL)
        assert sum(p.numel() for p in module.parameters()) == PARAMS[FULL]
        assert not [n for n, _ in module.named_buffers()]
    if has("tf_keras"):
        assert expected_data.tf_keras_model(FULL, 224).count_params() == PARAMS[FULL]


def test_weights_entries_match_the_publishers():
    from keras.src.applications import convnext as keras_convnext

    for model_name in MODELS:
        spec = multinet.get_model_spec(model_name)
        entries = {e.name: e for e in spec.weights}
        assert set(entries) == {"keras", "torchvision"}
        assert spec.default_weights == "keras"
        assert spec.get_weights("imagenet") is entries["keras"]
        keras_entry, torch_entry = entries["keras"], entries["torchvision"]
        top, notop = keras_convnext.WEIGHTS_HASHES[model_name]
        stem = keras_convnext.BASE_WEIGHTS_PATH + model_name
        assert (keras_entry.url, keras_entry.file_hash, keras_entry.hash_algorithm) == (
            stem + ".h5", top, "sha256")
        assert (keras_entry.notop_url, keras_entry.notop_file_hash) == (stem + "_notop.h5",
                                                                        notop)
        assert (keras_entry.layout, keras_entry.preprocessing, keras_entry.resize_size,
                dict(keras_entry.arch_options)) == (
            "keras_legacy_h5", "none", None, {"include_preprocessing": True})
        assert (torch_entry.layout, torch_entry.preprocessing, torch_entry.resize_size,
                torch_entry.input_size, torch_entry.interpolation,
                dict(torch_entry.arch_options)) == (
            "torchvision", "torch", RESIZE[model_name], 224, "bilinear",
            {"include_preprocessing": False})
        if not has("torch"):
            continue
        from references import torchvision_models

        size = model_name.split("_")[1].title()
        published = getattr(torchvision_models(), f"ConvNeXt_{size}_Weights").IMAGENET1K_V1
        assert not hasattr(getattr(torchvision_models(), f"ConvNeXt_{size}_Weights"),
                           "IMAGENET1K_V2")
        assert torch_entry.url == published.url
        assert published.url.endswith(f"-{torch_entry.file_hash}.pth")
        assert published.meta["num_params"] == PARAMS[model_name]
        transform = published.transforms()
        assert (list(transform.resize_size), list(transform.crop_size),
                transform.interpolation.value) == ([RESIZE[model_name]], [224], "bilinear")


def test_constructors_follow_keras_applications():
    from multinet.models import ConvNeXtBase, ConvNeXtLarge, ConvNeXtSmall, ConvNeXtTiny

    for constructor in (ConvNeXtTiny, ConvNeXtSmall, ConvNeXtBase, ConvNeXtLarge):
        keras_params = list(inspect.signature(
            getattr(keras.applications, constructor.__name__)).parameters)
        ours = list(inspect.signature(constructor).parameters)
        assert ours[:len(keras_params)] == keras_params, constructor.__name__
    with keras.StatelessScope(initialize_variables=False):
        model = ConvNeXtTiny(include_top=False, weights=None, input_shape=(3, 64, 64),
                             pooling="max", data_format="channels_first")
    assert multinet.model_info(model)["options"] == {"include_preprocessing": True}
    assert model.name == "convnext_tiny"
    assert model.output_shape == (None, 768)
    assert isinstance(model.layers[-2], keras.layers.LayerNormalization)  # after the pool
    with keras.StatelessScope(initialize_variables=False):
        model = ConvNeXtTiny(weights=None, classes=7, include_preprocessing=False,
                             input_shape=(64, 64, 3))
    assert multinet.model_info(model)["options"] == {"include_preprocessing": False}
    assert model.output_shape == (None, 7)


def test_layers_and_kernels():
    model = structure(FULL, data_format="channels_first", compute_format="channels_first")
    prefix = f"{FULL}_stage_1_block_0"
    depthwise = model.get_layer(prefix + "_depthwise_conv")
    assert (depthwise.groups, depthwise.padding, tuple(depthwise.kernel.shape)) == (
        192, "same", (7, 7, 1, 192))
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.LayerNormalization)]
    assert len(norms) == 1 + 18 + 3 + 1
    assert {layer.epsilon for layer in norms} == {1e-6}
    assert np.ravel(model.get_layer(prefix + "_layernorm").axis).tolist() == [1]
    assert np.ravel(model.get_layer(f"{FULL}_head_layernorm").axis).tolist() == [-1]
    assert all(isinstance(layer, layers.LayerNormalization) for layer in norms)
    assert model.get_layer(prefix + "_layer_scale").axis == 1
    assert tuple(model.get_layer(prefix + "_pointwise_conv_1").kernel.shape) == (192, 768)
    assert isinstance(model.get_layer(prefix + "_gelu"), layers.GELU)
    stem = model.get_layer(f"{FULL}_stem_conv")
    assert (stem.kernel_size, stem.strides, stem.padding) == ((4, 4), (4, 4), "valid")
    down = model.get_layer(f"{FULL}_downsampling_conv_2")
    assert (down.kernel_size, down.strides, down.padding) == ((2, 2), (2, 2), "valid")
    assert model.get_layer(f"{FULL}_prestem_normalization").axis == (1,)


# --- the generic layers and the legacy reader's nested groups ------------------


@pytest.mark.parametrize("data_format", FORMATS)
def test_channel_dense_and_layer_scale_work_over_the_channel_axis(data_format, rng):
    x = rng.standard_normal((2, 5, 6, 4)).astype("float32")  # NHWC
    kernel = rng.standard_normal((4, 3)).astype("float32")
    bias = rng.standard_normal(3).astype("float32")
    gamma = rng.standard_normal(4).astype("float32")
    dense = layers.ChannelDense(3, data_format=data_format)
    scale = layers.LayerScale(axis=layers.channel_axis(data_format))
    inputs = in_format(x, data_format)
    dense.build(inputs.shape)
    scale.build(inputs.shape)
    dense.set_weights([kernel, bias])
    scale.set_weights([gamma])
    assert dense.compute_output_shape(inputs.shape) == in_format(np.zeros((2, 5, 6, 3)),
                                                                 data_format).shape
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dense(inputs)),
                               in_format(x @ kernel + bias, data_format), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scale(inputs)),
                               in_format(x * gamma, data_format), rtol=1e-6)


def test_layer_scale_from_torchvision():
    scale = layers.LayerScale(axis=1)
    scale.build((None, 4, 5, 5))
    value = np.arange(4, dtype="float32").reshape(4, 1, 1)
    (gamma,) = scale.from_torchvision({"layer_scale": value})
    np.testing.assert_array_equal(gamma, [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"layer_scale of shape \(5, 1, 1\) for a LayerScale "
                                         r"of 4 channels \(expected \(4, 1, 1\)\)"):
        scale.from_torchvision({"layer_scale": np.zeros((5, 1, 1), "float32")})
    with pytest.raises(ValueError, match=r"expected a layer_scale for a LayerScale, got "
                                         r"weight"):
        scale.from_torchvision({"weight": value})


def test_a_bad_layer_scale_in_a_state_dict_is_a_clear_error(models):
    """The converter's error names the layer and the module; nothing loads."""
    model = models("torchvision", "channels_last")
    before = [np.array(w) for w in model.get_weights()]
    state = expected_data.torchvision_state(expected(FULL, "torchvision")["layout"])
    state["features.3.1.layer_scale"] = np.ones((191, 1, 1), np.float32)
    with pytest.raises(WeightsLoadError,
                       match=r"convnext_tiny_stage_1_block_1_layer_scale \(file: features.3.1\)"
                             r": layer_scale of shape \(191, 1, 1\)"):
        multinet.load_weights(model, state)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))


def test_nested_groups_of_a_legacy_file():
    arrays = [np.zeros(1), np.zeros(2), np.zeros(3), np.zeros(4)]
    nested = nested_layers("stem", ["stem_conv/kernel:0", "stem_conv/bias:0",
                                     "stem_norm/gamma:0", "stem_norm/beta:0"], arrays)
    assert [(name, [a.size for a in group]) for name, group in nested] == [
        ("stem_conv", [1, 2]), ("stem_norm", [3, 4])]
    # A layer's own weights, '/' in its name or scopes under it, stay one group.
    for layer, names in (("Conv/BatchNorm", ["Conv/BatchNorm/gamma:0", "Conv/BatchNorm/beta:0"]),
                         ("fc", ["fc/kernel:0", "fc/bias:0"]),
                         ("bi", ["bi/forward/kernel:0", "bi/backward/kernel:0"]),
                         ("renamed", ["old/kernel:0", "old/bias:0"]),
                         ("keras1", ["keras1_W", "keras1_b"])):
        assert [name for name, _ in nested_layers(layer, names, arrays[:2])] == [layer]


@pytest.mark.parametrize("data_format", FORMATS)
def test_grouped_conv2d_with_one_channel_per_group(data_format, rng):
    """``multinet.layers.Conv2D(groups=channels)`` (keras' ConvNeXt depthwise
    layer, kernel (kh, kw, 1, channels)) runs as a depthwise convolution:
    against numpy, 'same' and strided 'valid'; other groupings stay grouped."""
    x = rng.standard_normal((2, 7, 6, 4)).astype("float32")  # NHWC
    kernel = rng.standard_normal((3, 3, 1, 4)).astype("float32")
    bias = rng.standard_normal(4).astype("float32")
    for padding, stride in (("same", 1), ("valid", 2)):
        conv = layers.Conv2D(4, 3, strides=stride, padding=padding, groups=4,
                             data_format=data_format)
        conv.build(in_format(x, data_format).shape)
        conv.set_weights([kernel, bias])
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))) if padding == "same" else x
        rows = (padded.shape[1] - 3) // stride + 1
        cols = (padded.shape[2] - 3) // stride + 1
        want = np.zeros((2, rows, cols, 4), np.float64)
        for i in range(rows):
            for j in range(cols):
                window = padded[:, i * stride:i * stride + 3, j * stride:j * stride + 3, :]
                want[:, i, j] = (window * kernel[:, :, 0]).sum(axis=(1, 2)) + bias
        got = keras.ops.convert_to_numpy(conv(in_format(x, data_format)))
        np.testing.assert_allclose(got, in_format(want, data_format), rtol=1e-5, atol=1e-5)
    pairs = layers.Conv2D(4, 1, groups=2, use_bias=False, data_format=data_format)
    pairs.build(in_format(x, data_format).shape)
    pair_kernel = rng.standard_normal((1, 1, 2, 4)).astype("float32")
    pairs.set_weights([pair_kernel])
    want = np.concatenate([x[..., :2] @ pair_kernel[0, 0, :, :2],
                           x[..., 2:] @ pair_kernel[0, 0, :, 2:]], axis=-1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pairs(in_format(x, data_format))),
                               in_format(want, data_format), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_layer_norm_over_the_last_axis_is_keras_layer_norm(policy, rng):
    """Over the last axis multinet's LayerNormalization gives Keras' numbers; on
    PyTorch in float32 it is one layer_norm call with a constant normalized shape
    (what torch.onnx can trace), and half precision takes Keras' path."""
    x = rng.standard_normal((2, 3, 5, 8)).astype("float32") * 3 + 1
    gamma, beta = rng.uniform(0.5, 1.5, 8), rng.standard_normal(8)
    outputs = []
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        for layer in (layers.LayerNormalization(epsilon=1e-6),
                      keras.layers.LayerNormalization(epsilon=1e-6)):
            layer.build(x.shape)
            layer.set_weights([gamma.astype("float32"), beta.astype("float32")])
            outputs.append(np.asarray(keras.ops.convert_to_numpy(layer(x)), "float32"))
        fused = backend.last_axis_layer_norm(keras.ops.convert_to_tensor(x), layer.gamma,
                                             layer.beta, 1e-6)
    finally:
        keras.config.set_dtype_policy(previous)
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5,
                               atol=1e-5 if policy == "float32" else 2e-3)
    assert (fused is not None) == (backend.name() == "torch")
