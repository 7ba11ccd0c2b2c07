"""Every registered model, in both data formats: the facts table, shapes,
the same numbers in both compute formats, validation, and plain-Keras
behaviour (summary, fit, evaluate, saving)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import distinct_images, images, infer, rel_error

import multinet
from multinet import backend

# One row per model: a new model needs one new row here.
#   params: trainable parameters (the registry's num_params, torchvision's count)
#   params_total: keras count_params(), BatchNorm moving statistics included
#     (where there are any; else the same as params)
#   params_notop: keras count_params() without the classifier
#   features: {input size: (height, width, channels) of the include_top=False output}
#   small: a small input size for quick forward passes, where ceil and floor
#          pooling differ for SqueezeNet (1.0 at 64, 1.1 at 67)
#   top_at_small: whether include_top=True builds at that size (VGG's top needs 224)
#   size: the default input size, where it is not 224
#   forward: False where the loops below check structure only (no variable
#            initialized, nothing run): the ConvNeXts, 28-198M parameters each, and
#            EfficientNet B1-B7, the same layers as efficientnet_b0, which runs;
#            tests/test_convnext.py runs convnext_tiny in both compute formats
#            against torchvision and tf-keras at full depth, pooled features
#            included, and the larger ones are its code with more blocks; ResNet-34,
#            -101 and -152, resnet18's and resnet50's blocks in other numbers (both
#            run here, and tests/test_resnet.py checks every depth's structure)
#   tokens: a transformer: include_top=False gives a vector per image (the class
#           token, see tests/test_vit.py for its pooling), not a feature map
MODEL_FACTS = {
    "convnext_base": dict(params=88_591_464, params_notop=87_566_464,
                          features={224: (7, 7, 1024), 32: (1, 1, 1024)},
                          small=32, top_at_small=True, forward=False),
    "convnext_large": dict(params=197_767_336, params_notop=196_230_336,
                           features={224: (7, 7, 1536), 32: (1, 1, 1536)},
                           small=32, top_at_small=True, forward=False),
    "convnext_small": dict(params=50_223_688, params_notop=49_454_688,
                           features={224: (7, 7, 768), 32: (1, 1, 768)},
                           small=32, top_at_small=True, forward=False),
    "convnext_tiny": dict(params=28_589_128, params_notop=27_820_128,
                          features={224: (7, 7, 768), 121: (3, 3, 768), 32: (1, 1, 768)},
                          small=32, top_at_small=True, forward=False),
    "efficientnet_b0": dict(params=5_288_548, params_total=5_330_571, params_notop=4_049_571,
                            features={224: (7, 7, 1280), 199: (7, 7, 1280), 64: (2, 2, 1280)},
                            small=64, top_at_small=True),
    "efficientnet_b1": dict(params=7_794_184, params_total=7_856_239, params_notop=6_575_239,
                            features={224: (7, 7, 1280)},
                            small=64, top_at_small=True, forward=False, size=240),
    "efficientnet_b2": dict(params=9_109_994, params_total=9_177_569, params_notop=7_768_569,
                            features={224: (7, 7, 1408)},
                            small=64, top_at_small=True, forward=False, size=260),
    "efficientnet_b3": dict(params=12_233_232, params_total=12_320_535, params_notop=10_783_535,
                            features={224: (7, 7, 1536)},
                            small=64, top_at_small=True, forward=False, size=300),
    "efficientnet_b4": dict(params=19_341_616, params_total=19_466_823, params_notop=17_673_823,
                            features={224: (7, 7, 1792)},
                            small=64, top_at_small=True, forward=False, size=380),
    "efficientnet_b5": dict(params=30_389_784, params_total=30_562_527, params_notop=28_513_527,
                            features={224: (7, 7, 2048)},
                            small=64, top_at_small=True, forward=False, size=456),
    "efficientnet_b6": dict(params=43_040_704, params_total=43_265_143, params_notop=40_960_143,
                            features={224: (7, 7, 2304)},
                            small=64, top_at_small=True, forward=False, size=528),
    "efficientnet_b7": dict(params=66_347_960, params_total=66_658_687, params_notop=64_097_687,
                            features={224: (7, 7, 2560)},
                            small=64, top_at_small=True, forward=False, size=600),
    "mobilenet_v2": dict(params=3_504_872, params_total=3_538_984, params_notop=2_257_984,
                         features={224: (7, 7, 1280), 199: (7, 7, 1280), 64: (2, 2, 1280)},
                         small=64, top_at_small=True),
    "mobilenet_v3_large": dict(params=5_483_032, params_total=5_507_432,
                               params_notop=2_996_352,
                               features={224: (7, 7, 960), 199: (7, 7, 960), 64: (2, 2, 960)},
                               small=64, top_at_small=True),
    "mobilenet_v3_small": dict(params=2_542_856, params_total=2_554_968, params_notop=939_120,
                               features={224: (7, 7, 576), 199: (7, 7, 576), 64: (2, 2, 576)},
                               small=64, top_at_small=True),
    "squeezenet1_0": dict(params=1_248_424, params_notop=735_424,
                          features={224: (13, 13, 512), 64: (3, 3, 512)}, small=64,
                          top_at_small=True),
    "squeezenet1_1": dict(params=1_235_496, params_notop=722_496,
                          features={224: (13, 13, 512), 227: (14, 14, 512), 64: (3, 3, 512)},
                          small=67, top_at_small=True),
    "resnet18": dict(params=11_699_112, params_notop=11_186_112,
                     features={224: (7, 7, 512), 199: (7, 7, 512), 64: (2, 2, 512)}, small=64,
                     top_at_small=True),
    "resnet34": dict(params=21_814_696, params_notop=21_301_696,
                     features={224: (7, 7, 512), 64: (2, 2, 512)}, small=64, top_at_small=True,
                     forward=False),
    "resnet50": dict(params=25_636_712, params_notop=23_587_712,
                     features={224: (7, 7, 2048), 199: (7, 7, 2048), 64: (2, 2, 2048)},
                     small=64, top_at_small=True),
    "resnet101": dict(params=44_707_176, params_notop=42_658_176,
                      features={224: (7, 7, 2048), 64: (2, 2, 2048)}, small=64,
                      top_at_small=True, forward=False),
    "resnet152": dict(params=60_419_944, params_notop=58_370_944,
                      features={224: (7, 7, 2048), 64: (2, 2, 2048)}, small=64,
                      top_at_small=True, forward=False),
    "vgg11": dict(params=132_863_336, params_notop=9_220_480,
                  features={224: (7, 7, 512), 64: (2, 2, 512)}, small=64,
                  top_at_small=False),
    "vgg13": dict(params=133_047_848, params_notop=9_404_992,
                  features={224: (7, 7, 512), 64: (2, 2, 512)}, small=64,
                  top_at_small=False),
    "vgg16": dict(params=138_357_544, params_notop=14_714_688,
                  features={224: (7, 7, 512), 64: (2, 2, 512)}, small=64,
                  top_at_small=False),
    "vgg19": dict(params=143_667_240, params_notop=20_024_384,
                  features={224: (7, 7, 512), 64: (2, 2, 512)}, small=64,
                  top_at_small=False),
    # 86M parameters whatever the size: the smallest grid that still tells a
    # row-major patch order from a column-major one (2x2) keeps it cheap.
    "vit_b_16": dict(params=86_567_656, params_notop=85_798_656,
                     features={224: (768,), 112: (768,), 32: (768,)}, small=32,
                     top_at_small=True, tokens=True),
}
MODELS = multinet.list_models()
FORWARD = [name for name in MODELS if MODEL_FACTS[name].get("forward", True)]
# The forward passes of the pooling and compute-format checks run each model with
# data in one data format, alternating along FORWARD, and these two in both. Every
# family's own tests hold it to its references with data in both formats.
BOTH_DATA_FORMATS = ("resnet50", "squeezenet1_1")


def runs_forward(name, data_format):
    """Whether the forward-pass checks run ``name`` with ``data_format`` data."""
    if name in BOTH_DATA_FORMATS:
        return True
    return FORWARD.index(name) % 2 == ("channels_last", "channels_first").index(data_format)


# No test here depends on the initial weights' values.
pytestmark = pytest.mark.usefixtures("numpy_initial_weights")


def in_format(hwc, data_format):
    if len(hwc) == 1:  # a vector per image
        return hwc
    h, w, c = hwc
    return (h, w, c) if data_format == "channels_last" else (c, h, w)


def test_every_model_has_a_facts_row():
    assert set(MODELS) == set(MODEL_FACTS)
    for name in MODELS:
        assert multinet.get_model_spec(name).num_params == MODEL_FACTS[name]["params"]


def structure(name, **kwargs):
    """A model built for its structure only: its variables are never
    initialized (no random draws, no memory for VGG's 138M), so it cannot run."""
    with keras.StatelessScope(initialize_variables=False):
        return multinet.create_model(name, **kwargs)


def structure_only(only: bool):
    """A scope in which models are built for their structure only, or a no-op."""
    import contextlib

    return keras.StatelessScope(initialize_variables=False) if only else contextlib.nullcontext()


@pytest.mark.parametrize("name", MODELS)
def test_parameter_counts(name, data_format):
    facts = MODEL_FACTS[name]
    if name not in FORWARD and data_format == "channels_first":
        return  # the large EfficientNets: counted once, in channels_last
    model = structure(name, data_format=data_format)
    assert model.count_params() == facts.get("params_total", facts["params"])
    if "params_total" in facts:  # else params is count_params() (the ResNet rows)
        assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == facts["params"]
    assert model.output_shape == (None, 1000)
    size = facts.get("size", 224)
    assert model.input_shape == (None, *in_format((size, size, 3), data_format))
    notop = structure(name, include_top=False, data_format=data_format)
    assert notop.count_params() == facts["params_notop"]


@pytest.mark.parametrize("name", MODELS)
def test_feature_shapes_and_pooling(name, data_format, rng):
    facts = MODEL_FACTS[name]
    if name not in FORWARD and data_format == "channels_first":
        return  # the large EfficientNets: shapes once, in channels_last
    for size, hwc in facts["features"].items():
        shape = in_format((size, size, 3), data_format)
        model = structure(name, include_top=False, input_shape=shape, data_format=data_format)
        assert model.output_shape == (None, *in_format(hwc, data_format)), size
    if name not in FORWARD or facts.get("tokens"):  # tokens: tests/test_vit.py pools
        return
    if not runs_forward(name, data_format):
        pytest.skip(f"{name}'s pooling runs with data in the other data format")
    # pooling="avg"/"max" is the spatial mean/max of the unpooled features
    # (the same weights), whatever format the model computes in.
    size = facts["small"]
    x = images(rng, 2, size, data_format)
    features = multinet.create_model(name, include_top=False, input_shape=x.shape[1:],
                                     data_format=data_format)
    maps = infer(features, x)
    spatial = (1, 2) if data_format == "channels_last" else (2, 3)
    assert np.abs(maps).max() > 0
    for pooling, reduce in (("avg", np.mean), ("max", np.max)):
        model = multinet.create_model(name, include_top=False, pooling=pooling,
                                      input_shape=x.shape[1:], data_format=data_format)
        model.set_weights(features.get_weights())
        out = infer(model, x)
        assert out.shape == (2, maps.shape[-1 if data_format == "channels_last" else 1])
        np.testing.assert_allclose(out, reduce(maps.astype("float64"), axis=spatial),
                                   rtol=1e-5, atol=1e-6 * np.abs(maps).max())


COMPUTE_FORMATS = ("channels_last", "channels_first")


def layer_formats(model):
    """The data formats the model's layers compute in (convolutions, pools, flatten)."""
    return {layer.data_format for layer in model.layers if hasattr(layer, "data_format")}


def twins(name, data_format, tmp_path, **kwargs):
    """``name`` built to compute in channels_last and in channels_first, both
    taking ``data_format`` data, with the same weights (through a
    ``.weights.h5`` file unless ``via_file=False``)."""
    via_file = kwargs.pop("via_file", True)
    built = {fmt: multinet.create_model(name, data_format=data_format, compute_format=fmt,
                                        **kwargs)
             for fmt in COMPUTE_FORMATS}
    for fmt, model in built.items():
        convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        assert convs, name
        assert layer_formats(model) == {fmt}, (name, fmt)
    last, first = built["channels_last"], built["channels_first"]
    if via_file:
        path = str(tmp_path / f"{name}.weights.h5")
        last.save_weights(path)
        first.load_weights(path)
    else:
        first.set_weights(last.get_weights())
    return last, first


def assert_same_outputs(last, first, x):
    """Both compute formats give the same outputs, and the two inputs' outputs
    clearly differ (so the comparison is not between constants)."""
    expected, got = infer(last, x), infer(first, x)
    assert got.shape == expected.shape
    # Deep random-weight networks (MobileNetV3's hard-swish stack) shrink the
    # signal, but the two inputs' outputs must still differ far more than the
    # formats may (1e-3 against 1e-5).
    assert rel_error(expected[0], expected[1]) > 1e-3
    assert rel_error(got, expected) < 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_compute_formats_agree(name, data_format, tmp_path, rng):
    """Every model gives the same numbers computing in channels_last and in
    channels_first, for data in either format: the spatial features (returned
    in ``data_format``) and, where the model's top runs at a small size, the
    classifier. A ``.weights.h5`` file carries the weights across."""
    size = MODEL_FACTS[name]["small"]
    x = distinct_images(rng, size, data_format)
    shape = x.shape[1:]
    if name not in FORWARD:  # structure only: both compute formats, the same shapes
        if data_format == "channels_last":
            return  # the data format changes no layer: channels_first data, both formats
        with keras.StatelessScope(initialize_variables=False):
            built = [multinet.create_model(name, include_top=False, input_shape=shape,
                                           data_format=data_format, compute_format=fmt)
                     for fmt in COMPUTE_FORMATS]
        assert [layer_formats(m) for m in built] == [{f} for f in COMPUTE_FORMATS]
        assert built[0].output_shape == built[1].output_shape
        assert ([tuple(w.shape) for w in built[0].weights]
                == [tuple(w.shape) for w in built[1].weights])
        return
    if not runs_forward(name, data_format):
        pytest.skip(f"{name}'s compute formats run with data in the other data format")
    # A transformer's include_top=False output is the class token that its
    # top reads: the top's twins below cover it.
    if not MODEL_FACTS[name].get("tokens"):
        last, first = twins(name, data_format, tmp_path, include_top=False, input_shape=shape)
        assert last.output_shape == first.output_shape
        assert_same_outputs(last, first, x)
    if not MODEL_FACTS[name]["top_at_small"]:  # see test_vgg_top_compute_formats_agree
        with pytest.raises(ValueError, match="include_top=True needs"):
            multinet.create_model(name, input_shape=shape, data_format=data_format)
        return
    # ViT's 344 MB of weights go across by set_weights (its layers' files: test_vit.py).
    last, first = twins(name, data_format, tmp_path, input_shape=shape, classes=10,
                        classifier_activation=None, via_file=not MODEL_FACTS[name].get("tokens"))
    assert_same_outputs(last, first, x)


def test_vgg_top_compute_formats_agree(rng):
    """The VGG classifier (flatten, fc1, fc2, predictions) at its 224x224 size:
    the flatten order differs between the compute formats."""
    last, first = twins("vgg11", "channels_first", None, via_file=False, classes=10,
                        classifier_activation=None)
    assert_same_outputs(last, first, distinct_images(rng, 224, "channels_first"))


@pytest.mark.parametrize(
    "name,size,ceil_mode,sizes",
    [
        ("squeezenet1_0", 224, False, [109, 54, 26, 12]),
        ("squeezenet1_0", 224, True, [109, 54, 27, 13]),
        ("squeezenet1_1", 224, False, [111, 55, 27, 13]),
        ("squeezenet1_1", 224, True, [111, 55, 27, 13]),
        ("squeezenet1_1", 227, False, [113, 56, 27, 13]),
        ("squeezenet1_1", 227, True, [113, 56, 28, 14]),
    ],
)
def test_ceil_and_floor_pooling_sizes(name, size, ceil_mode, sizes, data_format):
    model = multinet.create_model(name, include_top=False, ceil_mode=ceil_mode,
                                  input_shape=in_format((size, size, 3), data_format),
                                  data_format=data_format)
    stages = [layer for layer in model.layers if layer.name == "conv1" or
              layer.name.startswith("pool")]
    axis = 1 if stages[0].data_format == "channels_last" else 2
    assert [layer.output.shape[axis] for layer in stages] == sizes


def test_min_sizes_build_and_run():
    for name in MODELS:
        spec = multinet.get_model_spec(name)
        size = spec.min_size
        with structure_only(name not in FORWARD):
            model = multinet.create_model(name, include_top=False,
                                          input_shape=(size, size, 3),
                                          data_format="channels_last")
        spatial = (1, 1) if not MODEL_FACTS[name].get("tokens") else (768,)
        assert model.output_shape[1:3] == spatial, name
        if name in FORWARD:
            out = infer(model, np.zeros((1, size, size, 3), "float32"))
            assert out.shape[1:3] == spatial, name
        with pytest.raises(ValueError, match=f"{name}.*too small.*at least {size}"):
            multinet.create_model(name, include_top=False, input_shape=(size - 1, size - 1, 3),
                                  data_format="channels_last")
    assert [multinet.get_model_spec(n).min_size for n in MODELS] == [
        *[32] * 12, 32, 32, 32, 1, 1, 1, 1, 1, 21, 17, 32, 32, 32, 32, 16]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(input_shape=(224, 224)), r"squeezenet1_1: input_shape must have 3 dimensions"),
        (dict(input_shape=(1, 224, 224, 3)), r"must have 3 dimensions .* got 4"),
        (dict(input_shape=(10, 10, 3)), r"\(10, 10, 3\) is too small; .* at least 17"),
        (dict(input_shape=(224, 224, 1), weights="imagenet"),
         r"pretrained weights need 3 input channels, got 1"),
        (dict(input_shape="big"), r"input_shape must be a tuple of 3 integers"),
        (dict(pooling="mean", include_top=False), r"pooling must be one of"),
        (dict(classes=0), r"classes must be a positive integer, got 0"),
        (dict(ceil_mode=True, weights="keras-squeezenet"), None),
    ],
)
def test_invalid_input_is_a_clear_error(kwargs, message):
    if message is None:  # weights entries fix the options they need
        with pytest.raises(ValueError, match="weights 'keras-squeezenet' need ceil_mode=False"):
            multinet.create_model("squeezenet1_1", **kwargs)
        return
    with pytest.raises(ValueError, match=message):
        multinet.create_model("squeezenet1_1", data_format="channels_last", **kwargs)


