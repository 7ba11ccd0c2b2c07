"""ViT-B/16 against an independent reference: torchvision's model code.

A state dict in torchvision's layout (seeded, non-degenerate weights, see
tests/make_expected_vit.py) is written as a real checkpoint (.pth in the torch
session, .safetensors elsewhere) and loaded through
``multinet.create_model("vit_b_16", weights=PATH)``; the logits must match
torchvision's within 1e-4 relative at 224 and at 112 (the checkpoint's 14x14
position embedding resized on load, as torchvision's
``interpolate_embeddings`` does), in both data formats, each computed in its
own format. torchvision's outputs are stored in tests/data; in the torch
session the test also runs torchvision live.
"""

from __future__ import annotations

import functools
import inspect

import keras
import make_expected_vit as expected_data
import numpy as np
import pytest
from helpers import infer
from references import assert_inputs_matter, rel_error, structured_images

import multinet
from multinet import layers
from multinet.models import vit
from multinet.weights import WeightsLoadError, loaded_weights
from multinet.weights.torchvision import interpolate_bicubic

# Every model here loads its weights: none depends on the initial values.
pytestmark = pytest.mark.usefixtures("numpy_initial_weights")

MODEL = "vit_b_16"
TOL = 1e-4
FORMATS = ("channels_last", "channels_first")
SIZES = expected_data.SIZES
PARAMS = 86_567_656  # torchvision's Weights.meta num_params; Keras counts the same
PARAMS_NOTOP = PARAMS - (768 * 1000 + 1000)
DEPTH, WIDTH, MLP = 12, 768, 3072


def has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def in_format(x: np.ndarray, data_format: str) -> np.ndarray:
    return x if data_format == "channels_last" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def shape_of(size: int, data_format: str) -> tuple:
    return (size, size, 3) if data_format == "channels_last" else (3, size, size)


