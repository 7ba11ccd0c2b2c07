"""Inputs and outputs of ImageNet classifiers: ``load_image``, ``preprocess_input``,
``decode_predictions``. Everything works offline; nothing is downloaded."""

from __future__ import annotations

import functools
import json
import os
from importlib import resources

import keras
import numpy as np
from keras import ops

from multinet import backend
from multinet.layers import standardize_data_format

MODES = ("caffe", "torch", "tf", "none")
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
CROP_RATIO = 0.875  # torchvision: resize the short side to 256, crop 224


def _model_data_format(model) -> str | None:
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, tuple) and len(shape) == 4:
        if shape[1] == 3 and shape[-1] != 3:
            return backend.CHANNELS_FIRST
        if shape[-1] == 3:
            return backend.CHANNELS_LAST
    return None


def _mode_for(model) -> str:
    from multinet.weights import loaded_weights

    info = loaded_weights(model)
    mode = info and info.get("preprocessing")
    if not mode:
        what = (f"its weights ({info['layout']} from {info['source']})" if info
                else "it has no weights loaded by multinet")
        raise ValueError(
            f"preprocess_input: cannot tell the input mode of model {model.name!r}: {what} "
            f"do not say; pass mode= one of {', '.join(MODES)}"
        )
    return mode


def _shape_for(ndim: int, data_format: str) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[-1 if data_format == backend.CHANNELS_LAST else (1 if ndim == 4 else 0)] = 3
    return tuple(shape)


def preprocess_input(x, mode: str | None = None, *, model=None, data_format: str | None = None):
    """Scale RGB images with values in [0, 255] the way a model's weights expect.

    ``mode``: ``"caffe"`` (RGB to BGR, subtract the ImageNet mean),
    ``"torch"`` (/255, subtract mean, divide by std), ``"tf"`` (to [-1, 1]) or
    ``"none"`` (the values as they are, [0, 255], for models that scale their
    input themselves, such as keras' MobileNetV3 with its ``Rescaling``).
    With ``model=`` and no ``mode``, the mode of the weights loaded into that
    model (by ``create_model`` or ``load_weights``) is used, and the data format
    follows the model's input. ``x`` (3D image or 4D batch) is never modified;
    a numpy array (or list) gives a numpy array, a backend tensor a tensor.
    Integer inputs give float32, other floats keep their precision.
    """
    if mode is None:
        if model is None:
            raise ValueError(f"preprocess_input: pass mode= (one of {', '.join(MODES)}) or model=")
        mode = _mode_for(model)
    if mode not in MODES:
        raise ValueError(f"preprocess_input: mode must be one of {MODES}, got {mode!r}")
    if data_format is None and model is not None:
        data_format = _model_data_format(model)
    data_format = standardize_data_format(data_format)

    is_numpy = not ops.is_tensor(x) and not isinstance(x, keras.KerasTensor)
    if is_numpy:
        x = np.asarray(x)
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype("float32")
        flip = np.flip
        x = x.astype(dtype, copy=True)
    else:
        dtype = keras.backend.standardize_dtype(x.dtype)
        if "float" not in dtype:
            dtype = "float32"
        x = ops.cast(x, dtype)
        flip = ops.flip
    if x.ndim not in (3, 4):
        raise ValueError(
            f"preprocess_input: expected an image (3D) or a batch (4D), got shape {tuple(x.shape)}"
        )
    axis = -1 if data_format == backend.CHANNELS_LAST else x.ndim - 3
    if x.shape[axis] != 3:
        raise ValueError(
            f"preprocess_input: expected 3 channels on axis {axis} ({data_format}), "
            f"got shape {tuple(x.shape)}"
        )
    shape = _shape_for(x.ndim, data_format)

    def const(values):
        array = np.asarray(values, dtype=dtype).reshape(shape)
        return array if is_numpy else ops.convert_to_tensor(array)

    if mode == "none":
        return x  # already a float copy (or cast tensor) of the input
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "caffe":
        return flip(x, axis=axis) - const(CAFFE_MEAN_BGR)
    return (x / 255.0 - const(TORCH_MEAN)) / const(TORCH_STD)


def _resize_short_side(image, size: int, resample):
    width, height = image.size
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    return image if new == image.size else image.resize(new, resample)


def _pair(value, what):
    if isinstance(value, int):
        return value, value
    try:
        height, width = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"load_image: {what} must be an int or (height, width), "
                         f"got {value!r}") from None
    return height, width