def test_unknown_data_format():
    with pytest.raises(ValueError, match=r"data_format must be one of .* got 'NCHW'"):
        multinet.create_model("squeezenet1_1", data_format="NCHW")


def test_vgg_top_needs_224(data_format):
    with pytest.raises(ValueError, match=r"vgg16: include_top=True needs a 224x224 input, got "
                                         r"input_shape .*200.*include_top=False"):
        multinet.create_model("vgg16", input_shape=in_format((200, 200, 3), data_format),
                              data_format=data_format)
    with pytest.raises(ValueError, match=r"vgg19: pretrained weights need 3 input "
                                         r"channels, got 4 in input_shape \(224, 224, 4\)"):
        multinet.create_model("vgg19", input_shape=(224, 224, 4), weights="imagenet",
                              data_format="channels_last")


def test_channel_count_without_weights_is_free(data_format):
    model = multinet.create_model("vgg11", include_top=False,
                                  input_shape=in_format((32, 32, 1), data_format),
                                  data_format=data_format)
    assert model.count_params() == MODEL_FACTS["vgg11"]["params_notop"] - 2 * 9 * 64


def test_input_tensor(data_format, rng):
    """The model is built on the given tensor: a Rescaling(1/255) in front
    makes it answer x * 255 as the same model without it answers x."""
    inputs = keras.Input(shape=in_format((64, 64, 3), data_format))
    scaled = keras.layers.Rescaling(1 / 255.0)(inputs)
    model = multinet.create_model("squeezenet1_1", input_tensor=scaled, classes=5,
                                  classifier_activation=None, data_format=data_format)
    assert model.inputs[0] is inputs
    plain = multinet.create_model("squeezenet1_1", input_shape=inputs.shape[1:], classes=5,
                                  classifier_activation=None, data_format=data_format)
    plain.set_weights(model.get_weights())
    x = distinct_images(rng, 64, data_format)
    expected = infer(plain, x)
    # the two images answer apart, far beyond the 1e-5 tolerance below
    assert rel_error(expected[0], expected[1]) > 1e-3
    assert rel_error(infer(model, x * 255), expected) < 1e-5
    with pytest.raises(ValueError, match="input_tensor has shape"):
        multinet.create_model("squeezenet1_1", input_tensor=inputs,
                              input_shape=in_format((32, 32, 3), data_format),
                              data_format=data_format)


