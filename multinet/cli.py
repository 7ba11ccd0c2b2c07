"""The ``multinet`` command: list, info, predict, convert, bench, doctor, demo.

Every subcommand runs on the Keras backend that ``KERAS_BACKEND`` selects.
Mistakes (a missing file, an unknown model, weights that do not fit, bad
options) end with one line on stderr and a non-zero exit status: 2 for bad
command-line usage, 1 for everything else. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import inspect
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np

import multinet
from multinet import backend, backend_select
from multinet.layers import image_shape
from multinet.registry import ModelSpec

RANDOM_WEIGHTS = "random"
# Arguments every builder takes; the rest of its signature are the family options.
_COMMON_BUILDER_ARGS = {
    "include_top", "input_tensor", "input_shape", "pooling", "classes",
    "classifier_activation", "data_format", "has_weights", "default_size", "name",
}
_MULTINET_ATTRS = "multinet_metadata"  # HDF5 root attribute written by `multinet convert`
_MAX_MESSAGE = 600


class CommandError(Exception):
    """A user mistake or an unmet condition: reported as one line, exit 1."""


# --- argument parsing -------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``multinet predict: error: ...``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _top_k(text: str) -> int:
    value = _positive_int(text)
    if value > 1000:
        raise argparse.ArgumentTypeError(f"expected 1 to 1000 (the ImageNet classes), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback when something fails")
    formats = backend.DATA_FORMATS

    parser = _Parser(
        prog="multinet",
        description="Models of the multinet library on the Keras backend that KERAS_BACKEND "
                    "selects (tensorflow, jax or torch).",
        epilog="Run 'multinet COMMAND --help' for a command's options. Environment: "
               "KERAS_BACKEND, KERAS_HOME (keras.json and the weights cache, default ~/.keras), "
               "MULTINET_OFFLINE=1 (never download), MULTINET_WEIGHTS_MIRROR=URL.",
        parents=[common],
    )
    parser.set_defaults(debug=False)
    parser.add_argument("--version", action="version",
                        version=f"multinet {multinet.__version__} (Keras {keras.__version__})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    p = commands.add_parser(
        "list", parents=[common], help="list the models",
        description="List the registered models: parameters, default input size and weights "
                    "entries ('*' marks the one '-w imagenet' picks).")
    p.add_argument("pattern", nargs="?", metavar="PATTERN",
                   help="shell-style wildcard ('vgg*'); without one, a substring of the name")
    p.add_argument("--json", action="store_true", help="write JSON to stdout")
    p.set_defaults(handler=cmd_list)

    p = commands.add_parser(
        "info", parents=[common], help="what one model is and which weights it has",
        description="Architecture facts of one model and its weights entries: origin URL, "
                    "hash, preprocessing, input size, and whether each is in the local cache.")
    p.add_argument("name", metavar="NAME", help="model name (see 'multinet list')")
    p.add_argument("--json", action="store_true", help="write JSON to stdout")
    p.set_defaults(handler=cmd_info)

    p = commands.add_parser(
        "predict", parents=[common], help="classify images",
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
    p.add_argument("--top", type=_top_k, default=5, metavar="K",
                   help="labels per image (default: 5)")
    p.add_argument("--batch-size", type=_positive_int, default=8, metavar="N",
                   help="images per forward pass (default: 8)")
    p.add_argument("--data-format", choices=formats, default=None,
                   help="the model's data format (default: keras.config.image_data_format())")
    p.add_argument("--preprocessing", choices=("caffe", "torch", "tf"), default=None,
                   help="override the input scaling (default: what the weights need)")
    p.add_argument("--json", action="store_true", help="write JSON to stdout")
    p.set_defaults(handler=cmd_predict)

    p = commands.add_parser(
        "convert", parents=[common], help="convert a weights file to Keras 3 .weights.h5",
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
    p.set_defaults(handler=cmd_convert)

    p = commands.add_parser(
        "bench", parents=[common], help="time one model on this backend",
        description="Inference (or training) throughput of one model with random weights on "
                    "the current backend, timed by multinet.benchmark.run_benchmark.")
    p.add_argument("-m", "--model", required=True, metavar="NAME", help="model name")
    p.add_argument("--batch-size", type=_positive_int, nargs="+", default=[1, 8],
                   metavar="N", help="one or more batch sizes (default: 1 8)")
    p.add_argument("--image-size", type=_positive_int, default=None, metavar="PX",
                   help="input height and width (default: the model's default size)")
    p.add_argument("--data-format", choices=formats, default=None,
                   help="default: keras.config.image_data_format()")
    p.add_argument("--task", choices=("inference", "train"), default="inference")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "mixed_bfloat16"),
                   default="float32")
    p.add_argument("--repeats", type=_positive_int, default=10, metavar="N",
                   help="timed calls per batch size (default: 10)")
    p.add_argument("--warmup", type=_positive_int, default=2, metavar="N",
                   help="untimed calls first (default: 2)")
    p.add_argument("--json", action="store_true", help="write the results as JSON to stdout")
    p.set_defaults(handler=cmd_bench)

    p = commands.add_parser(
        "doctor", parents=[common], help="check this installation",
        description="Versions, installed backends, devices, the data format in force and "
                    "where it comes from, the weights cache; then a self-check that a model "
                    "gives the same outputs in both data formats. Exits 1 if a check fails.")
    p.set_defaults(handler=cmd_doctor)

    p = commands.add_parser(
        "demo", parents=[common], help="the offline tutorial, start to finish",
        description="Runs offline on the current backend: (1) a one-neuron linear regression "
                    "learns y = 3x; (2) a SqueezeNet-style network of multinet Fire modules "
                    "learns the UCI handwritten digits (shipped, 1797 8x8 images) to >= 95%% "
                    "test accuracy; (3) a .weights.h5 save/load round trip; (4) squeezenet1_1 "
                    "classifies a cat photo (pretrained weights if cached); (5) speed in "
                    "each data format. Exits 1 if a check fails.")
    p.add_argument("--data-format", choices=formats, default=None,
                   help="default: keras.config.image_data_format()")
    p.add_argument("--epochs", type=_positive_int, default=None, metavar="N",
                   help="digits training epochs (default: 30)")
    p.add_argument("--quick", action="store_true",
                   help="shorter speed measurement (training is the same)")
    p.set_defaults(handler=cmd_demo)
    return parser


# --- helpers ----------------------------------------------------------------


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        cut = text[:limit].rsplit("; ", 1)[0]
        text = f"{cut}; ... (--debug shows the rest)"
    return text


def model_spec(name: str) -> ModelSpec:
    """The registered model ``name``, or a CommandError suggesting close names."""
    names = multinet.list_models()
    if name in names:
        return multinet.get_model_spec(name)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    close += [n for n in names if name and name.lower() in n and n not in close][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise CommandError(f"unknown model {name!r}{hint} ('multinet list' shows all {len(names)})")


def family_options(spec: ModelSpec) -> dict:
    """The family options of a model's builder and their defaults (``ceil_mode``...)."""
    options = {}
    for param in inspect.signature(spec.builder).parameters.values():
        if param.kind is param.KEYWORD_ONLY and param.name not in _COMMON_BUILDER_ARGS:
            options[param.name] = None if param.default is param.empty else param.default
    return options


