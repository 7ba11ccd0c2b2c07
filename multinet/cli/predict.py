"""``multinet predict``: classify images."""

from __future__ import annotations

import contextlib
import os
import sys

import keras
import numpy as np

import multinet
from multinet import backend
from multinet.cli.common import (
    RANDOM_WEIGHTS,
    CommandError,
    describe_weights_file,
    err,
    model_spec,
    one_line,
    options_for,
    positive_int,
    print_json,
    spatial,
    top_k,
)
from multinet.layers import image_shape
from multinet.registry import ModelSpec


def add_parser(commands, parents):
    formats = backend.DATA_FORMATS
    p = commands.add_parser(
        "predict", parents=parents, help="classify images",
        description="Classify images with an ImageNet model: the top K labels and scores per "
                    "image. Images are resized, cropped and scaled the way the weights need. "
                    "Any Pillow-readable image works (RGBA, grayscale and palette images are "
                    "converted to RGB). With more images than the batch size, a progress bar "
                    "goes to stderr.",
        epilog="WEIGHTS defaults to 'imagenet', the model's default pretrained entry "
               "(downloaded once into the cache, or read from it when MULTINET_OFFLINE=1). "
               "It can name another entry ('multinet info NAME' lists them), a weights file "
               "in any layout multinet reads, or 'random' for untrained weights (a warning "
               "says so; the labels then mean nothing).")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("-m", "--model", required=True, metavar="NAME", help="model name")
    p.add_argument("-w", "--weights", default="imagenet", metavar="WEIGHTS",
                   help="weights entry, file, or 'random' (default: imagenet)")
    p.add_argument("--top", type=top_k, default=5, metavar="K",
                   help="labels per image (default: 5)")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="images per forward pass (default: 8)")
    p.add_argument("--data-format", choices=formats, default=None,
                   help="the model's data format (default: keras.config.image_data_format())")
    p.add_argument("--preprocessing", choices=("caffe", "torch", "tf"), default=None,
                   help="override the input scaling (default: what the weights need)")
    p.add_argument("--json", action="store_true", help="write JSON to stdout")
    p.set_defaults(handler=run)


def _build_for_predict(spec: ModelSpec, weights: str, data_format: str):
    """(model, preprocessing, note): the model with its weights, and how to feed it."""
    from multinet.registry import resolve_weights

    if weights == RANDOM_WEIGHTS:
        entry = spec.get_weights("imagenet") if spec.default_weights else None
        model = multinet.create_model(spec.name, data_format=data_format)
        return model, (entry.preprocessing if entry else "torch"), "RANDOM weights"
    try:
        entry = resolve_weights(spec, weights)
    except ValueError as error:
        raise CommandError(f"{error}, or 'random'") from error
    if entry is not None:
        model = multinet.create_model(spec.name, weights=weights, data_format=data_format)
        return model, entry.preprocessing, f"weights {entry.name!r}"
    info = describe_weights_file(spec, weights)
    size = info["input_size"] or spec.default_size
    model = multinet.create_model(
        spec.name, data_format=data_format, input_shape=image_shape(size, data_format),
        **options_for(spec, info["arch_options"]))
    multinet.load_weights(model, weights)
    preprocessing = info["preprocessing"]
    if preprocessing is None:
        entry = spec.get_weights("imagenet") if spec.default_weights else None
        preprocessing = entry.preprocessing if entry else "torch"
        err(f"multinet predict: warning: {weights} does not say how its inputs were scaled; "
             f"using {preprocessing!r} (pass --preprocessing to choose)")
    return model, preprocessing, f"weights file {weights} ({info['layout']})"


@contextlib.contextmanager
def _progress(total: int, show: bool):
    """A keras.utils.Progbar on stderr, or nothing."""
    if not show:
        yield lambda done: None
        return
    bar = keras.utils.Progbar(total, unit_name="image")

    def update(done):
        with contextlib.redirect_stdout(sys.stderr):
            bar.update(done)

    yield update


def run(args) -> int:
    from PIL import Image, UnidentifiedImageError

    from multinet.demo import image_options

    for path in args.images:  # before the model is built (or its weights downloaded)
        if not os.path.exists(path):
            raise CommandError(f"image file not found: {path}")
        if not os.path.isfile(path):
            raise CommandError(f"image path is not a file: {path}")
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018  (the header is read)
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise CommandError(f"cannot read image {path}: {one_line(error)}") from None
    spec = model_spec(args.model)
    data_format = args.data_format or keras.config.image_data_format()
    model, preprocessing, source = _build_for_predict(spec, args.weights, data_format)
    if model.output_shape[-1] != 1000:
        raise CommandError(f"{spec.name} with {source} has {model.output_shape[-1]} classes; "
                           f"predict labels ImageNet's 1000")
    preprocessing = args.preprocessing or preprocessing
    random = args.weights == RANDOM_WEIGHTS
    if random:
        err(f"multinet predict: warning: {spec.name} has RANDOM weights (-w random): the "
             f"labels below mean nothing; use -w imagenet or a weights file for real ones")
    height, width = spatial(model)
    options = image_options(preprocessing, height)
    if height != width:
        options = {"target_size": (height, width)}
    forward = backend.compile_inference(model)
    results = []
    show = len(args.images) > args.batch_size and (sys.stderr.isatty() or not args.json)
    with _progress(len(args.images), show) as progress:
        for start in range(0, len(args.images), args.batch_size):
            paths = args.images[start:start + args.batch_size]
            batch = np.stack([multinet.load_image(p, data_format=data_format, **options)
                              for p in paths])
            batch = multinet.preprocess_input(batch, preprocessing, data_format=data_format)
            preds = keras.ops.convert_to_numpy(forward(batch))
            for path, top in zip(paths, multinet.decode_predictions(preds, top=args.top)):
                results.append({"image": path, "top": [
                    {"rank": rank, "wnid": wnid, "label": label, "score": score}
                    for rank, (wnid, label, score) in enumerate(top, start=1)]})
            progress(start + len(paths))
    if args.json:
        print_json({
            "model": spec.name, "weights": args.weights, "random_weights": random,
            "preprocessing": preprocessing, "input_size": [height, width],
            "data_format": data_format, "backend": backend.name(), "predictions": results,
        })
        return 0
    print(f"{spec.name} with {source}, {preprocessing} preprocessing, {height}x{width}, "
          f"{backend.name()} {data_format}")
    for item in results:
        print(item["image"])
        for row in item["top"]:
            print(f"  {row['rank']:>2}. {row['score']:7.2%}  {row['label']} ({row['wnid']})")
    return 0
