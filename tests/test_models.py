"""Every registered model, in both data formats: the facts table, shapes,
weights across formats, validation, and plain-Keras behaviour."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import images, rel_error, to_channels_last

import multinet
from multinet import backend

# One row per model: a new model needs one new row here.
#   params: trainable parameters (the registry's num_params, torchvision's count)
#   params_total: keras count_params(), BatchNorm moving statistics included
#     (where there are any; else the same as params)
#   params_notop: keras count_params() without the classifier
#   features: {input size: (height, width, channels) of the include_top=False output}
#   small: a small input size for quick forward passes
MODEL_FACTS = {
    "mobilenet_v2": dict(params=3_504_872, params_total=3_538_984, params_notop=2_257_984,
                         features={224: (7, 7, 1280), 199: (7, 7, 1280), 64: (2, 2, 1280)},
                         small=64),
    "mobilenet_v3_large": dict(params=5_483_032, params_total=5_507_432,
                               params_notop=2_996_352,
                               features={224: (7, 7, 960), 199: (7, 7, 960), 64: (2, 2, 960)},
                               small=64),
    "mobilenet_v3_small": dict(params=2_542_856, params_total=2_554_968, params_notop=939_120,
                               features={224: (7, 7, 576), 199: (7, 7, 576), 64: (2, 2, 576)},
                               small=64),
    "squeezenet1_0": dict(params=1_248_424, params_notop=735_424,
                          features={224: (13, 13, 512), 64: (3, 3, 512)}, small=64),
    "squeezenet1_1": dict(params=1_235_496, params_notop=722_496,
                          features={224: (13, 13, 512), 227: (14, 14, 512), 64: (3, 3, 512)},
                          small=64),
    "vgg11": dict(params=132_863_336, params_notop=9_220_480,
                  features={224: (7, 7, 512), 64: (2, 2, 512)}, small=64),
    "vgg13": dict(params=133_047_848, params_notop=9_404_992,
                  features={224: (7, 7, 512), 64: (2, 2, 512)}, small=64),
    "vgg16": dict(params=138_357_544, params_notop=14_714_688,
                  features={224: (7, 7, 512), 64: (2, 2, 512)}, small=64),
    "vgg19": dict(params=143_667_240, params_notop=20_024_384,
                  features={224: (7, 7, 512), 64: (2, 2, 512)}, small=64),
}
MODELS = multinet.list_models()
# No test here depends on the initial weights' values.
pytestmark = pytest.mark.usefixtures("numpy_initial_weights")


def in_format(hwc, data_format):
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


@pytest.mark.parametrize("name", MODELS)
def test_parameter_counts(name, data_format):
    facts = MODEL_FACTS[name]
    model = structure(name, data_format=data_format)
    assert model.count_params() == facts.get("params_total", facts["params"])
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == facts["params"]
    assert model.output_shape == (None, 1000)
    assert model.input_shape == (None, *in_format((224, 224, 3), data_format))
    notop = structure(name, include_top=False, data_format=data_format)
    assert notop.count_params() == facts["params_notop"]


@pytest.mark.parametrize("name", MODELS)
def test_feature_shapes_and_pooling(name, data_format, rng):
    facts = MODEL_FACTS[name]
    for size, hwc in facts["features"].items():
        shape = in_format((size, size, 3), data_format)
        model = structure(name, include_top=False, input_shape=shape, data_format=data_format)
        assert model.output_shape == (None, *in_format(hwc, data_format)), size
    size = facts["small"]
    x = images(rng, 2, size, data_format)
    for pooling in ("avg", "max"):
        model = multinet.create_model(name, include_top=False, pooling=pooling,
                                      input_shape=x.shape[1:], data_format=data_format)
        out = model.predict(x, verbose=0)
        assert out.shape == (2, hwc[-1])
        assert np.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_weights_are_data_format_independent(name, rng):
    size = MODEL_FACTS[name]["small"]
    kwargs = dict(include_top=name.startswith("squeezenet"), classifier_activation=None)
    last = multinet.create_model(name, input_shape=(size, size, 3),
                                 data_format="channels_last", **kwargs)
    first = multinet.create_model(name, input_shape=(3, size, size),
                                  data_format="channels_first", **kwargs)
    first.set_weights(last.get_weights())
    x = images(rng, 2, size, "channels_last")
    expected = last.predict(x, verbose=0)
    got = first.predict(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), verbose=0)
    if got.ndim == 4:
        got = to_channels_last(got)
    assert np.abs(expected).max() > 0
    assert rel_error(got, expected) < 1e-5


def test_full_vgg_with_top_across_formats(rng, tmp_path):
    """The 224x224 classifier too, through a .weights.h5 file saved in the other format."""
    last = multinet.create_model("vgg11", data_format="channels_last",
                                 classifier_activation=None)
    path = str(tmp_path / "vgg11.weights.h5")
    last.save_weights(path)
    first = multinet.create_model("vgg11", data_format="channels_first",
                                  classifier_activation=None)
    first.load_weights(path)
    x = images(rng, 1, 224, "channels_last")
    expected = last.predict(x, verbose=0)
    got = first.predict(x.transpose(0, 3, 1, 2), verbose=0)
    assert rel_error(got, expected) < 1e-5


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_weights_h5_across_formats(name, tmp_path, rng):
    x = images(rng, 2, 64, "channels_first")
    first = multinet.create_model(name, input_shape=(3, 64, 64), data_format="channels_first")
    path = str(tmp_path / "w.weights.h5")
    first.save_weights(path)
    last = multinet.create_model(name, input_shape=(64, 64, 3), data_format="channels_last")
    last.load_weights(path)
    assert rel_error(last.predict(to_channels_last(x), verbose=0),
                     first.predict(x, verbose=0)) < 1e-5


@pytest.mark.parametrize("compute_format", ["channels_first", "channels_last"])
def test_forced_compute_format_matches(data_format, compute_format, rng):
    """Every layer computing in either format gives the same numbers; with
    channels_first on TensorFlow CPU this runs multinet.layers' NHWC path."""
    shape = in_format((67, 67, 3), data_format)
    reference = multinet.create_model("squeezenet1_1", input_shape=shape,
                                      data_format=data_format, classifier_activation=None)
    model = multinet.create_model("squeezenet1_1", input_shape=shape, data_format=data_format,
                                  classifier_activation=None, compute_format=compute_format)
    conv = model.get_layer("fire2_expand3x3")
    assert conv.data_format == compute_format
    model.set_weights(reference.get_weights())
    x = images(rng, 2, 67, data_format)
    assert rel_error(model.predict(x, verbose=0), reference.predict(x, verbose=0)) < 1e-5


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
        model = multinet.create_model(name, include_top=False, input_shape=(size, size, 3),
                                      data_format="channels_last")
        out = model.predict(np.zeros((1, size, size, 3), "float32"), verbose=0)
        assert out.shape[1:3] == (1, 1), name
        with pytest.raises(ValueError, match=f"{name}.*too small.*at least {size}"):
            multinet.create_model(name, include_top=False, input_shape=(size - 1, size - 1, 3),
                                  data_format="channels_last")
    assert [multinet.get_model_spec(n).min_size for n in MODELS] == [32, 32, 32, 21, 17, 32, 32,
                                                                      32, 32]


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
    inputs = keras.Input(shape=in_format((64, 64, 3), data_format))
    scaled = keras.layers.Rescaling(1 / 255.0)(inputs)
    model = multinet.create_model("squeezenet1_1", input_tensor=scaled, classes=5,
                                  data_format=data_format)
    assert model.inputs[0] is inputs
    assert model.predict(images(rng, 1, 64, data_format) * 255, verbose=0).shape == (1, 5)
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


