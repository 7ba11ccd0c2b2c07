"""``multinet convert``: any weights layout to a verified Keras 3 .weights.h5."""

from __future__ import annotations

import json
import os
import tempfile

import keras
import numpy as np

import multinet
from multinet.cli.common import (
    MULTINET_ATTRS,
    CommandError,
    describe_weights_file,
    human_size,
    model_spec,
    options_for,
)
from multinet.layers import image_shape


def add_parser(commands, parents):
    p = commands.add_parser(
        "convert", parents=parents, help="convert a weights file to Keras 3 .weights.h5",
        description="Read SRC in any layout multinet.load_weights reads (legacy Keras 1/2 "
                    "HDF5, Keras 3 .weights.h5 or .keras, torchvision .pth or .safetensors), "
                    "write DST as a Keras 3 .weights.h5 file that plain "
                    "model.load_weights() reads, then verify it: a fresh model loaded from "
                    "DST must give the same outputs as the source on a random batch.")
    p.add_argument("src", metavar="SRC", help="the weights file to read")
    p.add_argument("dst", metavar="DST", help="the file to write; must end in .weights.h5")
    p.add_argument("-m", "--model", required=True, metavar="NAME", help="model name")
    p.add_argument("--top", dest="include_top", action="store_true", default=None,
                   help="the file has the classifier (default: detected)")
    p.add_argument("--no-top", dest="include_top", action="store_false",
                   help="the file has no classifier (a '_notop' file)")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.set_defaults(handler=run)


def _source_labels(model, path) -> dict:
    """{model layer: name in the file} as the loader matched them, where it says."""
    try:
        from multinet.weights import loader

        return dict(loader._read_path(path, model).labels)
    except Exception:  # noqa: BLE001  (labels only decorate the report)
        return {}


def _load_any(spec, src, info, include_top):
    """(model, report): a model of the right kind with ``src`` loaded."""
    from multinet.weights import WeightsLoadError

    options = options_for(spec, info["arch_options"])
    size = info["input_size"] or spec.default_size
    tries = [include_top] if include_top is not None else [True, False]
    first_error = None
    for top in tries:
        model = multinet.create_model(
            spec.name, include_top=top,
            input_shape=image_shape(size, "channels_last") if top else None,
            data_format="channels_last", **options)
        try:
            return model, multinet.load_weights(model, src)
        except WeightsLoadError as error:
            first_error = first_error or error
    raise first_error


def run(args) -> int:
    import h5py

    spec = model_spec(args.model)
    src, dst = args.src, args.dst
    if not dst.endswith(".weights.h5"):
        raise CommandError(f"DST must end in .weights.h5 (Keras 3 weights file), got {dst!r}")
    if os.path.exists(dst) and not args.force:
        raise CommandError(f"{dst} exists; pass --force to overwrite it")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise CommandError("SRC and DST are the same file")
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise CommandError(f"the folder of DST does not exist: {folder}")
    info = describe_weights_file(spec, src)
    model, report = _load_any(spec, src, info, args.include_top)
    include_top = any(n in report.loaded for n in spec.family.head_layers)
    labels = _source_labels(model, src)
    print(f"read {src}: {info['layout']} layout, {len(report.loaded)} layers, "
          f"{report.num_values:,} values -> {spec.name} (include_top={include_top})")
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
                "arch_options": options_for(spec, info["arch_options"]),
                "preprocessing": info["preprocessing"], "input_size": info["input_size"],
                "source_layout": info["layout"], "source": os.path.basename(src),
                "multinet_version": multinet.__version__}
        with h5py.File(staging, "a") as h5file:
            h5file.attrs[MULTINET_ATTRS] = json.dumps(meta)
        difference = verify_conversion(spec, model, staging, info, include_top)
        os.replace(staging, dst)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
    print(f"wrote {dst} ({human_size(os.path.getsize(dst))}); verified: a fresh {spec.name} "
          f"loaded with keras load_weights gives the same outputs on a random batch "
          f"(max difference {difference:.1e})")
    return 0


def verify_conversion(spec, model, path, info, include_top) -> float:
    """Load ``path`` into a fresh model with Keras' own ``load_weights``; compare outputs."""
    size = info["input_size"] or spec.default_size
    fresh = multinet.create_model(
        spec.name, include_top=include_top,
        input_shape=image_shape(size, "channels_last") if include_top else None,
        data_format="channels_last", **options_for(spec, info["arch_options"]))
    fresh.load_weights(path)
    check_size = size if include_top else max(spec.min_size, min(size, 64))
    x = np.random.default_rng(0).uniform(0, 1, (2, check_size, check_size, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    got = keras.ops.convert_to_numpy(fresh(x, training=False))
    difference = float(np.max(np.abs(expected - got)))
    if not difference <= 1e-6 * max(1.0, float(np.max(np.abs(expected)))):
        raise CommandError(f"verification failed: the converted weights give outputs that "
                           f"differ by up to {difference:.3g}")
    return difference