def network_inputs(size: int) -> np.ndarray:
    """torchvision's normalization written out (NHWC float32)."""
    x = structured_images(size, expected_data.TEST_IMAGES).astype(np.float64)
    x = (x / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return np.ascontiguousarray(x, dtype=np.float32)



@functools.cache
def expected() -> dict:
    return expected_data.load_expected()


@functools.cache
def _state() -> dict:
    return expected_data.torchvision_state(expected()["layout"])


def state_dict() -> dict:
    """The seeded state dict (drawn once; a new dict of the same arrays)."""
    return dict(_state())


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit_weights")
    state = state_dict()
    if has("torch"):
        import torch

        path = folder / "vit_b_16.pth"
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    else:
        from safetensors.numpy import save_file

        path = folder / "vit_b_16.safetensors"
        save_file(state, str(path))
    return str(path)


@pytest.fixture(scope="module")
def models(weight_file):
    """One model per (size, format) with the file's weights, built once for the module."""
    cache = {}

    def get(size, data_format):
        if (size, data_format) not in cache:
            cache[size, data_format] = multinet.create_model(
                MODEL, weights=weight_file, input_shape=shape_of(size, data_format),
                data_format=data_format, compute_format=data_format,
                classifier_activation=None)
        return cache[size, data_format]

    yield get
    cache.clear()


@functools.cache
def live_reference(size: int) -> np.ndarray:
    """torchvision's logits on its own pipeline, with the same weights."""
    import torch

    module = expected_data.torchvision_module(size, expected()["layout"], state_dict())
    images = structured_images(size, expected_data.TEST_IMAGES)
    with torch.inference_mode():
        return module(expected_data._torchvision_pipeline(images)).numpy()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("data_format", FORMATS)
def test_matches_torchvision(models, data_format, size):
    """At 224, raw 8-bit images through ``preprocess_input(x, model=m)`` and
    ``predict`` against torchvision's own ToTensor + Normalize pipeline; at
    112, torchvision's normalization written out here, called directly."""
    model = models(size, data_format)
    assert loaded_weights(model)["layout"] == "torchvision"
    if size == 224:
        assert loaded_weights(model)["preprocessing"] == "torch"
        raw = in_format(structured_images(size, expected_data.TEST_IMAGES), data_format)
        x = multinet.preprocess_input(raw.astype(np.uint8), model=model)
        got = model.predict(x, batch_size=2, verbose=0)
    else:
        got = infer(model, in_format(network_inputs(size), data_format))
    stored = expected()["outputs"][size]
    assert got.shape == stored.shape == (2, 1000)
    assert rel_error(got, stored) < TOL
    if has("torch"):
        live = live_reference(size)
        assert rel_error(live, stored) < TOL, "tests/data is stale: run tests/make_expected_vit.py"
        assert rel_error(got, live) < TOL


def test_stored_outputs_depend_on_the_input():
    for size in SIZES:
        assert_inputs_matter(expected()["outputs"][size])
    # ... and on the position embedding being resized, not cut or padded:
    # the two sizes' outputs for the same photo differ, but not wildly.
    first = {size: expected()["outputs"][size][0] for size in SIZES}
    assert 1e-3 < rel_error(first[112], first[224]) < 1.0


def _weighted(model) -> list[str]:
    return sorted(layer.name for layer in model.layers if layer.weights)


@pytest.fixture(scope="module")
def tokens_small(models):
    """The final LayerNorm's output (2, 1 + 7 * 7, 768) of the full model at
    112 (channels_first), and its input."""
    full = models(112, "channels_first")
    x = in_format(network_inputs(112), "channels_first")
    tokens = infer(keras.Model(full.input, full.get_layer("encoder_ln").output), x)
    assert tokens.shape == (2, 1 + 7 * 7, WIDTH)
    return x, tokens.astype(np.float64)


@pytest.fixture(scope="module")
def notop(weight_file):
    model = multinet.create_model(MODEL, include_top=False, input_shape=(3, 112, 112),
                                  data_format="channels_first", compute_format="channels_first")
    report = multinet.load_weights(model, weight_file)
    return model, report


def test_include_top_false_skips_only_the_head(notop, tokens_small):
    """A full checkpoint into ``include_top=False``: everything but the head
    loads, and the output is the class token after the final LayerNorm."""
    model, report = notop
    assert model.output_shape == (None, WIDTH)
    assert list(report.skipped) == ["heads_head (file: heads.head)"]
    assert sorted(report.loaded) == _weighted(model)
    assert report.num_values == model.count_params() == PARAMS_NOTOP - (197 - 50) * WIDTH
    x, tokens = tokens_small
    assert rel_error(infer(model, x), tokens[:, 0]) < 1e-5


def test_pooling_reduces_the_patch_tokens(notop, tokens_small):
    """``pooling="avg"``/``"max"`` end the model in a ``TokenPooling`` of that
    mode in place of the class token's: the mean/maximum over the patch tokens
    after the final LayerNorm, the class token left out."""
    model, _ = notop
    x, tokens = tokens_small
    for pooling, reduce in (("avg", np.mean), ("max", np.max)):
        with keras.StatelessScope(initialize_variables=False):
            built = multinet.create_model(MODEL, include_top=False, pooling=pooling,
                                          input_shape=(3, 112, 112),
                                          data_format="channels_first")
        last = built.get_layer("pool")
        assert (last.mode, built.output_shape) == (pooling, (None, WIDTH))
        assert last.input is built.get_layer("encoder_ln").output
        pooled = keras.Model(model.input,
                             vit.TokenPooling(pooling)(model.get_layer("encoder_ln").output))
        got = infer(pooled, x)
        assert rel_error(got, reduce(tokens[:, 1:], axis=1)) < 1e-5, pooling
        assert rel_error(got, reduce(tokens, axis=1)) > 1e-3, pooling  # not the class token
    assert model.get_layer("pool").mode == "token"


def test_checkpoints_with_the_old_mlp_names_load(notop):
    """torchvision before 0.14 saved the MLP's Linear layers as ``mlp.linear_1``
    and ``mlp.linear_2`` (its ``MLPBlock`` still reads them): they land in the
    same layers as ``mlp.0`` and ``mlp.3``."""
    model, _ = notop
    state = state_dict()
    old = {key.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): value
           for key, value in state.items()}
    assert sum(".mlp.linear_1." in key for key in old) == 2 * DEPTH
    for key in [k for k in old if ".mlp.linear_" in k]:
        old[key] = old[key] + 1.0  # values the model does not hold yet
    multinet.load_weights(model, old)
    for index in (0, 11):
        prefix = f"encoder.layers.encoder_layer_{index}.mlp."
        kernel, bias = model.get_layer(f"encoder_layer_{index}_mlp_3").get_weights()
        np.testing.assert_array_equal(kernel, old[prefix + "linear_2.weight"].T)
        np.testing.assert_array_equal(bias, old[prefix + "linear_2.bias"])
        kernel, _ = model.get_layer(f"encoder_layer_{index}_mlp_0").get_weights()
        np.testing.assert_array_equal(kernel, old[prefix + "linear_1.weight"].T)
    multinet.load_weights(model, state)
    np.testing.assert_array_equal(model.get_layer("encoder_layer_0_mlp_0").get_weights()[1],
                                  state["encoder.layers.encoder_layer_0.mlp.0.bias"])


