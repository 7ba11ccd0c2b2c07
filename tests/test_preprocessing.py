"""preprocess_input, load_image, decode_predictions: offline, both data formats."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import keras
import numpy as np
import pytest
import weight_fixtures as wf
from PIL import Image

import multinet
from multinet.preprocessing import imagenet_classes

FORMATS = ("channels_last", "channels_first")
CAT = Path(str(resources.files("multinet").joinpath("data/cat.jpg")))
MEAN_BGR = np.array([103.939, 116.779, 123.68])
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def reference(x_last, mode):
    """The modes written out in float64, channels_last."""
    x = np.asarray(x_last, dtype="float64")
    if mode == "caffe":
        return x[..., ::-1] - MEAN_BGR
    if mode == "torch":
        return (x / 255.0 - MEAN) / STD
    if mode == "none":
        return x
    return x / 127.5 - 1.0


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("mode", ["caffe", "torch", "tf", "none"])
def test_modes_numpy(mode, data_format):
    x_last = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3)).astype("uint8")
    x = x_last if data_format == "channels_last" else x_last.transpose(0, 3, 1, 2)
    original = x.copy()
    out = multinet.preprocess_input(x, mode, data_format=data_format)
    np.testing.assert_array_equal(x, original)  # the input is never modified
    assert isinstance(out, np.ndarray) and out.dtype == np.float32  # uint8 -> float32
    if data_format == "channels_first":
        out = out.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, reference(x_last, mode), rtol=1e-6, atol=1e-5)
    # A single image (3D) works the same way.
    single = multinet.preprocess_input(x[0], mode, data_format=data_format)
    if data_format == "channels_first":
        single = single.transpose(1, 2, 0)
    np.testing.assert_allclose(single, reference(x_last[0], mode), rtol=1e-6, atol=1e-5)


def test_float_precision_and_no_in_place_change():
    x = np.random.default_rng(1).uniform(0, 255, (1, 3, 3, 3))  # float64
    before = x.copy()
    out = multinet.preprocess_input(x, "caffe")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(out, reference(x, "caffe"), rtol=1e-12)
    ones = multinet.preprocess_input(np.ones((1, 1, 3), "int32"), "caffe")
    np.testing.assert_allclose(ones[0, 0], 1 - MEAN_BGR, rtol=1e-6)  # not truncated
    out = multinet.preprocess_input([[[0, 127.5, 255]]], "tf")
    np.testing.assert_allclose(out, [[[-1, 0, 1]]])


def test_mode_none_is_a_float_copy():
    """'none': [0, 255] as is, for models that scale their input themselves."""
    x = np.random.default_rng(5).uniform(0, 255, (2, 4, 4, 3))
    out = multinet.preprocess_input(x, "none")
    assert out is not x and out.dtype == np.float64
    np.testing.assert_array_equal(out, x)
    out[...] = 0.0
    assert x.max() > 0  # a copy: changing it leaves the input alone
    ints = multinet.preprocess_input(np.full((4, 4, 3), 255, "uint8"), "none")
    assert ints.dtype == np.float32 and float(ints.max()) == 255.0


@pytest.mark.parametrize("data_format", FORMATS)
def test_backend_tensors(data_format):
    x_last = np.random.default_rng(2).integers(0, 256, (2, 4, 4, 3)).astype("uint8")
    x = x_last if data_format == "channels_last" else x_last.transpose(0, 3, 1, 2)
    tensor = keras.ops.convert_to_tensor(x)
    for mode in ("caffe", "torch", "tf", "none"):
        out = multinet.preprocess_input(tensor, mode, data_format=data_format)
        assert keras.ops.is_tensor(out) and not isinstance(out, np.ndarray)
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        out = keras.ops.convert_to_numpy(out)
        if data_format == "channels_first":
            out = out.transpose(0, 2, 3, 1)
        np.testing.assert_allclose(out, reference(x_last, mode), rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(tensor), x)


def test_mode_from_model_and_errors():
    model = multinet.create_model("squeezenet1_1", input_shape=(3, 64, 64),
                                  data_format="channels_first")
    x = np.zeros((1, 3, 64, 64), "uint8")
    with pytest.raises(ValueError, match="cannot tell the input mode.*pass mode="):
        multinet.preprocess_input(x, model=model)
    multinet.load_weights(model, wf.torchvision_state_dict("squeezenet1_1"))
    out = multinet.preprocess_input(x, model=model)  # torch mode, channels_first
    np.testing.assert_allclose(out[0, :, 0, 0], -MEAN / STD, rtol=1e-6)
    with pytest.raises(ValueError, match="mode must be one of"):
        multinet.preprocess_input(x, "imagenet")
    with pytest.raises(ValueError, match="pass mode="):
        multinet.preprocess_input(x)
    with pytest.raises(ValueError, match=r"3 channels on axis -1.*shape \(1, 3, 64, 64\)"):
        multinet.preprocess_input(x, "tf", data_format="channels_last")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (40, 60, 3)).astype("uint8")
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(folder / "gray.png")
    rgba = np.dstack([rgb, np.full((40, 60), 255, "uint8")])
    rgba[0, 0, 3] = 0  # one transparent pixel
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    sixteen = (rng.integers(0, 256, (40, 60)) * 257).astype("uint16")
    Image.fromarray(sixteen).save(folder / "gray16.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder, rgb, sixteen


@pytest.mark.parametrize("data_format", FORMATS)
def test_load_image_modes(images, data_format):
    folder, rgb, sixteen = images
    expected_shape = (40, 60, 3) if data_format == "channels_last" else (3, 40, 60)
    loaded = {}
    for name in ("rgb.png", "gray.png", "rgba.png", "palette.png", "cmyk.jpg", "gray16.png"):
        array = multinet.load_image(folder / name, data_format=data_format)
        assert array.shape == expected_shape and array.dtype == np.float32, name
        assert 0 <= array.min() and array.max() <= 255, name
        loaded[name] = array if data_format == "channels_last" else array.transpose(1, 2, 0)
    np.testing.assert_array_equal(loaded["rgb.png"], rgb)
    np.testing.assert_array_equal(loaded["gray.png"], np.repeat(rgb[..., :1], 3, axis=-1))
    np.testing.assert_array_equal(loaded["rgba.png"][1:], rgb[1:])
    np.testing.assert_array_equal(loaded["rgba.png"][0, 0], [255, 255, 255])  # on white
    np.testing.assert_array_equal(loaded["gray16.png"][..., 0], sixteen / 257)
    assert np.abs(loaded["cmyk.jpg"] - rgb).mean() < 40  # lossy, but the same picture
    assert np.abs(loaded["palette.png"] - rgb).mean() < 20


def test_load_image_resize_and_torchvision_crop():
    with Image.open(CAT) as image:
        width, height = image.size
        image = image.convert("RGB")
        # torchvision: Resize(256) (short side, bilinear) then CenterCrop(224).
        short, long_ = (width, height) if width <= height else (height, width)
        resized_long = int(256 * long_ / short)
        size = (256, resized_long) if width <= height else (resized_long, 256)
        resized = image.resize(size, Image.BILINEAR)
        top = int(round((resized.size[1] - 224) / 2.0))
        left = int(round((resized.size[0] - 224) / 2.0))
        expected = np.asarray(resized.crop((left, top, left + 224, top + 224)), "float32")
    np.testing.assert_array_equal(multinet.load_image(CAT, crop=224), expected)
    np.testing.assert_array_equal(
        multinet.load_image(CAT, 256, crop=224, data_format="channels_first"),
        expected.transpose(2, 0, 1))
    assert multinet.load_image(CAT, (100, 120)).shape == (100, 120, 3)
    short_side = multinet.load_image(CAT, 64)
    assert min(short_side.shape[:2]) == 64


def test_load_image_errors(images, tmp_path):
    folder, _, _ = images
    with pytest.raises(FileNotFoundError, match="image file not found: .*missing.png"):
        multinet.load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"cannot read image .*broken.jpg") as info:
        multinet.load_image(folder / "broken.jpg")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="larger than"):
        multinet.load_image(folder / "rgb.png", (20, 20), crop=30)


def test_decode_predictions():
    classes = imagenet_classes()
    assert len(classes) == 1000 and classes[0] == ("n01440764", "tench")
    logits = np.random.default_rng(4).standard_normal((3, 1000)).astype("float32")
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    decoded = multinet.decode_predictions(probs, top=3)
    assert len(decoded) == 3
    for row, result in zip(probs, decoded):
        best = np.argsort(-row)[:3]
        assert [r[:2] for r in result] == [classes[i] for i in best]
        assert [r[2] for r in result] == pytest.approx(row[best].tolist())
        assert all(isinstance(r[2], float) for r in result)
    tensor_result = multinet.decode_predictions(keras.ops.convert_to_tensor(probs))
    assert len(tensor_result[0]) == 5 and tensor_result[0][0] == decoded[0][0]
    for bad in (np.zeros(1000), np.zeros((2, 10))):
        with pytest.raises(ValueError, match=r"shape \(samples, 1000\), got shape"):
            multinet.decode_predictions(bad)


@pytest.mark.parametrize("data_format", FORMATS)
def test_cat_pipeline(data_format, tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "squeezenet1_1.safetensors"
    save_file(wf.torchvision_state_dict("squeezenet1_1"), str(path))
    model = multinet.create_model("squeezenet1_1", weights=str(path), data_format=data_format)
    image = multinet.load_image(CAT, crop=224, data_format=data_format)
    # The cat, and the cat with its red and blue channels swapped: what the
    # model answers depends on the picture.
    swapped = image[::-1] if data_format == "channels_first" else image[..., ::-1]
    batch = multinet.preprocess_input(np.stack([image, swapped]), model=model)
    probs = model.predict(batch, verbose=0)
    assert probs.shape == (2, 1000)
    assert np.abs(probs[0] - probs[1]).max() > 0.1 * probs[0].max()
    assert probs[0].argmax() != probs[1].argmax()
    (top, other) = multinet.decode_predictions(probs, top=5)
    scores = [score for _, _, score in top]
    assert scores == sorted(scores, reverse=True) and 0 <= scores[-1] and sum(scores) <= 1 + 1e-6
    assert scores[0] == pytest.approx(float(probs[0].max()))
    assert top[0][:2] == imagenet_classes()[probs[0].argmax()] != other[0][:2]
    # The same numbers as preprocessing by hand in torch mode.
    by_hand = (image.transpose(1, 2, 0) if data_format == "channels_first" else image)
    expected = ((by_hand / 255.0 - MEAN) / STD).astype("float32")
    got = batch[0].transpose(1, 2, 0) if data_format == "channels_first" else batch[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_cat_pipeline_matches_the_torch_reference():
    """Where PyTorch is installed: the torchvision architecture with the same
    weights, on the cat preprocessed by hand, gives the same probabilities."""
    torch = pytest.importorskip("torch")
    import torch_reference

    state = wf.torchvision_state_dict("squeezenet1_1")
    module = torch_reference.build("squeezenet1_1")
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    image = multinet.load_image(CAT, crop=224)
    by_hand = ((image / 255.0 - MEAN) / STD).astype("float32").transpose(2, 0, 1)[None]
    with torch.inference_mode():
        expected = torch.softmax(module(torch.from_numpy(by_hand)), dim=1).numpy()
    model = multinet.create_model("squeezenet1_1", weights=wf.torchvision_state_dict(
        "squeezenet1_1"), data_format="channels_last")
    got = model.predict(multinet.preprocess_input(image[None], model=model), verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
