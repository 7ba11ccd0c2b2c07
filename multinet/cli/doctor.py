"""``multinet doctor``: check this installation."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import multinet
from multinet import backend_select
from multinet.cli.common import err, human_size


def add_parser(commands, parents):
    p = commands.add_parser(
        "doctor", parents=parents, help="check this installation",
        description="Versions, installed backends, devices, the data format in force and "
                    "where it comes from, the weights cache; then a self-check that a model "
                    "gives the same outputs in both data formats. Exits 1 if a check fails.")
    p.set_defaults(handler=run)


def self_check_model() -> str:
    """The model the self-check builds: the registry's smallest."""
    return min(multinet.list_models(), key=lambda n: multinet.get_model_spec(n).num_params)


def self_check(name: str | None = None, size: int = 64) -> tuple[bool, float, str]:
    """A registered model (the smallest) computing in channels_last and in
    channels_first, weights copied across: (outputs agree, max difference,
    what was compared) on a random batch."""
    import keras
    import numpy as np

    from multinet.layers import image_shape

    spec = multinet.get_model_spec(name or self_check_model())
    size = max(size, spec.min_size)
    # A classifier that takes one input size only is left out at other sizes.
    top = spec.fixed_top_size in (None, size)
    models = [multinet.create_model(spec.name, data_format=fmt, compute_format=fmt,
                                    include_top=top, input_shape=image_shape(size, fmt))
              for fmt in ("channels_last", "channels_first")]
    models[1].set_weights(models[0].get_weights())
    x = np.random.default_rng(0).uniform(0, 1, (2, size, size, 3)).astype("float32")
    a = keras.ops.convert_to_numpy(models[0](x, training=False))
    b = keras.ops.convert_to_numpy(models[1](np.transpose(x, (0, 3, 1, 2)), training=False))
    if not top:  # feature maps: compare in one layout
        b = np.transpose(b, (0, 2, 3, 1))
    difference = float(np.max(np.abs(a - b)))
    what = f"{spec.name} at {size}x{size}" + ("" if top else " without its top")
    return bool(np.isfinite(difference) and difference < 1e-4), difference, what


def run(args) -> int:
    import keras

    from multinet import backend
    from multinet.weights import cache_dir

    choice = backend_select.CHOICE or backend_select.resolve()
    inference_only = "" if backend.can_train() else ", inference only"
    rows = [
        ("multinet", f"{multinet.__version__} ({Path(multinet.__file__).parent})"),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("keras", keras.__version__),
        ("backend", f"{backend.name()} {backend.framework_version()} "
                    f"(from {choice.describe_source()}{inference_only})"),
    ]
    installed = backend_select.installed_backends(backend_select.PREDICT_BACKENDS)
    rows.append(("installed", ", ".join(
        (f"{name} {version}" if version else f"{name} (not installed)")
        + ("" if backend.can_train(name) or not version else " (inference only)")
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
            content += f", {human_size(sum(p.stat().st_size for p in files))}"
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
        print(f"  {p.name:<56} {human_size(p.stat().st_size):>10}  "
              f"{', '.join(known.get(p.name, ['not a multinet weights file']))}")
    ok, difference, what = self_check()
    verdict = "PASS" if ok else "FAIL"
    print(f"self-check    {what} computing in channels_last and in channels_first, weights "
          f"copied across: max output difference {difference:.1e}: {verdict}")
    if not ok:
        err(f"multinet doctor: error: self-check failed: outputs differ by {difference:.3g} "
            f"between data formats")
        return 1
    return 0
