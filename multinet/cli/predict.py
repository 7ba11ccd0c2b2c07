"""``multinet predict``: classify images."""

from __future__ import annotations

import contextlib
import os
import sys

from multinet.cli.common import (
    DATA_FORMATS,
    IMAGENET_CLASSES,
    PREPROCESSING_MODES,
    RANDOM_WEIGHTS,
    CommandError,
    compare_head,
    default_entry,
    describe_weights_file,
    err,
    head_mismatch,
    image_options_for,
    model_spec,
    one_line,
    options_for,
    positive_int,
    print_json,
    resolve_entry,
    top_k,
)


def add_parser(commands, parents):
    p = commands.add_parser(
        "predict", parents=parents, help="classify images",
        description="Classify images with an ImageNet model: the top K labels and scores per "
                    "image. Images are resized, cropped and scaled the way the weights were "
                    "published (the entry's resize and crop sizes, interpolation and "
                    "preprocessing; 'multinet info NAME' shows them). Any Pillow-readable "
                    "image works (RGBA, grayscale and palette images are converted to RGB). "
                    "With more images than the batch size, a progress bar goes to stderr "
                    "when it is a terminal.",
        epilog="WEIGHTS defaults to 'imagenet', the model's default pretrained entry "
               "(downloaded once into the cache, or read from it when MULTINET_OFFLINE=1). "
               "It can name another entry ('multinet info NAME' lists them), a weights file "
               "in any layout multinet reads, or 'random' for untrained weights (a warning "
               "says so; the labels then mean nothing). The weights are found, and a file "
               "read, before the model is built.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("-m", "--model", required=True, metavar="NAME", help="model name")
    p.add_argument("-w", "--weights", default="imagenet", metavar="WEIGHTS",
                   help="weights entry, file, or 'random' (default: imagenet)")
    p.add_argument("--top", type=top_k, default=5, metavar="K",
                   help="labels per image (default: 5)")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="images per forward pass (default: 8)")
    p.add_argument("--data-format", choices=DATA_FORMATS, default=None,
                   help="the model's data format (default: keras.config.image_data_format())")
    p.add_argument("--preprocessing", choices=PREPROCESSING_MODES, default=None,
                   help="override the input scaling (default: what the weights need)")
    p.add_argument("--json", action="store_true", help="write JSON to stdout")
    p.set_defaults(handler=run)


def _not_imagenet(what: str, classes: int) -> CommandError:
    return CommandError(f"{what} has {classes} classes; predict labels ImageNet's "
                        f"{IMAGENET_CLASSES}")


def _plan(spec, weights: str) -> dict:
    """Everything about the weights that can be known before the model is
    built: which entry or file, its preprocessing, input size and transform.
    A weights problem surfaces here, before the (slow) build."""
    if weights == RANDOM_WEIGHTS:
        entry = default_entry(spec)
        return {"entry": entry, "file": None, "info": None, "source": "RANDOM weights",
                "preprocessing": entry.preprocessing if entry else None,
                "size": entry.input_size if entry else spec.default_size}
    entry = resolve_entry(spec, weights)
    if entry is not None:
        if entry.classes != IMAGENET_CLASSES:
            raise _not_imagenet(f"{spec.name} with weights {entry.name!r}", entry.classes)
        return {"entry": entry, "file": None, "info": None,
                "source": f"weights {entry.name!r}", "preprocessing": entry.preprocessing,
                "size": entry.input_size}
    info = describe_weights_file(spec, weights)
    if info["classes"] not in (None, IMAGENET_CLASSES):
        raise _not_imagenet(f"weights file {weights} (converted with --classes "
                            f"{info['classes']})", info["classes"])
    return {"entry": info["entry"], "file": weights, "info": info,
            "source": f"weights file {weights} ({info['layout']})",
            "preprocessing": info["preprocessing"],
            "size": info["input_size"] or spec.fixed_top_size or spec.default_size}