def test_a_position_embedding_that_is_no_square_grid_is_refused(notop):
    model, _ = notop
    state = dict(state_dict())
    state["encoder.pos_embedding"] = np.zeros((1, 1 + 10 * 11, WIDTH), np.float32)
    before = model.get_layer("encoder_pos_embedding").get_weights()[0].copy()
    with pytest.raises(WeightsLoadError, match=r"encoder_pos_embedding \(file: encoder\): "
                                               r"pos_embedding has 111 tokens: 110 patches are "
                                               r"not a square grid to resize to 7x7"):
        multinet.load_weights(model, state)
    np.testing.assert_array_equal(model.get_layer("encoder_pos_embedding").get_weights()[0],
                                  before)


def test_parameter_count_and_structure(data_format):
    """Keras' count is torchvision's (no BatchNorm statistics): 86,567,656,
    every one trainable; the stored layout (torchvision's state dict) counts
    the same; one encoder block per layer with torchvision's shapes."""
    with keras.StatelessScope(initialize_variables=False):
        model = multinet.create_model(MODEL, data_format=data_format)
        notop = multinet.create_model(MODEL, include_top=False, data_format=data_format)
    assert model.count_params() == PARAMS
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == PARAMS
    assert notop.count_params() == PARAMS_NOTOP
    layout = expected()["layout"]
    assert sum(int(np.prod(shape)) for _, shape in layout) == PARAMS
    blocks = {name.split("_")[2] for name in _weighted(model) if name.startswith("encoder_layer")}
    assert blocks == {str(i) for i in range(DEPTH)}
    shapes = {layer.name: [tuple(w.shape) for w in layer.weights] for layer in model.layers}
    assert shapes["encoder_layer_11_self_attention"] == [(WIDTH, 3 * WIDTH), (3 * WIDTH,)]
    assert shapes["encoder_layer_11_mlp_0"] == [(WIDTH, MLP), (MLP,)]
    assert shapes["encoder_pos_embedding"] == [(1, 197, WIDTH)]
    assert shapes["class_token"] == [(1, 1, WIDTH)]
    assert shapes["conv_proj"] == [(16, 16, 3, WIDTH), (WIDTH,)]
    assert model.get_layer("encoder_ln").epsilon == 1e-6
    assert model.get_layer("encoder_layer_0_ln_1").epsilon == 1e-6
    assert isinstance(model.get_layer("encoder_layer_0_mlp_1"), layers.GELU)
    if has("torch"):
        from references import torchvision_models

        module = torchvision_models().vit_b_16()
        assert sum(p.numel() for p in module.parameters()) == PARAMS
        assert [[k, list(v.shape)] for k, v in module.state_dict().items()] == layout


