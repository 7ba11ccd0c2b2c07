"""``multinet convert``: any weights layout to a verified Keras 3 .weights.h5."""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from multinet.cli.common import (
    IMAGENET_CLASSES,
    MULTINET_ATTRS,
    CommandError,
    compare_head,
    describe_weights_file,
    head_mismatch,
    human_size,
    model_spec,
    options_for,
    positive_int,
)


def add_parser(commands, parents):
    p = commands.add_parser(
        "convert", parents=parents, help="convert a weights file to Keras 3 .weights.h5",
        description="Read SRC in any layout multinet.load_weights reads (legacy Keras 1/2 "
                    "HDF5, Keras 3 .weights.h5 or .keras, torchvision .pth or .safetensors), "
                    "write DST as a Keras 3 .weights.h5 file that plain "
                    "model.load_weights() reads, then verify it: a fresh model loaded from "
                    "DST must give the same outputs as the source on a random batch. SRC is "
                    "read, and checked to fit the model, before the model is built.",
        epilog="A classifier whose class count is not the model's (a fine-tuned file) is "
               "an error, never dropped silently: pass --classes N to convert it with its "
               "classifier, or --no-include-top to convert it without.")
    p.add_argument("src", metavar="SRC", help="the weights file to read")
    p.add_argument("dst", metavar="DST", help="the file to write; must end in .weights.h5")
    p.add_argument("-m", "--model", required=True, metavar="NAME", help="model name")
    p.add_argument("--include-top", action=argparse.BooleanOptionalAction, default=None,
                   help="convert the file's classifier (--include-top: it must have one) or "
                        "leave it out (--no-include-top; a '_notop' file needs nothing); "
                        "default: convert it if the file has one")
    p.add_argument("--classes", type=positive_int, default=None, metavar="N",
                   help="the class count of the file's classifier, for a fine-tuned file "
                        f"(default: {IMAGENET_CLASSES}, or what DST-style files record)")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.set_defaults(handler=run)


def _source_labels(model, path) -> dict:
    """{model layer: name in the file} as the loader matched them, where it says."""
    from multinet.weights.loader import read_source

    try:
        return dict(read_source(path, model).labels)
    except Exception:  # noqa: BLE001  (labels only decorate the report)
        return {}


def _build(spec, info, include_top: bool, classes: int):
    import multinet
    from multinet.layers import image_shape

    size = info["input_size"] or spec.fixed_top_size or spec.default_size
    return multinet.create_model(
        spec.name, include_top=include_top, classes=classes if include_top else 1000,
        input_shape=image_shape(size, "channels_last") if include_top else None,
        data_format="channels_last", **options_for(spec, info["arch_options"]))


def _load(spec, src, info, include_top, classes):
    """(model, report): ``spec``'s model with ``src`` loaded. Without
    ``--include-top``/``--no-include-top`` a file without a classifier is
    converted without one; a classifier whose class count is not the model's
    is an error that says what to pass."""
    import multinet
    from multinet.weights import WeightsLoadError

    if include_top is False:
        model = _build(spec, info, False, classes)
        return model, multinet.load_weights(model, src)
    model = _build(spec, info, True, classes)
    try:
        return model, multinet.load_weights(model, src)
    except WeightsLoadError as error:
        head = compare_head(spec, model, src)
        if head_mismatch(head):
            raise CommandError(
                f"{spec.name}: the classifier {head['label']} in {src} has "
                f"{head['file_classes']} classes, the model's has {head['model_classes']} "
                f"(file {head['file_shapes']}; model {head['model_shapes']}); pass --classes "
                f"{head['file_classes']} to convert the fine-tuned file with its classifier, "
                f"or --no-include-top to convert it without") from error
        if head["present"] or head["layer"] is None:
            raise
        if include_top:
            raise CommandError(
                f"{spec.name}: {src} has no classifier ({head['layer']} is not in it); leave "
                f"out --include-top to convert it without one") from error
    model = _build(spec, info, False, classes)  # a file without a classifier ('_notop')
    return model, multinet.load_weights(model, src)


def run(args) -> int:
    import h5py

    import multinet

    spec = model_spec(args.model)
    src, dst = args.src, args.dst
    if args.classes is not None and args.include_top is False:
        raise CommandError("--classes sets the classifier's class count; --no-include-top "
                           "leaves the classifier out: pass one of them")
    if not dst.endswith(".weights.h5"):
        raise CommandError(f"DST must end in .weights.h5 (Keras 3 weights file), got {dst!r}")
    if os.path.exists(dst) and not args.force:
        raise CommandError(f"{dst} exists; pass --force to overwrite it")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise CommandError("SRC and DST are the same file")
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise CommandError(f"the folder of DST does not exist: {folder}")
    info = describe_weights_file(spec, src)  # before the model is built
    classes = args.classes or info["classes"] or IMAGENET_CLASSES
    model, report = _load(spec, src, info, args.include_top, classes)
    include_top = any(n in report.loaded for n in spec.family.head_layers)
    labels = _source_labels(model, src)
    top = f"include_top=True, classes={classes}" if include_top else "include_top=False"
    print(f"read {src}: {info['layout']} layout, {len(report.loaded)} layers, "
          f"{report.num_values:,} values -> {spec.name} ({top})")
    for name in report.loaded:
        layer = model.get_layer(name)
        shapes = ", ".join(str(tuple(v.shape)) for v in layer.weights)
        origin = labels.get(name)
        mapped = f"{origin} -> {name}" if origin and origin != name else name
        print(f"  {mapped:<48} {shapes}")
    for name, why in report.skipped.items():
        print(f"  skipped {name}: {why}")

    fd, staging = tempfile.mkstemp(prefix=".convert-", suffix=".weights.h5", dir=folder)
    os.close(fd)
    try:
        model.save_weights(staging, overwrite=True)
        meta = {"model": spec.name, "include_top": include_top,
                "classes": classes if include_top else None,
                "arch_options": options_for(spec, info["arch_options"]),
                "preprocessing": info["preprocessing"], "input_size": info["input_size"],
                "resize_size": info["resize_size"], "interpolation": info["interpolation"],
                "source_layout": info["layout"], "source": os.path.basename(src),
                "multinet_version": multinet.__version__}
        with h5py.File(staging, "a") as h5file:
            h5file.attrs[MULTINET_ATTRS] = json.dumps(meta)
        difference = verify_conversion(spec, model, staging, info, include_top, classes)
        os.replace(staging, dst)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
    print(f"wrote {dst} ({human_size(os.path.getsize(dst))}); verified: a fresh {spec.name} "
          f"loaded with keras load_weights gives the same outputs on a random batch "
          f"(max difference {difference:.1e})")
    return 0


def verify_conversion(spec, model, path, info, include_top, classes=IMAGENET_CLASSES) -> float:
    """Load ``path`` into a fresh model with Keras' own ``load_weights``; compare outputs."""
    import keras
    import numpy as np

    fresh = _build(spec, info, include_top, classes)
    fresh.load_weights(path)
    size = info["input_size"] or spec.fixed_top_size or spec.default_size
    check_size = size if include_top else max(spec.min_size, min(size, 64))
    x = np.random.default_rng(0).uniform(0, 1, (2, check_size, check_size, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    got = keras.ops.convert_to_numpy(fresh(x, training=False))
    difference = float(np.max(np.abs(expected - got)))
    if not difference <= 1e-6 * max(1.0, float(np.max(np.abs(expected)))):
        raise CommandError(f"verification failed: the converted weights give outputs that "
                           f"differ by up to {difference:.3g}")
    return difference