def test_data_format_none_follows_the_global_setting():
    keras.config.set_image_data_format("channels_first")
    model = multinet.create_model("squeezenet1_1")
    assert model.input_shape == (None, 3, 224, 224)
    keras.config.set_image_data_format("channels_last")
    assert multinet.create_model("squeezenet1_1").input_shape == (None, 224, 224, 3)


def test_explicit_data_format_leaves_the_global_setting_alone():
    before = keras.config.image_data_format()
    other = "channels_first" if before == "channels_last" else "channels_last"
    model = multinet.create_model("squeezenet1_1", data_format=other)
    assert keras.config.image_data_format() == before
    assert model.input_shape[1 if other == "channels_first" else 3] == 3


def test_keras_json_in_keras_home_sets_the_default(tmp_path):
    home = tmp_path / "keras_home"
    home.mkdir()
    settings = {"image_data_format": "channels_first", "backend": backend.name(),
                "floatx": "float32", "epsilon": 1e-07}
    (home / "keras.json").write_text(json.dumps(settings))
    code = (
        "import sys, multinet\n"
        "m = multinet.create_model('squeezenet1_1', include_top=False, input_shape=(3, 64, 64))\n"
        "print(m.output_shape)\n"
        "print(sorted(f for f in ('tensorflow', 'jax', 'torch') if f in sys.modules))\n"
    )
    env = dict(os.environ, KERAS_HOME=str(home), KERAS_BACKEND=backend.name())
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == "(None, 512, 3, 3)"
    # multinet imports the selected framework and no other one
    assert lines[-1] == str([backend.name()])