def _spatial(model) -> tuple[int, int]:
    shape = model.input_shape
    channels_first = shape[1] == 3 and shape[-1] != 3
    return tuple(shape[2:4]) if channels_first else tuple(shape[1:3])


def _human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def _print_json(data) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _entry_label(spec: ModelSpec, entry) -> str:
    return entry.name + ("*" if entry.name == spec.default_weights else "")


# --- weights files ------------------------------------------------------------


def read_file_metadata(path) -> dict:
    """What ``multinet convert`` recorded in a .weights.h5 file, or {}."""
    import h5py

    try:
        with h5py.File(path, "r") as h5file:
            raw = h5file.attrs.get(_MULTINET_ATTRS)
    except (OSError, ValueError):
        return {}
    if raw is None:
        return {}
    try:
        data = json.loads(raw if isinstance(raw, str) else bytes(raw).decode())
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_weights_file(spec: ModelSpec, path: str) -> dict:
    """How to build ``spec``'s model for a weights file, from its content.

    Returns ``layout``, ``entry`` (the registry entry of that layout, if any),
    ``arch_options``, ``preprocessing`` and ``input_size`` (None if unknown).
    """
    from multinet.weights import detect_layout, inspect_source

    if not os.path.exists(path):
        raise CommandError(f"weights file not found: {path}")
    if not os.path.isfile(path):
        raise CommandError(f"weights path is not a file: {path}")
    try:
        layout = detect_layout(path)
        source_layout, names = inspect_source(path)
    except (ValueError, OSError) as error:
        raise CommandError(f"cannot read weights file {path}: {_one_line(error)}") from error
    entry = next((e for e in spec.weights if e.layout == source_layout), None)
    arch_options = spec.family.source_options(source_layout, names)
    info = {"layout": layout, "entry": entry, "arch_options": arch_options,
            "preprocessing": spec.family.preprocessing_for(source_layout, arch_options),
            "input_size": None}
    if entry is not None:
        info.update(preprocessing=entry.preprocessing, input_size=entry.input_size)
    if layout == "keras_v3":
        meta = read_file_metadata(path)
        if meta.get("model") not in (None, spec.name):
            raise CommandError(
                f"weights file {path} was converted for {meta['model']}, not {spec.name}")
        for key in ("arch_options", "preprocessing", "input_size"):
            if meta.get(key) is not None:
                info[key] = meta[key]
    return info