def _to_rgb(image):
    """An RGB PIL image from any mode; 16/32-bit grayscale scaled to 8 bits."""
    from PIL import Image

    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
        if image.mode.startswith("I;16") or array.max(initial=0) > 255:
            array = array / 257.0
        array = np.clip(np.round(array), 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def image_options(input_size: int, resize_size: int | None = None,
                  interpolation: str = "bilinear") -> dict:
    """``load_image`` arguments for an evaluation transform such as a
    ``WeightsSpec``'s: with ``resize_size``, resize the short side to it and
    center-crop ``input_size`` (torchvision: 256, then 224); without, resize
    the whole image to ``input_size`` x ``input_size`` (keras.applications)."""
    if resize_size:
        return {"target_size": int(resize_size), "crop": int(input_size),
                "interpolation": interpolation}
    return {"target_size": (int(input_size), int(input_size)), "interpolation": interpolation}


def describe_image_options(options: dict) -> str:
    """``image_options`` in words: ``short side 256, center crop 224x224, bilinear``."""
    size, crop = options.get("target_size"), options.get("crop")
    interpolation = options.get("interpolation", "bilinear")
    if isinstance(size, int) and crop:
        return f"short side {size}, center crop {crop}x{crop}, {interpolation}"
    return f"resized to {size[0]}x{size[1]}, {interpolation}"


def load_image(path, target_size=None, *, crop=None, data_format: str | None = None,
               interpolation: str = "bilinear") -> np.ndarray:
    """An image file as a float32 array with values in [0, 255].

    Any Pillow-readable image is converted to RGB (grayscale, palette, CMYK,
    16-bit; transparent pixels are put on white). ``target_size``: None keeps
    the size, ``(height, width)`` resizes to exactly that, an int resizes the
    short side to it keeping the aspect ratio. ``crop`` (int or (height,
    width)) then takes a center crop; with ``crop`` and no ``target_size`` the
    short side is first resized to ``int(crop / 0.875)``, as torchvision's
    ImageNet evaluation does (256 then 224). Returns (H, W, 3), or (3, H, W)
    for ``data_format="channels_first"``.
    """
    from PIL import Image, UnidentifiedImageError

    data_format = standardize_data_format(data_format)
    filename = os.fspath(path)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"image file not found: {filename}")
    resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR,
                "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}.get(interpolation)
    if resample is None:
        raise ValueError(f"load_image: unknown interpolation {interpolation!r}")
    try:
        # color_mode="grayscale" keeps 16-bit images as they are; _to_rgb converts.
        with Image.open(filename) as opened:
            mode = opened.mode
        if mode.startswith("I") or mode == "F":
            image = keras.utils.load_img(filename, color_mode="grayscale")
        else:
            image = keras.utils.load_img(filename, color_mode="rgba" if mode in (
                "RGBA", "LA", "PA", "P") else "rgb")
        image = _to_rgb(image)
        if crop is not None and target_size is None:
            target_size = int(_pair(crop, "crop")[0] / CROP_RATIO)
        if isinstance(target_size, int):
            image = _resize_short_side(image, target_size, resample)
        elif target_size is not None:
            height, width = _pair(target_size, "target_size")
            if (width, height) != image.size:
                image = image.resize((width, height), resample)
        if crop is not None:
            crop_h, crop_w = _pair(crop, "crop")
            width, height = image.size
            if crop_h > height or crop_w > width:
                raise ValueError(f"crop {crop_h}x{crop_w} is larger than the resized image "
                                 f"{height}x{width}")
            top = int(round((height - crop_h) / 2.0))
            left = int(round((width - crop_w) / 2.0))
            image = image.crop((left, top, left + crop_w, top + crop_h))
        array = np.asarray(image, dtype=np.float32)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"cannot read image {filename}: {reason}") from None
    if data_format == backend.CHANNELS_FIRST:
        array = np.ascontiguousarray(array.transpose(2, 0, 1))
    return array


@functools.cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet (wnid, label) pairs shipped with multinet, in class order."""
    text = resources.files("multinet").joinpath("data/imagenet_class_index.json").read_text()
    index = json.loads(text)
    return tuple(tuple(index[str(i)]) for i in range(len(index)))


def decode_predictions(preds, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """The ``top`` classes of each row of ``preds`` (N, 1000), best first, as
    ``(wnid, label, score)``. Uses the class index shipped with multinet."""
    array = ops.convert_to_numpy(preds) if ops.is_tensor(preds) else np.asarray(preds)
    classes = imagenet_classes()
    if array.ndim != 2 or array.shape[1] != len(classes):
        raise ValueError(
            f"decode_predictions: expected a batch of ImageNet predictions of shape "
            f"(samples, {len(classes)}), got shape {tuple(array.shape)}"
        )
    if not isinstance(top, int) or not 1 <= top <= len(classes):
        raise ValueError(f"decode_predictions: top must be in 1..{len(classes)}, got {top!r}")
    results = []
    for row in array:
        best = np.argsort(-row, kind="stable")[:top]
        results.append([(*classes[i], float(row[i])) for i in best])
    return results