# squeezenet1_1's Fire modules (REFERENCE.md): (in, squeeze, expand) for fire2..fire9.
FIRES_1_1 = [(64, 16, 64), (128, 16, 64), (128, 32, 128), (256, 32, 128), (256, 48, 192),
             (384, 48, 192), (384, 64, 256), (512, 64, 256)]


def conv_params(kernel, inputs, filters):
    return kernel * kernel * inputs * filters + filters


def expected_layer_params(name, classes):
    """Parameters of each layer that has any, by arithmetic on the architecture."""
    if name == "squeezenet1_1":
        counts = {"conv1": conv_params(3, 3, 64), "conv10": conv_params(1, 512, classes)}
        for fire, (inputs, squeeze, expand) in enumerate(FIRES_1_1, start=2):
            counts[f"fire{fire}_squeeze1x1"] = conv_params(1, inputs, squeeze)
            counts[f"fire{fire}_expand1x1"] = conv_params(1, squeeze, expand)
            counts[f"fire{fire}_expand3x3"] = conv_params(3, squeeze, expand)
        return counts
    depths = {"vgg16": (2, 2, 3, 3, 3)}[name]
    counts, inputs = {}, 3
    for block, (depth, width) in enumerate(zip(depths, (64, 128, 256, 512, 512)), start=1):
        for conv in range(1, depth + 1):
            counts[f"block{block}_conv{conv}"] = conv_params(3, inputs, width)
            inputs = width
    return counts