def _build(spec, plan: dict, weights: str, data_format: str):
    """The model with its weights loaded."""
    import multinet
    from multinet.layers import image_shape
    from multinet.weights import WeightsLoadError

    if weights == RANDOM_WEIGHTS:
        return multinet.create_model(spec.name, data_format=data_format,
                                     input_shape=image_shape(plan["size"], data_format))
    if plan["file"] is None:  # an entry: create_model fetches it, then builds
        return multinet.create_model(spec.name, weights=weights, data_format=data_format)
    options = options_for(spec, plan["info"]["arch_options"])
    model = multinet.create_model(spec.name, data_format=data_format,
                                  input_shape=image_shape(plan["size"], data_format), **options)
    try:
        multinet.load_weights(model, plan["file"])
    except WeightsLoadError as error:
        head = compare_head(spec, model, plan["file"])
        if head_mismatch(head):
            raise _not_imagenet(f"the classifier {head['label']} in {plan['file']}",
                                head["file_classes"]) from error
        raise
    return model


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def _progress(total: int, show: bool):
    """A keras.utils.Progbar on stderr, or nothing."""
    if not show:
        yield lambda done: None
        return
    import keras

    bar = keras.utils.Progbar(total, unit_name="image")

    def update(done):
        with contextlib.redirect_stdout(sys.stderr):
            bar.update(done)

    yield update


def _check_images(paths) -> None:
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        if not os.path.exists(path):
            raise CommandError(f"image file not found: {path}")
        if not os.path.isfile(path):
            raise CommandError(f"image path is not a file: {path}")
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018  (the header is read)
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise CommandError(f"cannot read image {path}: {one_line(error)}") from None


def run(args) -> int:
    _check_images(args.images)  # before the model is built (or its weights downloaded)
    spec = model_spec(args.model)
    plan = _plan(spec, args.weights)

    import keras
    import numpy as np

    import multinet
    from multinet import backend
    from multinet.preprocessing import describe_image_options

    data_format = args.data_format or keras.config.image_data_format()
    model = _build(spec, plan, args.weights, data_format)
    if model.output_shape[-1] != IMAGENET_CLASSES:
        raise _not_imagenet(f"{spec.name} with {plan['source']}", model.output_shape[-1])
    preprocessing = args.preprocessing or plan["preprocessing"]
    if preprocessing is None:
        preprocessing = "torch"
        what = (f"{args.weights} does not say how its inputs were scaled" if plan["file"]
                else f"{spec.name} has no weights entry to say how inputs are scaled")
        err(f"multinet predict: warning: {what}; using {preprocessing!r} (pass "
            f"--preprocessing to choose)")
    random = args.weights == RANDOM_WEIGHTS
    if random:
        err(f"multinet predict: warning: {spec.name} has RANDOM weights (-w random): the "
            f"labels below mean nothing; use -w imagenet or a weights file for real ones")
    size = plan["size"]
    options = image_options_for(plan["entry"], plan["info"], size)
    forward = backend.compile_inference(model)
    results = []
    # Keras' bar writes terminal control codes: for a terminal only.
    show = len(args.images) > args.batch_size and _is_terminal(sys.stderr)
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
    transform = describe_image_options(options)
    if args.json:
        print_json({
            "model": spec.name, "weights": args.weights, "random_weights": random,
            "preprocessing": preprocessing, "input_size": [size, size],
            "resize_size": options["target_size"] if "crop" in options else None,
            "interpolation": options["interpolation"], "data_format": data_format,
            "backend": backend.name(), "predictions": results,
        })
        return 0
    print(f"{spec.name} with {plan['source']}, {preprocessing} preprocessing, {transform}, "
          f"{backend.name()} {data_format}")
    for item in results:
        print(item["image"])
        for row in item["top"]:
            print(f"  {row['rank']:>2}. {row['score']:7.2%}  {row['label']} ({row['wnid']})")
    return 0
