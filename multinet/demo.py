"""``multinet demo``: the classic Keras tutorial, offline, on the backend in use.

1. Fit a one-neuron linear regression to y = 3x + noise until w is about 3.
2. Train a small SqueezeNet-style classifier, built from multinet's own
   ``Conv2D``, ``MaxPooling2D(ceil_mode=True)`` and ``fire_module``, on the
   UCI handwritten digits shipped in ``multinet/data`` (8x8, 1797 images) to
   at least 95% test accuracy.
3. Save its weights to a Keras 3 ``.weights.h5`` file, load them into a fresh
   model, and check that the predictions are identical.
4. Classify ``multinet/data/cat.jpg`` with a registered model (squeezenet1_1
   unless told otherwise): with pretrained weights if the cache holds any of
   its entries, otherwise with random weights, and say so.
5. Time the digits model in each data format (the weights copied across, the
   outputs compared).

Nothing is downloaded. ``run_demo`` returns a dict of the measured results
(``w`` and ``b`` of step 1, ``accuracy``, ...). Training shows one Keras progress
bar for all its epochs on a terminal, and a few plain lines (no terminal control
codes) when the output goes elsewhere.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import sys
import tempfile
import time
from importlib import resources

import keras
import numpy as np

from multinet import backend, layers
from multinet.models.squeezenet import fire_module
from multinet.weights.download import ENV_OFFLINE

SEED = 1337
DEFAULT_MODEL = "squeezenet1_1"
DEFAULT_EPOCHS = 30
PROGRESS_LINES = 6  # epoch lines when the output is not a terminal (and the last epoch)
BATCH_SIZE = 32
ACCURACY_BAR = 0.95
TEST_FRACTION = 0.25


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The UCI handwritten digits: images (1797, 8, 8) float32 in [0, 1], labels (1797,)."""
    with resources.files("multinet").joinpath("data", "digits.csv.gz").open("rb") as raw:
        table = np.loadtxt(gzip.open(raw, "rt"), delimiter=",", dtype=np.int64)
    images = (table[:, :64] / 16.0).astype("float32").reshape(-1, 8, 8)
    return images, table[:, 64]


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
    """Train and test indices with each class split in the same proportion."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(index) * test_fraction))
        test.append(index[:n_test])
        train.append(index[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def digits_model(data_format: str | None = None, compute_format: str | None = None
                 ) -> keras.Model:
    """A small SqueezeNet-style digits classifier from multinet's building blocks.

    It takes 8x8 images in ``data_format`` and computes in ``compute_format``
    (None: the backend's fastest, see ``backend.preferred_compute_format``).
    """
    fmt = layers.standardize_data_format(data_format)
    inner = layers.resolve_compute_format(compute_format)
    shape = (1, 8, 8) if fmt == backend.CHANNELS_FIRST else (8, 8, 1)
    inputs = keras.Input(shape=shape, name="digits")
    x = layers.to_data_format(inputs, fmt, inner, name="to_" + inner)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", data_format=inner,
                      name="conv1")(x)
    x = fire_module(x, 2, 16, 32, inner)
    # 8x8 -> 4x4: with ceil_mode a 3x3/2 window covers the last row and column.
    x = layers.MaxPooling2D(3, strides=2, ceil_mode=True, data_format=inner, name="pool2")(x)
    x = fire_module(x, 3, 32, 64, inner)
    x = keras.layers.GlobalAveragePooling2D(data_format=inner, name="avg_pool")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="digits_squeezenet")


def to_model_input(images: np.ndarray, data_format: str) -> np.ndarray:
    axis = 1 if data_format == backend.CHANNELS_FIRST else -1
    return np.expand_dims(images, axis)


class DemoCheckFailed(RuntimeError):
    """A demo step did not reach its bar."""


class _Printer:
    def __init__(self, stream):
        self.stream = stream

    def __call__(self, *parts):
        print(*parts, file=self.stream, flush=True)

    def step(self, number, title):
        self(f"\n[{number}/5] {title}")


def linear_regression(say, verbose) -> tuple[float, float]:
    """Fit y = 3x + noise with one Dense neuron; returns the learned (w, b)."""
    rng = np.random.default_rng(SEED)
    x = rng.uniform(-1.0, 1.0, size=(256, 1)).astype("float32")
    y = (3.0 * x + rng.normal(0.0, 0.1, size=x.shape)).astype("float32")
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, name="neuron")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    epochs = 0
    while epochs < 50:
        model.fit(x, y, epochs=10, batch_size=32, verbose=verbose)
        epochs += 10
        w, b = (float(np.ravel(v)[0]) for v in model.get_layer("neuron").get_weights())
        if abs(w - 3.0) < 0.05:
            break
    say(f"    learned w = {w:.3f}, b = {b:+.3f} (true: w = 3, b = 0) after {epochs} epochs "
        f"of SGD on {len(x)} points")
    return w, b


class TrainingBar(keras.callbacks.Callback):
    """One ``keras.utils.Progbar`` for the whole training, advanced per epoch,
    with the epoch's loss and accuracy (for a terminal)."""

    def on_train_begin(self, logs=None):
        self.bar = keras.utils.Progbar(self.params["epochs"], unit_name="epoch",
                                       stateful_metrics=["loss", "accuracy"])

    def on_epoch_end(self, epoch, logs=None):
        values = [(k, float(v)) for k, v in (logs or {}).items() if k in ("loss", "accuracy")]
        self.bar.update(epoch + 1, values=values)


class EpochLines(keras.callbacks.Callback):
    """A plain line every few epochs and at the last one: epoch, loss, accuracy
    (for output that is not a terminal: a file, a pipe, a log)."""

    def __init__(self, say, lines: int = PROGRESS_LINES):
        super().__init__()
        self.say = say
        self.lines = lines

    def on_epoch_end(self, epoch, logs=None):
        epochs = self.params["epochs"]
        every = max(1, -(-epochs // self.lines))
        if (epoch + 1) % every and epoch + 1 != epochs:
            return
        logs = logs or {}
        self.say(f"    epoch {epoch + 1:>{len(str(epochs))}}/{epochs}: "
                 f"loss {float(logs.get('loss', float('nan'))):.4f}, "
                 f"accuracy {float(logs.get('accuracy', float('nan'))):.2%}")


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def _offline():
    previous = os.environ.get(ENV_OFFLINE)
    os.environ[ENV_OFFLINE] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[ENV_OFFLINE]
        else:
            os.environ[ENV_OFFLINE] = previous


def classify_cat(say, fmt: str, model_name: str = DEFAULT_MODEL) -> dict:
    """A registered model on the shipped cat photo: with the first of its
    pretrained weights entries found in the cache (the default one first),
    else random weights. The image is resized, cropped and scaled as the
    entry says (``WeightsSpec``: input size, resize size, interpolation,
    preprocessing)."""
    import multinet
    from multinet.preprocessing import image_options
    from multinet.weights import WeightsLoadError, WeightsUnavailableError, cache_dir, cached_path

    spec = multinet.get_model_spec(model_name)
    name = spec.name
    default = spec.get_weights("imagenet") if spec.default_weights else None
    entries = ([default] if default else []) + [e for e in spec.weights if e is not default]
    model, entry, problems = None, default, []
    with _offline():
        for candidate in entries:
            if cached_path(candidate) is None:
                continue
            try:
                model = multinet.create_model(name, weights=candidate.name, data_format=fmt)
            except (WeightsUnavailableError, WeightsLoadError) as error:
                problems.append(f"{candidate.filename}: {' '.join(str(error).split())}")
                continue
            entry = candidate
            break
    pretrained = model is not None
    if pretrained:
        say(f"    {name} with its pretrained {entry.name!r} weights ({entry.description}), "
            f"read from the cache {cache_dir()}:")
    else:
        size = entry.input_size if entry else spec.default_size
        model = multinet.create_model(name, data_format=fmt,
                                      input_shape=layers.image_shape(size, fmt))
        if entry is None:
            say(f"    {name} has no published weights.")
        else:
            say(f"    No pretrained {name} weights are available offline: {entry.filename} "
                f"is not in {cache_dir()}" + (" or is not the published file" if problems
                                              else "") + ".")
            say(f"    To get them, run once with network access: multinet predict IMAGE -m "
                f"{name} -w imagenet; or download {entry.url} into that folder.")
        say("    With RANDOM weights instead, the labels below mean nothing:")
    if entry is not None:
        options = image_options(entry.input_size, entry.resize_size, entry.interpolation)
        preprocessing = entry.preprocessing
    else:
        options, preprocessing = image_options(spec.default_size), "torch"
    path = str(resources.files("multinet").joinpath("data", "cat.jpg"))
    image = multinet.load_image(path, data_format=fmt, **options)
    batch = multinet.preprocess_input(image[None], preprocessing, data_format=fmt)
    preds = keras.ops.convert_to_numpy(model.predict_on_batch(batch))
    top = multinet.decode_predictions(preds, top=3)[0]
    for _, label, score in top:
        say(f"      {score:7.2%}  {label}")
    return {"model": name, "pretrained": pretrained,
            "weights": entry.name if pretrained else None,
            "top": [(label, float(p)) for _, label, p in top]}


def images_per_second(forward, x, repeats: int) -> float:
    """Median throughput of ``forward(x)``, timed by multinet.benchmark's loop."""
    from multinet.benchmark import time_callable

    timing = time_callable(lambda: forward(x), items=len(x), warmup=2, repeats=repeats,
                           sync=backend.block_until_ready)
    return timing["images_per_s"]


def _progress(say, verbose, stream) -> tuple[int, list]:
    """``fit``'s ``verbose`` and callbacks: ``"auto"`` is one progress bar on a
    terminal and a few plain lines elsewhere; 0, 1 and 2 are Keras' own."""
    if verbose != "auto":
        return verbose, []
    return 0, [TrainingBar() if _is_terminal(stream) else EpochLines(say)]


def train_digits(say, fmt: str, epochs: int, verbose, stream=None
                 ) -> tuple[keras.Model, dict]:
    images, labels = load_digits()
    train, test = stratified_split(labels, TEST_FRACTION, SEED)
    x = to_model_input(images, fmt)
    say(f"    UCI handwritten digits, 8x8: {len(train)} training and {len(test)} test images "
        f"(stratified split, seed {SEED})")
    model = digits_model(fmt)
    say(f"    {model.name}: conv1, fire2, pool2 (ceil_mode), fire3, global average pool, "
        f"dense; {model.count_params():,} parameters")
    # Adam with a cosine-decayed step: fast at first, settled at the end.
    steps = epochs * -(-len(train) // BATCH_SIZE)
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=steps)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    verbose, callbacks = _progress(say, verbose, stream or sys.stdout)
    model.fit(x[train], labels[train], batch_size=BATCH_SIZE, epochs=epochs, verbose=verbose,
              callbacks=callbacks)
    _, accuracy = model.evaluate(x[test], labels[test], batch_size=256, verbose=0)
    say(f"    test accuracy: {accuracy:.2%} on {len(test)} images never seen in training "
        f"(bar: {ACCURACY_BAR:.0%})")
    return model, {"x_test": x[test], "images": images, "accuracy": float(accuracy)}


def round_trip(say, model: keras.Model, fmt: str, x_test: np.ndarray) -> bool:
    expected = model.predict(x_test, batch_size=256, verbose=0)
    with tempfile.TemporaryDirectory(prefix="multinet-demo-") as folder:
        path = os.path.join(folder, "digits.weights.h5")
        model.save_weights(path)
        size = os.path.getsize(path)
        fresh = digits_model(fmt)
        fresh.load_weights(path)
    got = fresh.predict(x_test, batch_size=256, verbose=0)
    identical = bool(np.array_equal(expected, got))
    say(f"    saved {size / 1024:.0f} KiB to digits.weights.h5 and loaded it into a fresh "
        f"model: predictions {'identical' if identical else 'DIFFERENT'} on all "
        f"{len(x_test)} test images")
    return identical


def speed_by_format(say, model: keras.Model, images: np.ndarray, quick: bool) -> dict:
    """Throughput of copies of ``model`` computing in each data format."""
    batch = images[:256] if quick else np.concatenate([images, images])[:2048]
    rates, reference = {}, None
    for fmt in backend.DATA_FORMATS:
        twin = digits_model(fmt, compute_format=fmt)
        twin.set_weights(model.get_weights())
        forward = backend.compile_inference(twin)
        x = backend.to_device(to_model_input(batch, fmt))
        out = keras.ops.convert_to_numpy(forward(x))
        reference = out if reference is None else reference
        diff = float(np.max(np.abs(out - reference)))
        rates[fmt] = images_per_second(forward, x, repeats=3 if quick else 10)
        say(f"    {fmt:<15} {rates[fmt]:9,.0f} img/s  (batch {len(batch)}; outputs differ from "
            f"{backend.DATA_FORMATS[0]} by at most {diff:.1e})")
        if diff > 1e-4:
            raise RuntimeError(f"{fmt} outputs differ from {backend.DATA_FORMATS[0]} by {diff:.1e}")
    return rates


def run_demo(data_format: str | None = None, *, epochs: int = DEFAULT_EPOCHS,
             quick: bool = False, model_name: str = DEFAULT_MODEL, verbose="auto",
             stream=None) -> dict:
    """Run the five steps and return what they measured.

    ``quick`` times fewer and smaller batches in step 5; training is the same.
    ``model_name`` is the registered model that classifies the cat in step 4.
    ``verbose="auto"`` shows training as one progress bar on a terminal and as
    a few plain lines elsewhere; 0, 1 and 2 are passed to Keras' ``fit``.
    Raises ``DemoCheckFailed`` if a check fails (w not near 3, accuracy under
    95%, predictions changed by a save/load round trip, formats disagree).
    """
    say = _Printer(stream or sys.stdout)
    fmt = layers.standardize_data_format(data_format)
    keras.utils.set_random_seed(SEED)
    start = time.perf_counter()
    results = {"backend": backend.name(), "data_format": fmt}
    say(f"multinet demo: Keras {keras.__version__}, backend {backend.name()} "
        f"{backend.framework_version()}, data format {fmt}")

    # The digits network is tiny: one thread per operation is fastest.
    with backend.limit_threads(1):
        say.step(1, "Linear regression: one neuron learns y = 3x + noise")
        w, results["b"] = linear_regression(say, verbose=0)
        results["w"] = w
        if abs(w - 3.0) > 0.1:
            raise DemoCheckFailed(f"linear regression did not converge: w = {w:.3f}, expected 3")

        say.step(2, "A SqueezeNet-style network of multinet Fire modules learns handwritten "
                 "digits")
        model, data = train_digits(say, fmt, epochs, verbose, stream)
        results["accuracy"] = accuracy = data["accuracy"]
        if accuracy < ACCURACY_BAR:
            raise DemoCheckFailed(f"digits test accuracy {accuracy:.2%} is under "
                                  f"{ACCURACY_BAR:.0%}")

        say.step(3, "save_weights, then load_weights into a fresh model (.weights.h5)")
        results["round_trip_identical"] = round_trip(say, model, fmt, data["x_test"])
        if not results["round_trip_identical"]:
            raise DemoCheckFailed("predictions changed after save_weights/load_weights")

    say.step(4, f"{model_name} looks at multinet/data/cat.jpg")
    results["cat"] = classify_cat(say, fmt, model_name)

    say.step(5, "Inference speed of the digits network in each data format")
    results["speed"] = speed_by_format(say, model, data["images"], quick)

    results["seconds"] = time.perf_counter() - start
    say(f"\nDone in {results['seconds']:.0f} s: w = {w:.3f}, digits test accuracy "
        f"{accuracy:.2%}, weights round trip identical, "
        f"{'pretrained' if results['cat']['pretrained'] else 'random'} {model_name}.")
    return results


def export_digits(folder, size: int = 32) -> int:
    """Write the digits as PNG images, one subfolder per class (``0`` to
    ``9``), upscaled to ``size`` x ``size`` pixels (bilinear): a ready folder
    dataset for ``multinet train``. The images go to a temporary folder first,
    renamed to ``folder`` when all are written; ``folder`` must not exist or be
    empty. Returns the number of images."""
    from PIL import Image

    folder = os.fspath(folder)
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise ValueError(f"--export-digits {folder} exists and is not an empty folder")
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    images, labels = load_digits()
    staging = tempfile.mkdtemp(prefix=".partial-digits-", dir=parent)
    try:
        for index, (image, label) in enumerate(zip(images, labels)):
            sub = os.path.join(staging, str(label))
            os.makedirs(sub, exist_ok=True)
            pixels = Image.fromarray(np.round(image * 255).astype("uint8"), mode="L")
            pixels.resize((size, size), Image.BILINEAR).save(
                os.path.join(sub, f"{index:04d}.png"))
        if os.path.isdir(folder):
            os.rmdir(folder)
        os.replace(staging, folder)
    finally:
        if os.path.isdir(staging):
            import shutil

            shutil.rmtree(staging)
    return len(images)