def summary_rows(model, monkeypatch):
    """{layer name: parameter count} read from ``model.summary()``'s table."""
    monkeypatch.setenv("COLUMNS", "220")  # rich drops columns that do not fit
    lines = []
    model.summary(line_length=200, print_fn=lambda text, *args, **kwargs: lines.append(text))
    text = "\n".join(lines)
    rows = {}
    for line in text.splitlines():
        cells = line.split("\u2502")
        if len(cells) > 4 and cells[1].strip():
            rows[cells[1].split(" (")[0].strip()] = int(cells[3].strip().replace(",", ""))
    return rows, text


@pytest.mark.parametrize("name,kwargs,total", [
    ("squeezenet1_1", dict(classes=3), 722_496 + 512 * 3 + 3),
    ("vgg16", dict(include_top=False), 14_714_688),  # REFERENCE.md: vgg16 without top
])
def test_summary_lists_every_layer_with_its_parameters(name, kwargs, total, monkeypatch):
    model = multinet.create_model(name, input_shape=(32, 32, 3), data_format="channels_last",
                                  **kwargs)
    rows, text = summary_rows(model, monkeypatch)
    expected = expected_layer_params(name, kwargs.get("classes"))
    assert sum(expected.values()) == total
    assert set(rows) == {layer.name for layer in model.layers}
    assert {layer: count for layer, count in rows.items() if count} == expected
    assert f"Total params: {total:,}" in text