def test_torchvision_entry_matches_torchvision():
    spec = multinet.get_model_spec(MODEL)
    assert spec.num_params == PARAMS
    assert [e.name for e in spec.weights] == ["torchvision"]
    assert spec.default_weights == "torchvision"
    entry = spec.get_weights("imagenet")
    assert (entry.layout, entry.preprocessing, entry.resize_size, entry.input_size,
            entry.interpolation, entry.hash_algorithm, entry.file_hash) == (
        "torchvision", "torch", 256, 224, "bilinear", "sha256", "c867db91")
    assert entry.url == "https://download.pytorch.org/models/vit_b_16-c867db91.pth"
    if not has("torch"):
        return
    from references import torchvision_models

    published = torchvision_models().ViT_B_16_Weights.IMAGENET1K_V1
    assert entry.url == published.url
    assert published.meta["num_params"] == PARAMS
    transform = published.transforms()
    assert (list(transform.resize_size), list(transform.crop_size)) == ([256], [224])
    assert transform.interpolation.value == entry.interpolation


def test_constructor_follows_keras_applications():
    from multinet.models import ViTB16

    keras_params = list(inspect.signature(keras.applications.ResNet50).parameters)
    assert list(inspect.signature(ViTB16).parameters)[:len(keras_params)] == keras_params
    assert inspect.signature(ViTB16).parameters["weights"].default == "imagenet"
    with keras.StatelessScope(initialize_variables=False):
        model = ViTB16(weights=None, include_top=False, input_shape=(3, 64, 64),
                       data_format="channels_first")
        assert model.output_shape == (None, WIDTH)
        assert model.get_layer("encoder_pos_embedding").weights[0].shape == (1, 17, WIDTH)
        model = ViTB16(weights=None, classes=7, input_shape=(32, 48, 3),
                       data_format="channels_last")
        assert model.output_shape == (None, 7)
        assert model.get_layer("encoder_pos_embedding").grid == (2, 3)
        model = ViTB16(weights=None, include_top=False, data_format="channels_last")
        assert model.input_shape == (None, 224, 224, 3)  # the size is needed to build


@pytest.mark.parametrize("kwargs,message", [
    (dict(input_shape=(200, 200, 3)), r"vit_b_16: input height and width must be multiples of "
                                      r"the patch size 16, got input_shape \(200, 200, 3\)"),
    (dict(input_shape=(3, 224, 230), data_format="channels_first"),
     r"multiples of the patch size 16, got input_shape \(3, 224, 230\) \(channels_first\)"),
    (dict(input_shape=(None, None, 3), include_top=False),
     r"vit_b_16: the input height and width must be known"),
    (dict(input_shape=(8, 8, 3)), r"vit_b_16: input_shape \(8, 8, 3\) is too small; .* 16"),
    (dict(pooling="token", include_top=False), r"pooling must be one of"),
])
def test_invalid_input_is_a_clear_error(kwargs, message):
    kwargs.setdefault("data_format", "channels_last")
    with pytest.raises(ValueError, match=message):
        multinet.create_model(MODEL, **kwargs)