def _options_for(spec: ModelSpec, arch_options: dict) -> dict:
    known = family_options(spec)
    return {k: v for k, v in arch_options.items() if k in known}


# --- list, info ---------------------------------------------------------------


def cmd_list(args) -> int:
    names = multinet.list_models()
    if args.pattern:
        pattern = args.pattern if any(c in args.pattern for c in "*?[") else f"*{args.pattern}*"
        names = multinet.list_models(pattern)
        if not names:
            close = difflib.get_close_matches(args.pattern, multinet.list_models(), n=3,
                                              cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise CommandError(f"no model matches {args.pattern!r}{hint}")
    specs = [multinet.get_model_spec(n) for n in names]
    if args.json:
        _print_json([{
            "name": s.name, "family": s.family.name, "parameters": s.num_params,
            "default_size": s.default_size, "min_size": s.min_size,
            "weights": [w.name for w in s.weights], "default_weights": s.default_weights,
        } for s in specs])
        return 0
    rows = [[s.name, f"{s.num_params:,}", f"{s.default_size}x{s.default_size}",
             ", ".join(_entry_label(s, w) for w in s.weights) or "-"] for s in specs]
    print(_table(rows, ["name", "parameters", "input", "weights (* = imagenet)"]))
    return 0


def _entry_info(spec: ModelSpec, entry) -> dict:
    from multinet.weights import cache_dir, cached_path

    def file_info(url, file_hash, include_top):
        if url is None:
            return None
        path = cached_path(entry, include_top=include_top)
        return {
            "url": url,
            "hash": file_hash,
            "hash_algorithm": entry.hash_algorithm if file_hash else None,
            "cached": path is not None,
            "path": str(path or cache_dir() / url.rsplit("/", 1)[-1]),
            "size": path.stat().st_size if path else None,
        }

    return {
        "name": entry.name,
        "default": entry.name == spec.default_weights,
        "description": entry.description,
        "layout": entry.layout,
        "preprocessing": entry.preprocessing,
        "input_size": entry.input_size,
        "classes": entry.classes,
        "arch_options": dict(entry.arch_options),
        "file": file_info(entry.url, entry.file_hash, True),
        "notop_file": file_info(entry.notop_url, entry.notop_file_hash, False),
    }


def cmd_info(args) -> int:
    spec = model_spec(args.name)
    options = family_options(spec)
    data = {
        "name": spec.name,
        "description": spec.description,
        "family": spec.family.name,
        "parameters": spec.num_params,
        "default_size": spec.default_size,
        "min_size": spec.min_size,
        "options": options,
        "weights": [_entry_info(spec, e) for e in spec.weights],
    }
    if args.json:
        _print_json(data)
        return 0
    print(f"{spec.name}: {spec.description}")
    facts = [
        ("family", spec.family.name),
        ("parameters", f"{spec.num_params:,} (with the 1000-class top)"),
        ("default input", f"{spec.default_size}x{spec.default_size} RGB"),
        ("minimum input", f"{spec.min_size}x{spec.min_size}"),
        ("data formats", ", ".join(backend.DATA_FORMATS)),
        ("options", ", ".join(f"{k}={v!r}" for k, v in options.items()) or "-"),
    ]
    for key, value in facts:
        print(f"  {key:<15}{value}")
    print("weights:" if spec.weights else "weights: none published")
    for item in data["weights"]:
        alias = " (default: -w imagenet)" if item["default"] else ""
        print(f"  {item['name']}{alias}: {item['description']}")
        rows = [
            ("layout", item["layout"]),
            ("preprocessing", item["preprocessing"]),
            ("input size", f"{item['input_size']}x{item['input_size']}"),
            ("classes", item["classes"]),
            ("arch options", ", ".join(f"{k}={v!r}" for k, v in item["arch_options"].items())
             or "-"),
        ]
        for label, key in (("file", "file"), ("notop file", "notop_file")):
            f = item[key]
            if f is None:
                continue
            rows.append((label, f["url"]))
            check = (f"{f['hash_algorithm']} {f['hash']}"
                     + (" (prefix)" if f["hash_algorithm"] == "sha256" and len(f["hash"]) < 64
                        else "")) if f["hash"] else "none published"
            rows.append(("  hash", check))
            rows.append(("  cached", f"yes, {f['path']} ({_human_size(f['size'])})"
                         if f["cached"] else f"no (would be {f['path']})"))
        for label, value in rows:
            print(f"    {label:<15}{value}")
    return 0


# --- predict ------------------------------------------------------------------


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
        **_options_for(spec, info["arch_options"]))
    multinet.load_weights(model, weights)
    preprocessing = info["preprocessing"]
    if preprocessing is None:
        entry = spec.get_weights("imagenet") if spec.default_weights else None
        preprocessing = entry.preprocessing if entry else "torch"
        _err(f"multinet predict: warning: {weights} does not say how its inputs were scaled; "
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


def cmd_predict(args) -> int:
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
            raise CommandError(f"cannot read image {path}: {_one_line(error)}") from None
    spec = model_spec(args.model)
    data_format = args.data_format or keras.config.image_data_format()
    model, preprocessing, source = _build_for_predict(spec, args.weights, data_format)
    if model.output_shape[-1] != 1000:
        raise CommandError(f"{spec.name} with {source} has {model.output_shape[-1]} classes; "
                           f"predict labels ImageNet's 1000")
    preprocessing = args.preprocessing or preprocessing
    random = args.weights == RANDOM_WEIGHTS
    if random:
        _err(f"multinet predict: warning: {spec.name} has RANDOM weights (-w random): the "
             f"labels below mean nothing; use -w imagenet or a weights file for real ones")
    height, width = _spatial(model)
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
        _print_json({
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


# --- convert ------------------------------------------------------------------


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

    options = _options_for(spec, info["arch_options"])
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


def cmd_convert(args) -> int:
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
                "arch_options": _options_for(spec, info["arch_options"]),
                "preprocessing": info["preprocessing"], "input_size": info["input_size"],
                "source_layout": info["layout"], "source": os.path.basename(src),
                "multinet_version": multinet.__version__}
        with h5py.File(staging, "a") as h5file:
            h5file.attrs[_MULTINET_ATTRS] = json.dumps(meta)
        difference = verify_conversion(spec, model, staging, info, include_top)
        os.replace(staging, dst)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
    print(f"wrote {dst} ({_human_size(os.path.getsize(dst))}); verified: a fresh {spec.name} "
          f"loaded with keras load_weights gives the same outputs on a random batch "
          f"(max difference {difference:.1e})")
    return 0


def verify_conversion(spec, model, path, info, include_top) -> float:
    """Load ``path`` into a fresh model with Keras' own ``load_weights``; compare outputs."""
    size = info["input_size"] or spec.default_size
    fresh = multinet.create_model(
        spec.name, include_top=include_top,
        input_shape=image_shape(size, "channels_last") if include_top else None,
        data_format="channels_last", **_options_for(spec, info["arch_options"]))
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


# --- bench --------------------------------------------------------------------


def cmd_bench(args) -> int:
    from multinet.benchmark import run_benchmark

    spec = model_spec(args.model)
    size = args.image_size or spec.default_size
    if size < spec.min_size:
        raise CommandError(f"{spec.name} needs images of at least {spec.min_size}x"
                           f"{spec.min_size}, got --image-size {size}")
    results = []
    for batch_size in args.batch_size:
        kwargs = {}
        if spec.fixed_top_size and size != spec.fixed_top_size:
            kwargs["include_top"] = False
        result = run_benchmark(
            spec.name, batch_size=batch_size, image_size=size, data_format=args.data_format,
            task=args.task, dtype=args.dtype, warmup=args.warmup, repeats=args.repeats,
            **kwargs)
        results.append(result)
        if not args.json:
            if result["status"] != "ok":
                _err(f"multinet bench: batch {batch_size}: {result['status']}: "
                     f"{result.get('error', '')}")
                continue
            if len(results) == 1:
                print(f"{spec.name} {args.task}, {size}x{size}, {result['data_format']}, "
                      f"{args.dtype}, {result['backend']} {result['framework_version']} on "
                      f"{result['device']} ({result['cpu_count']} CPUs)")
                print(f"{'batch':>6}  {'img/s':>9}  {'q1..q3':>17}  {'ms/call':>9}  "
                      f"{'first call':>10}")
            print(f"{batch_size:>6}  {result['images_per_s']:>9.1f}  "
                  f"{result['images_per_s_q1']:>8.1f}..{result['images_per_s_q3']:<8.1f}  "
                  f"{1000 * result['seconds_per_call_median']:>9.1f}  "
                  f"{result['first_call_s']:>9.2f}s")
    if args.json:
        _print_json(results)
    failed = [r for r in results if r["status"] != "ok"]
    if failed:
        if args.json:
            _err(f"multinet bench: {len(failed)} of {len(results)} configurations failed")
        return 1
    return 0


# --- doctor -------------------------------------------------------------------


def self_check(size: int = 64) -> tuple[bool, float]:
    """squeezenet1_1 computing in channels_last and in channels_first, weights
    copied across: (outputs agree, max difference) on a random batch."""
    last = multinet.create_model("squeezenet1_1", data_format="channels_last",
                                 compute_format="channels_last",
                                 input_shape=image_shape(size, "channels_last"))
    first = multinet.create_model("squeezenet1_1", data_format="channels_first",
                                  compute_format="channels_first",
                                  input_shape=image_shape(size, "channels_first"))
    first.set_weights(last.get_weights())
    x = np.random.default_rng(0).uniform(0, 1, (2, size, size, 3)).astype("float32")
    a = keras.ops.convert_to_numpy(last(x, training=False))
    b = keras.ops.convert_to_numpy(first(np.transpose(x, (0, 3, 1, 2)), training=False))
    difference = float(np.max(np.abs(a - b)))
    return bool(np.isfinite(difference) and difference < 1e-4), difference


def cmd_doctor(args) -> int:
    from multinet.weights import cache_dir

    choice = backend_select.CHOICE or backend_select.resolve()
    rows = [
        ("multinet", f"{multinet.__version__} ({Path(multinet.__file__).parent})"),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("keras", keras.__version__),
        ("backend", f"{backend.name()} {backend.framework_version()} "
                    f"(from {choice.describe_source()})"),
    ]
    installed = backend_select.installed_backends()
    rows.append(("installed", ", ".join(
        f"{name} {version}" if version else f"{name} (not installed)"
        for name, version in installed.items())))
    gpus = backend.gpu_devices()
    rows.append(("devices", ", ".join(f"GPU {g}" for g in gpus) if gpus else
                 f"CPU only: {os.cpu_count()} cores ({platform.machine()})"))
    path = backend_select.keras_json_path()
    config = backend_select.read_keras_json(path)
    fmt = keras.config.image_data_format()
    if config and "image_data_format" in config:
        origin = str(path)
    else:
        origin = f"default; no image_data_format in {path}"
    rows.append(("data format", f"{fmt} (from {origin})"))
    folder = cache_dir()
    files = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    if not folder.is_dir():
        content = "not created yet"
    else:
        content = f"{len(files)} file{'s' * (len(files) != 1)}"
        if files:
            content += f", {_human_size(sum(p.stat().st_size for p in files))}"
    rows.append(("weights cache", f"{folder} ({content})"))
    known = {}
    for name in multinet.list_models():
        spec = multinet.get_model_spec(name)
        for entry in spec.weights:
            for url in (entry.url, entry.notop_url):
                if url:
                    known.setdefault(url.rsplit("/", 1)[-1], []).append(f"{name}/{entry.name}")
    for key, value in rows:
        print(f"{key:<14}{value}")
    for p in files:
        print(f"  {p.name:<56} {_human_size(p.stat().st_size):>10}  "
              f"{', '.join(known.get(p.name, ['not a multinet weights file']))}")
    ok, difference = self_check()
    verdict = "PASS" if ok else "FAIL"
    print(f"self-check    squeezenet1_1 at 64x64 computing in channels_last and in "
          f"channels_first, weights copied across: max output difference {difference:.1e}: "
          f"{verdict}")
    if not ok:
        _err(f"multinet doctor: error: self-check failed: outputs differ by {difference:.3g} "
             f"between data formats")
        return 1
    return 0


# --- demo ---------------------------------------------------------------------


def cmd_demo(args) -> int:
    from multinet import demo

    kwargs = {"data_format": args.data_format, "quick": args.quick}
    if args.epochs:
        kwargs["epochs"] = args.epochs
    try:
        demo.run_demo(**kwargs)
    except demo.DemoCheckFailed as error:
        raise CommandError(f"demo check failed: {error}") from error
    return 0


# --- entry point --------------------------------------------------------------


def main(argv=None) -> int:
    """Run the ``multinet`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"multinet {args.command}"
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        _err(f"{prog}: interrupted")
        return 130
    except BrokenPipeError:  # the reader went away (`multinet list | head -1`)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as error:
        if args.debug:
            raise
        expected = isinstance(error, (CommandError, ValueError, OSError, ImportError))
        message = _one_line(error) or type(error).__name__
        message = message.replace("weights=PATH", "-w PATH")
        if type(error).__name__ == "WeightsLoadError" and "cannot load" in message:
            message += " (is the file made for another model?)"
        if not expected:
            message = f"{type(error).__name__}: {message} (--debug shows the traceback)"
        _err(f"{prog}: error: {message}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