def colour_task(rng, data_format, n=12, size=32):
    """Three classes: the image's dominant colour channel, under noise."""
    labels = np.arange(n) % 3
    x = rng.uniform(0.0, 0.3, size=(n, size, size, 3)).astype("float32")
    x[np.arange(n), :, :, labels] += 0.7
    if data_format == "channels_first":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x, labels


def test_fit_learns_and_evaluate_matches_predict(rng):
    """A multinet backbone under a Dense head, in plain Keras: fit lowers the
    loss at least fivefold within ten epochs, and evaluate equals the loss and
    accuracy computed from predict."""
    keras.utils.set_random_seed(0)
    x, y = colour_task(rng, "channels_first")
    backbone = multinet.create_model("vgg11", include_top=False, pooling="avg",
                                     input_shape=x.shape[1:], data_format="channels_first")
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(backbone.output)
    model = keras.Model(backbone.inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(2e-4),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    before, _ = model.evaluate(x, y, verbose=0)
    losses = []
    for _ in range(10):  # Adam on 12 images is spiky: the loss may rise for an epoch
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        loss, accuracy = model.evaluate(x, y, verbose=0)
        losses.append(loss)
        if loss < before / 5 and accuracy == 1.0:
            break
    assert loss < before / 5, (before, losses)

    probs = model.predict(x, verbose=0).astype("float64")
    assert probs.shape == (len(x), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    by_hand = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)).mean()
    assert loss == pytest.approx(by_hand, rel=1e-4, abs=1e-6)
    assert accuracy == pytest.approx(np.mean(probs.argmax(axis=1) == y))
    assert accuracy == 1.0