def test_plain_keras_model_fit_evaluate_predict_summary(data_format, rng, tmp_path):
    model = multinet.create_model("squeezenet1_1", input_shape=in_format((32, 32, 3),
                                  data_format), classes=3, data_format=data_format)
    assert isinstance(model, keras.Model)
    lines = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    text = "\n".join(lines)
    assert "fire9_expand3x3" in text and f"{722_496 + 512 * 3 + 3:,}" in text
    x = images(rng, 8, 32, data_format)
    y = rng.integers(0, 3, size=(8,))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    loss, accuracy = model.evaluate(x, y, verbose=0)
    assert np.isfinite(loss) and 0.0 <= accuracy <= 1.0
    predictions = model.predict(x, verbose=0)
    assert predictions.shape == (8, 3)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)

    saved = str(tmp_path / "model.keras")
    model.save(saved)
    restored = keras.saving.load_model(saved)
    assert type(restored.get_layer("conv1")) is multinet.layers.Conv2D
    assert rel_error(restored.predict(x, verbose=0), predictions) < 1e-5

    weights = str(tmp_path / "model.weights.h5")
    model.save_weights(weights)
    fresh = multinet.create_model("squeezenet1_1", input_shape=x.shape[1:], classes=3,
                                  data_format=data_format)
    fresh.load_weights(weights)
    assert rel_error(fresh.predict(x, verbose=0), predictions) < 1e-6


def test_keras_archive_keeps_ceil_mode(tmp_path, data_format):
    model = multinet.create_model("squeezenet1_1", include_top=False, ceil_mode=True,
                                  input_shape=in_format((227, 227, 3), data_format),
                                  data_format=data_format)
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.get_layer("pool5").ceil_mode is True
    assert restored.output_shape == model.output_shape == (None, *in_format((14, 14, 512),
                                                                              data_format))