def test_interpolation_is_torchs_bicubic():
    """``interpolate_bicubic`` against torch's ``interpolate(mode="bicubic",
    align_corners=True)`` (stored; live in the torch session), and the
    position embedding loaded for 112 and 384 against torchvision's
    ``interpolate_embeddings`` (torch session)."""
    grid = expected_data.seeded_grid()
    for size, stored in expected()["grids"].items():
        got = interpolate_bicubic(grid, size)
        assert got.shape == (*size, grid.shape[2])
        assert rel_error(got, stored) < 1e-6, size
        if has("torch"):
            assert rel_error(got, expected_data.torch_grid(size)) < 1e-6, size
    assert rel_error(interpolate_bicubic(grid, grid.shape[:2]), grid) < 1e-7
    if not has("torch"):
        return
    import torch
    from references import torchvision_models

    torchvision_models()
    from torchvision.models.vision_transformer import interpolate_embeddings

    pos = state_dict()["encoder.pos_embedding"]
    for size in (112, 384):
        grid = size // 16
        layer = vit.PositionEmbedding((grid, grid))
        layer.build((None, 1 + grid * grid, WIDTH))
        ours = layer.from_torchvision({"pos_embedding": pos})[0]
        theirs = interpolate_embeddings(size, 16, {"encoder.pos_embedding": torch.from_numpy(pos)})
        assert rel_error(ours, theirs["encoder.pos_embedding"].numpy()) < 1e-5, size


def test_self_attention_converts_torchs_multihead_attention():
    """The fused q/k/v kernel from ``nn.MultiheadAttention``'s
    ``in_proj_weight``/``in_proj_bias``, then the ``out_proj`` Dense layer:
    torch's own attention, on a small case (torch session)."""
    torch = pytest.importorskip("torch")
    from multinet.weights.torchvision import convert_module

    torch.manual_seed(0)
    attention = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():
        attention.in_proj_bias.normal_()
        attention.out_proj.bias.normal_()
    x = np.random.default_rng(0).standard_normal((2, 7, 32)).astype(np.float32)
    with torch.inference_mode():
        expected_out = attention(*[torch.from_numpy(x)] * 3, need_weights=False)[0].numpy()
    inputs = keras.Input((7, 32))
    mixer = vit.SelfAttention(4)
    out_proj = keras.layers.Dense(32)
    model = keras.Model(inputs, out_proj(mixer(inputs)))
    params = dict(attention.named_parameters())
    mixer.set_weights(convert_module("attn", {k: params[k] for k in (
        "in_proj_weight", "in_proj_bias")}, mixer))
    out_proj.set_weights(convert_module("attn.out_proj", {
        "weight": params["out_proj.weight"], "bias": params["out_proj.bias"]}, out_proj))
    assert rel_error(infer(model, x), expected_out) < 1e-5


def _small_transformer(data_format):
    """The family's layers at a small scale: a 2x2 grid of 16x16 patches."""
    inputs = keras.Input(shape_of(32, data_format))
    x = layers.Conv2D(8, 16, strides=16, data_format=data_format, name="conv_proj")(
        inputs)
    if data_format == "channels_last":
        x = keras.layers.Reshape((4, 8))(x)
    else:
        x = keras.layers.Permute((2, 1))(keras.layers.Reshape((8, 4))(x))
    x = vit.ClassToken(name="class_token")(x)
    x = vit.PositionEmbedding((2, 2), name="encoder_pos_embedding")(x)
    x = vit.encoder_block(x, 2, 16, "encoder_layer_0")
    x = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    return keras.Model(inputs, vit.TokenPooling("avg")(x))


def test_keras_archive_keeps_the_family_layers(tmp_path, rng):
    """ClassToken, PositionEmbedding (its grid), SelfAttention (its heads) and
    TokenPooling (its mode) go through a .keras file: the same numbers, which
    fresh weights do not give."""
    model = _small_transformer("channels_last")
    model.get_layer("class_token").set_weights([rng.standard_normal((1, 1, 8))])
    path = str(tmp_path / "small.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.get_layer("encoder_pos_embedding").grid == (2, 2)
    assert restored.get_layer("encoder_layer_0_self_attention").num_heads == 2
    assert restored.layers[-1].mode == "avg"
    x = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
    assert rel_error(infer(restored, x), infer(model, x)) < 1e-6
    assert rel_error(infer(_small_transformer("channels_last"), x), infer(model, x)) > 1e-3