def test_keras_archive_keeps_ceil_mode(tmp_path, data_format, rng):
    """A .keras file restores the model, ceil-mode pooling included: the same
    output shape and the same numbers, which a fresh model does not give."""
    model = multinet.create_model("squeezenet1_1", include_top=False, ceil_mode=True,
                                  input_shape=in_format((67, 67, 3), data_format),
                                  data_format=data_format)
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.get_layer("pool5").ceil_mode is True
    assert restored.output_shape == model.output_shape == (None, *in_format((4, 4, 512),
                                                                              data_format))
    x = distinct_images(rng, 67, data_format)
    expected = infer(model, x)
    assert rel_error(infer(restored, x), expected) < 1e-6
    assert type(restored) is type(model) is multinet.layers.Model
    fresh = multinet.create_model("squeezenet1_1", include_top=False, ceil_mode=True,
                                  input_shape=x.shape[1:], data_format=data_format)
    assert rel_error(infer(fresh, x), expected) > 0.1


def test_keras_steps_compile_with_multinet_xla_options_only_inside_the_context():
    """On JAX on a CPU, Keras' own predict/fit/evaluate steps of a multinet model
    compile with ``xla_compiler_options`` (``keras_jit_options``), and Keras'
    trainer is left as it was afterwards; elsewhere the context changes nothing.
    The predictions equal those of a plain functional model with the same layers."""
    options = backend.xla_compiler_options()
    if backend.name() == "jax":
        import jax
        from keras.src.backend.jax import trainer as jax_trainer

        assert options  # the CPU test machines
        with backend.keras_jit_options():
            assert jax_trainer.jit.func is jax.jit
            assert jax_trainer.jit.keywords == {"compiler_options": options}
        assert jax_trainer.jit is jax.jit
    else:
        assert options == {}
    model = multinet.create_model("squeezenet1_1", weights=None, input_shape=(64, 64, 3),
                                  data_format="channels_last", classes=10)
    assert isinstance(model, multinet.layers.Model)
    plain = keras.Model(model.inputs, model.outputs)
    assert type(plain) is not multinet.layers.Model
    x = np.random.default_rng(0).random((3, 64, 64, 3), dtype=np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0), plain.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
