"""Training and evaluation of registered models on a folder of images.

The data is a folder with one subfolder per class, as ImageNet is laid out::

    DATA_DIR/cat/0001.jpg  DATA_DIR/dog/0002.png  ...

or, with a validation set of its own, ``DATA_DIR/train/<class>/...`` and
``DATA_DIR/val/<class>/...``. Without a ``val`` folder a stratified
``val_split`` of each class is held out (the same images for the same seed).
The class names are the subfolder names in sorted order.

``train`` writes into its output folder:

- ``best.weights.h5``: the weights of the epoch with the best validation accuracy;
- ``last.keras``: the whole model after the last epoch;
- ``history.json``: loss and accuracy (training and validation) per epoch;
- ``curves.png``: the same as two plots (matplotlib, the ``train`` extra);
- ``classes.json``: the class names in class-index order;
- ``run.json``: how the training was set up (model, input size, preprocessing,
  head, data format), which ``evaluate`` reads to rebuild the model.

Every file is written to a temporary name and renamed into place, so none is
ever half-written. While training runs, ``.backup/`` holds the state of the last
completed epoch (weights and optimizer, ``keras.callbacks.BackupAndRestore``); a
training that was killed resumes from there when the same call is made again,
and the folder is removed when the training finishes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time

import keras
import numpy as np

from multinet import backend as _backend
from multinet import distribute

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
OUTPUT_FILES = ("best.weights.h5", "last.keras", "history.json", "curves.png",
                "classes.json", "run.json")
BACKUP_DIR = ".backup"
HEAD_DROPOUT = 0.2
RANDOM_BN_MOMENTUM = 0.9
DEFAULT_FINE_TUNE_FACTOR = 0.1  # phase 2 learning rate = lr * this


class TrainingError(ValueError):
    """Bad input to ``train`` or ``evaluate`` (one line)."""


def _require_matplotlib(what: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise TrainingError(f"{what} is drawn with matplotlib, which is not installed: "
                            f"pip install 'multinet-keras[train]'") from None


# --- the data folder ----------------------------------------------------------------------


@dataclasses.dataclass
class ImageFolder:
    """The images of a class-per-subfolder folder: ``paths`` with ``labels``
    (indices into ``class_names``); ``skipped`` lists the unreadable files."""

    root: str
    class_names: list[str]
    paths: list[str]
    labels: np.ndarray
    skipped: list[str]


def _readable(path: str) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False


def _class_dirs(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder)
                  if e.is_dir() and not e.name.startswith("."))


def scan_folder(folder: str, class_names: list[str] | None = None) -> ImageFolder:
    """The images of ``folder``, one subfolder per class. With ``class_names``
    the subfolders are looked up among them (for evaluation); otherwise the
    sorted subfolder names are the classes. Unreadable images are skipped and
    listed in ``skipped``; no image at all is a TrainingError."""
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise TrainingError(f"data folder not found: {folder}")
    if not os.path.isdir(folder):
        raise TrainingError(f"data path is not a folder: {folder}")
    found = _class_dirs(folder)
    if not found:
        loose = any(e.is_file() for e in os.scandir(folder))
        what = "holds images but no class subfolders" if loose else "is empty"
        raise TrainingError(f"data folder {folder} {what}; expected one subfolder per class "
                            f"(DATA_DIR/CLASS/IMAGE)")
    if class_names is None:
        class_names = found
    else:
        unknown = [name for name in found if name not in class_names]
        if unknown:
            raise TrainingError(
                f"data folder {folder} has classes the model does not know: "
                f"{', '.join(unknown[:5])} (the model's {len(class_names)} classes: "
                f"{', '.join(class_names[:5])}{', ...' if len(class_names) > 5 else ''})")
    index = {name: i for i, name in enumerate(class_names)}
    paths, labels, skipped = [], [], []
    for name in found:
        sub = os.path.join(folder, name)
        for file in sorted(os.listdir(sub)):
            path = os.path.join(sub, file)
            if not file.lower().endswith(IMAGE_EXTENSIONS) or not os.path.isfile(path):
                continue
            if _readable(path):
                paths.append(path)
                labels.append(index[name])
            else:
                skipped.append(path)
    if not paths:
        raise TrainingError(f"data folder {folder} has no readable images in its class "
                            f"subfolders ({', '.join(found[:5])}; image types: "
                            f"{' '.join(IMAGE_EXTENSIONS)})")
    return ImageFolder(folder, list(class_names), paths, np.asarray(labels, dtype="int64"),
                       skipped)


def split_layout(data_dir: str) -> tuple[str, str | None]:
    """``(train folder, validation folder or None)``: DATA_DIR/train and
    DATA_DIR/val where DATA_DIR has exactly those two subfolders (a ``val``
    folder beside the classes), else DATA_DIR and None."""
    data_dir = os.fspath(data_dir)
    if os.path.isdir(os.path.join(data_dir, "val")):
        subs = set(_class_dirs(data_dir))
        if subs == {"train", "val"}:
            return os.path.join(data_dir, "train"), os.path.join(data_dir, "val")
        return data_dir, os.path.join(data_dir, "val")
    return data_dir, None


def stratified_split(labels: np.ndarray, fraction: float, seed: int):
    """Train and validation indices, each class split in the same proportion
    (at least one validation image per class with two or more images)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        n_val = min(max(int(round(len(index) * fraction)), 1), len(index) - 1)
        val.append(index[:n_val])
        train.append(index[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


class ImageBatches(keras.utils.PyDataset):
    """Batches ``(images, class ids)`` of image files, read with
    ``keras.utils.load_img``, resized to ``image_size``, augmented (training)
    with Keras preprocessing layers and scaled with ``preprocess_input``.

    The batches are global batches (the whole ``batch_size``); with
    ``shuffle`` the order changes every epoch and the last incomplete batch is
    left out (its images come in other epochs)."""

    def __init__(self, paths, labels, *, batch_size: int, image_size: int, data_format: str,
                 preprocessing: str, augment=None, shuffle: bool = False, seed: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype="int64")
        self.batch_size = batch_size
        self.image_size = image_size
        self.data_format = data_format
        self.preprocessing = preprocessing
        self.augment = augment
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.order = self._order()

    def _order(self):
        if not self.shuffle:
            return np.arange(len(self.paths))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.paths))

    def __len__(self):
        if self.shuffle:
            return max(len(self.paths) // self.batch_size, 1)
        return math.ceil(len(self.paths) / self.batch_size)

    def load(self, path) -> np.ndarray:
        image = keras.utils.load_img(path, color_mode="rgb",
                                     target_size=(self.image_size, self.image_size),
                                     interpolation="bilinear")
        return np.asarray(image, dtype="float32")

    def __getitem__(self, index):
        chosen = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        images = np.stack([self.load(self.paths[i]) for i in chosen])
        if self.augment is not None:
            images = keras.ops.convert_to_numpy(self.augment(images, training=True))
        if self.data_format == "channels_first":
            images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        from multinet.preprocessing import preprocess_input

        images = preprocess_input(images, self.preprocessing, data_format=self.data_format)
        return images.astype("float32"), self.labels[chosen]

    def on_epoch_end(self):
        self.epoch += 1
        self.order = self._order()


def augmentation(flip: bool, seed: int):
    """Keras preprocessing layers for training images (channels_last, [0, 255]):
    small shifts and zooms, and horizontal flips with ``flip`` (not for digits
    or text)."""
    steps = [keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed),
             keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 1)]
    if flip:
        steps.insert(0, keras.layers.RandomFlip("horizontal", seed=seed + 2))
    return keras.Sequential(steps, name="augmentation")


# --- atomic files ---------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ""):
    """A temporary path beside ``path`` (ending in ``suffix``) that is renamed
    to ``path`` when the block succeeds and removed when it fails."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(prefix=".partial-", suffix=suffix, dir=folder)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as an ordinary file, not mkstemp's 0600
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, data) -> None:
    with atomic_path(path, ".json") as tmp:
        with open(tmp, "w") as file:
            json.dump(data, file, indent=2)
            file.write("\n")


def read_json(path: str):
    with open(path) as file:
        return json.load(file)


def save_weights(model, path: str) -> None:
    with atomic_path(path, ".weights.h5") as tmp:
        model.save_weights(tmp, overwrite=True)


def save_model(model, path: str) -> None:
    with atomic_path(path, ".keras") as tmp:
        model.save(tmp, overwrite=True)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` whose backup is one file, written
    under a temporary name and renamed into place: the epoch to resume from is
    an attribute of the weights file itself, so weights and epoch never
    disagree, whenever the process is killed."""

    EPOCH_ATTR = "multinet_next_epoch"

    def __init__(self, backup_dir: str, *, chief: bool = True):
        super().__init__(backup_dir, delete_checkpoint=False)
        self.chief = chief

    def saved_epoch(self) -> int | None:
        """The number of epochs the backup holds, or None without one."""
        import h5py

        if not os.path.exists(self._weights_path):
            return None
        with h5py.File(self._weights_path, "r") as file:
            return int(file.attrs[self.EPOCH_ATTR])

    def _save_model(self):
        import h5py

        if not self.chief:
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        with atomic_path(self._weights_path, ".weights.h5") as tmp:
            self.model.save_weights(tmp, overwrite=True)
            with h5py.File(tmp, "a") as file:
                file.attrs[self.EPOCH_ATTR] = int(self._current_epoch)

    def _load_model(self):
        if not os.path.exists(self._weights_path):
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self._weights_path)
        self.model._initial_epoch = self.saved_epoch()


class EpochRecorder(keras.callbacks.Callback):
    """After each epoch: the epoch's logs into ``history.json``, and the weights
    into ``best.weights.h5`` when the validation accuracy is the best so far
    (both atomic). Only the chief process writes."""

    def __init__(self, out: str, history: list, *, chief: bool, phase: int, say):
        super().__init__()
        self.out = out
        self.history = history
        self.chief = chief
        self.phase = phase
        self.say = say
        self.best = -1.0
        self.started = time.monotonic()

    def on_train_begin(self, logs=None):
        self.best = max((h.get("val_accuracy", -1.0) for h in self.history), default=-1.0)

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "phase": self.phase,
               "seconds": round(time.monotonic() - self.started, 3)}
        row.update({k: float(v) for k, v in (logs or {}).items()
                    if np.ndim(v) == 0 and k in ("loss", "accuracy", "val_loss",
                                                 "val_accuracy")})
        del self.history[epoch:]
        self.history.append(row)
        if not self.chief:
            return
        accuracy = row.get("val_accuracy", row.get("accuracy", 0.0))
        if accuracy > self.best:
            self.best = accuracy
            save_weights(self.model, os.path.join(self.out, "best.weights.h5"))
        write_json(os.path.join(self.out, "history.json"), self.history)


class EpochLines(keras.callbacks.Callback):
    """One plain line per epoch, for output that is not a terminal."""

    def __init__(self, say, epochs: int):
        super().__init__()
        self.say = say
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"{k} {float(logs[k]):.4f}" for k in ("loss", "accuracy", "val_loss",
                                                       "val_accuracy") if k in logs]
        self.say(f"epoch {epoch + 1}/{self.epochs}: {', '.join(parts)}")


def plot_curves(history: list, path: str) -> None:
    """Loss and accuracy per epoch (training and validation) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [h["epoch"] for h in history]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for key, label in ((metric, "training"), (f"val_{metric}", "validation")):
            values = [h.get(key) for h in history]
            if any(v is not None for v in values):
                axis.plot(epochs, values, marker="o", label=label)
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    with atomic_path(path, ".png") as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


# --- the model ----------------------------------------------------------------------------


def _weights_plan(spec, weights):
    """``(pretrained, preprocessing)``: whether ``weights`` (None/'random', an
    entry name or a file) are pretrained weights, and the scaling they need."""
    from multinet.registry import resolve_weights

    if weights in (None, "random"):
        entry = spec.get_weights("imagenet") if spec.default_weights else None
        return False, (entry.preprocessing if entry else None) or "torch"
    entry = resolve_weights(spec, weights)
    if entry is not None:
        return True, entry.preprocessing or "torch"
    if not os.path.isfile(os.fspath(weights)):
        raise TrainingError(f"weights file not found: {weights}")
    from multinet.weights.loader import inspect_source

    try:
        layout, names = inspect_source(weights)
    except (ValueError, OSError) as error:
        raise TrainingError(f"cannot read weights file {weights}: "
                            f"{' '.join(str(error).split())}") from None
    options = spec.family.source_options(layout, names)
    entry = next((e for e in spec.weights if e.layout == layout), None)
    mode = entry.preprocessing if entry else spec.family.preprocessing_for(layout, options)
    return True, mode or "torch"


def build_model(spec, classes: int, image_size: int, data_format: str, *, head: str,
                weights=None):
    """The model to train. ``head="registry"``: the registered model itself
    with ``classes`` outputs (random weights). ``head="new"``: the backbone
    without its top (with ``weights``, pretrained) under a new head,
    GlobalAveragePooling + Dropout + Dense, as in Keras' transfer-learning
    guide; the backbone is the layer named ``backbone``, called in inference
    mode (its batch normalization statistics stay as they are)."""
    import multinet
    from multinet.layers import image_shape

    shape = image_shape(image_size, data_format)
    if head == "registry":
        model = multinet.create_model(spec.name, classes=classes, input_shape=shape,
                                      data_format=data_format)
        # From random weights on a small dataset, batch normalization's moving
        # statistics must follow within a few hundred steps (MobileNetV3's
        # 0.999 would keep them near their initial values).
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = min(layer.momentum, RANDOM_BN_MOMENTUM)
        return model
    backbone = multinet.create_model(spec.name, weights=weights, include_top=False,
                                     input_shape=shape, data_format=data_format,
                                     name="backbone")
    inputs = keras.Input(shape=shape, name="image")
    x = backbone(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D(data_format=data_format, name="head_pool")(x)
    x = keras.layers.Dropout(HEAD_DROPOUT, name="head_dropout")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="head_predictions",
                                 dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"{spec.name}_finetuned")


def _compile(model, lr: float, steps: int):
    """Adam whose learning rate falls from ``lr`` to 0 over ``steps`` along a
    cosine (``keras.optimizers.schedules.CosineDecay``)."""
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(steps, 1))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])


# --- train ----------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _check_out(out: str, config: dict, force: bool) -> None:
    """Refuse an output folder that is not a multinet training of this same
    setup, or holds a finished one, unless ``force``."""
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise TrainingError(f"--out {out} exists and is not a folder")
    entries = [e for e in os.listdir(out) if not e.startswith(".partial-")]
    if not entries or force:
        return
    run_file = os.path.join(out, "run.json")
    if not os.path.isfile(run_file):
        raise TrainingError(f"--out {out} is not empty and holds no multinet training "
                            f"(no run.json); choose another folder or pass --force")
    try:
        previous = read_json(run_file)
    except (OSError, ValueError):
        previous = None
    if not isinstance(previous, dict) or previous.get("config") != config:
        raise TrainingError(f"--out {out} holds a different training; choose another folder "
                            f"or pass --force to replace it")
    if not os.path.isdir(os.path.join(out, BACKUP_DIR)) and previous.get("finished"):
        raise TrainingError(f"--out {out} holds this training, finished; pass --force to "
                            f"train again")


def _remove_partial_files(out: str) -> None:
    """The temporary files of a killed training (never renamed into place)."""
    for folder, _, names in os.walk(out):
        for name in names:
            if name.startswith(".partial-"):
                os.remove(os.path.join(folder, name))


def _resolve_spec(model: str):
    from multinet.registry import get_model_spec

    try:
        return get_model_spec(model)
    except ValueError as error:
        raise TrainingError(str(error)) from None


def train(data_dir, model: str, out, *, weights=None, epochs: int = 10,
          batch_size: int = 32, image_size: int | None = None, val_split: float = 0.2,
          lr: float = 1e-3, freeze_backbone: bool = False, head_epochs: int | None = None,
          fine_tune_lr: float | None = None, augment: bool = True, flip: bool = False,
          mixed_precision: bool = False, seed: int = 1337, devices: int | None = None,
          distribute_all: bool = False, data_format: str | None = None, force: bool = False,
          callbacks=(), verbose="auto") -> dict:
    """Train registered model ``model`` on the class-per-subfolder images of
    ``data_dir``; write the results into folder ``out`` (see the module
    docstring) and return a summary dict (``best_val_accuracy``, ``epochs``,
    ``seconds``, ``classes``, ``out``; ``None`` values on non-chief processes).

    ``weights``: None or ``"random"`` trains the registered model from random
    weights with one output per class. An entry name (``"imagenet"``) or a
    weights file builds the backbone without its top from those weights and
    puts a new head on it. With ``freeze_backbone`` (pretrained weights only)
    the training has two phases, as in Keras' transfer-learning guide: the
    first ``head_epochs`` (default: a third of ``epochs``, at least 1) train the
    head alone with ``lr``; the rest fine-tune the whole model with
    ``fine_tune_lr`` (default ``lr / 10``). ``epochs`` counts both phases.

    ``batch_size`` is the global batch; ``devices``/``distribute_all`` choose
    the devices (``multinet.distribute.resolve_devices``). A training killed at
    any point resumes from its last completed epoch when called again with the
    same arguments. ``out`` holding another training (or a finished one of
    the same arguments) is refused unless ``force``. ``callbacks``: more Keras
    callbacks, given to both phases.
    """
    from multinet.layers import standardize_data_format
    from multinet.registry import resolve_weights

    spec = _resolve_spec(model)
    reason = _backend.cannot_train("training")
    if reason:
        raise TrainingError(reason)
    _require_matplotlib("curves.png")
    data_format = standardize_data_format(data_format)
    image_size = image_size or spec.default_size
    if image_size < spec.min_size:
        raise TrainingError(f"--image-size {image_size} is below {spec.name}'s minimum "
                            f"{spec.min_size}")
    if not 0.0 < val_split < 1.0:
        raise TrainingError(f"--val-split must be between 0 and 1, got {val_split}")
    if freeze_backbone and weights in (None, "random"):
        raise TrainingError("--freeze-backbone needs pretrained weights (-w imagenet or a "
                            "weights file); random weights have nothing to keep")
    pretrained, preprocessing = _weights_plan(spec, weights)
    head = "new" if pretrained else "registry"
    if freeze_backbone:
        head_epochs = head_epochs or max(epochs // 3, 1)
        if head_epochs >= epochs:
            raise TrainingError(f"--head-epochs {head_epochs} leaves no fine-tuning epochs "
                                f"of --epochs {epochs}")
    else:
        head_epochs = 0
    fine_tune_lr = fine_tune_lr or lr * DEFAULT_FINE_TUNE_FACTOR
    try:
        n = distribute.resolve_devices(devices, distribute_all, batch_size=batch_size)
    except distribute.DistributeError as error:
        raise TrainingError(str(error)) from None

    train_dir, val_dir = split_layout(data_dir)
    data = scan_folder(train_dir)
    if val_dir is not None:
        val_data = scan_folder(val_dir, data.class_names)
        train_index = np.arange(len(data.paths))
        skipped = data.skipped + val_data.skipped
    else:
        if len(data.paths) < 2 * len(data.class_names):
            raise TrainingError(f"data folder {train_dir} has {len(data.paths)} images for "
                                f"{len(data.class_names)} classes: too few to hold out a "
                                f"validation split")
        train_index, val_index = stratified_split(data.labels, val_split, seed)
        val_data = dataclasses.replace(
            data, paths=[data.paths[i] for i in val_index], labels=data.labels[val_index])
        skipped = data.skipped
    if len(data.class_names) < 2:
        raise TrainingError(f"data folder {train_dir} has one class ({data.class_names[0]}); "
                            f"a classifier needs at least two")
    if len(train_index) < batch_size:
        raise TrainingError(f"--batch-size {batch_size} is larger than the {len(train_index)} "
                            f"training images")
    config = {"data_dir": os.path.abspath(os.fspath(data_dir)), "model": spec.name,
              "weights": None if weights in (None, "random") else str(weights),
              "epochs": epochs, "batch_size": batch_size, "image_size": image_size,
              "val_split": val_split if val_dir is None else None, "lr": lr,
              "freeze_backbone": freeze_backbone, "head_epochs": head_epochs,
              "fine_tune_lr": fine_tune_lr if freeze_backbone else None,
              "augment": augment, "flip": flip, "mixed_precision": mixed_precision,
              "seed": seed, "data_format": data_format}
    out = os.fspath(out)
    _check_out(out, config, force)

    engine = distribute.get_engine(n)
    chief = engine.is_chief
    say = _say if chief else (lambda message: None)
    if skipped:
        say(f"warning: skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}")
    keras.utils.set_random_seed(seed)
    policy = keras.config.dtype_policy()
    if mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        with engine.scope():
            net = build_model(spec, len(data.class_names), image_size, data_format,
                              head=head, weights=weights)
    except ValueError as error:
        if not pretrained or resolve_weights(spec, weights) is not None:
            raise
        reason = " ".join(str(error).split())
        reason = reason if len(reason) < 240 else reason[:240].rsplit(";", 1)[0] + "; ..."
        raise TrainingError(f"weights file {weights} does not fit {spec.name} without its "
                            f"top (is it made for another model?): {reason}") from None
    finally:
        keras.config.set_dtype_policy(policy)

    backup_root = os.path.join(out, BACKUP_DIR)
    if force and chief:  # start over
        shutil.rmtree(backup_root, ignore_errors=True)
    fresh = not os.path.isdir(backup_root)
    if chief:
        os.makedirs(out, exist_ok=True)
        _remove_partial_files(out)
        if fresh:  # what an earlier training left
            for name in ("history.json", "best.weights.h5", "last.keras", "curves.png"):
                if os.path.exists(os.path.join(out, name)):
                    os.remove(os.path.join(out, name))
        write_json(os.path.join(out, "classes.json"), data.class_names)
        write_json(os.path.join(out, "run.json"), {
            "config": config, "finished": False, "classes": len(data.class_names),
            "head": head, "preprocessing": preprocessing, "image_size": image_size,
            "data_format": data_format, "model": spec.name})
    history_path = os.path.join(out, "history.json")
    history = [] if fresh or not os.path.exists(history_path) else read_json(history_path)

    train_batches = ImageBatches(
        [data.paths[i] for i in train_index], data.labels[train_index],
        batch_size=batch_size, image_size=image_size, data_format=data_format,
        preprocessing=preprocessing, augment=augmentation(flip, seed) if augment else None,
        shuffle=True, seed=seed)
    val_batches = ImageBatches(val_data.paths, val_data.labels, batch_size=batch_size,
                               image_size=image_size, data_format=data_format,
                               preprocessing=preprocessing)
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 0
    say(f"{spec.name}: {len(train_batches.paths)} training and {len(val_batches.paths)} "
        f"validation images of {len(data.class_names)} classes, {image_size}x{image_size}, "
        f"{'weights ' + str(weights) if pretrained else 'random weights'}, {n} device(s)")
    started = time.monotonic()
    phases = [(1, head_epochs, lr), (2, epochs, fine_tune_lr)] if freeze_backbone else [
        (1, epochs, lr)]
    for phase, until, rate in phases:
        if freeze_backbone:
            net.get_layer("backbone").trainable = phase == 2
            say(f"phase {phase}: {'the head alone' if phase == 1 else 'the whole model'}, "
                f"epochs {1 if phase == 1 else head_epochs + 1}-{until}, learning rate {rate:g}")
        first = 0 if phase == 1 else head_epochs
        with engine.scope():
            _compile(net, rate, (until - first) * len(train_batches))
        backup = AtomicBackupAndRestore(os.path.join(backup_root, f"phase{phase}"),
                                        chief=chief)
        resume = backup.saved_epoch()
        if resume is not None:
            del history[resume:]  # epochs after the backup are trained again
            say(f"resuming after epoch {resume} from {backup.backup_dir}")
        # The history is written before the backup: a kill between the two
        # trains that epoch again and replaces its row.
        steps = [EpochRecorder(out, history, chief=chief, phase=phase, say=say), backup,
                 *callbacks]
        if not verbose:
            steps.append(EpochLines(say, epochs))
        net._initial_epoch = None  # set by a backup restored in the phase before
        engine.fit(net, train_batches, val_batches, epochs=until,
                   initial_epoch=first,
                   callbacks=steps, verbose=verbose)
    seconds = time.monotonic() - started
    best = max((h.get("val_accuracy", 0.0) for h in history), default=None)
    if not chief:
        return {"best_val_accuracy": None, "epochs": epochs, "seconds": seconds,
                "classes": data.class_names, "out": out}
    save_model(net, os.path.join(out, "last.keras"))
    if not os.path.exists(os.path.join(out, "best.weights.h5")):
        save_weights(net, os.path.join(out, "best.weights.h5"))
    write_json(history_path, history)
    plot_curves(history, os.path.join(out, "curves.png"))
    run = read_json(os.path.join(out, "run.json"))
    run.update(finished=True, best_val_accuracy=best)
    write_json(os.path.join(out, "run.json"), run)
    shutil.rmtree(backup_root, ignore_errors=True)
    summary = {"best_val_accuracy": best, "epochs": epochs, "seconds": round(seconds, 1),
               "classes": data.class_names, "out": out}
    if best is not None:
        say(f"best validation accuracy {best:.2%}; {epochs} epochs in {seconds:.0f} s; "
            f"files in {out}")
    return summary


# --- evaluate -------------------------------------------------------------------------------


def _beside(weights: str, name: str) -> str | None:
    path = os.path.join(os.path.dirname(os.path.abspath(weights)), name)
    return path if os.path.isfile(path) else None


def load_trained(model: str, weights, *, data_dir=None, image_size: int | None = None,
                 data_format: str | None = None):
    """``(keras model, class names, setup)`` for ``evaluate``.

    The class count and names: ``classes.json`` beside ``weights`` (a training's
    output folder); without one, the sorted class subfolders of ``data_dir``.
    ``run.json`` beside it gives the input size, the preprocessing, the head
    and the data format of the training; otherwise the model's default size,
    the preprocessing of its default weights, and the registered model with
    one output per class. ``weights`` may also be a ``.keras`` file (the whole
    model), whose output count must match the classes.
    """
    from multinet.layers import standardize_data_format

    spec = _resolve_spec(model)
    weights = os.fspath(weights)
    if not os.path.isfile(weights):
        raise TrainingError(f"weights file not found: {weights}")
    classes_file = _beside(weights, "classes.json")
    if classes_file is not None:
        class_names = [str(c) for c in read_json(classes_file)]
    elif data_dir is not None:
        class_names = scan_folder(split_layout(data_dir)[1] or data_dir).class_names
    else:
        raise TrainingError(f"no classes.json beside {weights}: cannot tell its classes")
    run_file = _beside(weights, "run.json")
    setup = read_json(run_file) if run_file else {}
    if setup.get("model") not in (None, spec.name):
        raise TrainingError(f"{weights} was trained as {setup['model']}, not {spec.name}")
    fmt = standardize_data_format(data_format or setup.get("data_format"))
    size = image_size or setup.get("image_size") or spec.default_size
    preprocessing = setup.get("preprocessing") or _weights_plan(spec, None)[1]
    if weights.endswith(".keras"):
        try:
            net = keras.saving.load_model(weights, compile=False)
        except Exception as error:
            raise TrainingError(f"cannot load model file {weights}: "
                                f"{' '.join(str(error).split())[:300]}") from None
        fmt = "channels_first" if net.input_shape[1] == 3 and net.input_shape[-1] != 3 else (
            "channels_last")
        size = net.input_shape[2] if fmt == "channels_last" else net.input_shape[3]
    else:
        net = build_model(spec, len(class_names), size, fmt,
                          head=setup.get("head", "registry"))
        try:
            net.load_weights(weights)
        except Exception as error:
            raise TrainingError(
                f"cannot load {weights} into {spec.name} with {len(class_names)} classes "
                f"(is the file made for another model?): "
                f"{' '.join(str(error).split())[:300]}") from None
    if net.output_shape[-1] != len(class_names):
        raise TrainingError(f"{weights} has {net.output_shape[-1]} outputs for "
                            f"{len(class_names)} classes")
    return net, class_names, {"image_size": size, "preprocessing": preprocessing,
                              "data_format": fmt}


def plot_confusion(matrix: np.ndarray, class_names, path: str) -> None:
    """The confusion matrix (rows: true class, columns: predicted) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    n = len(class_names)
    side = min(max(4.0, 0.45 * n + 2), 30.0)
    figure, axis = plt.subplots(figsize=(side, side))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    if n <= 40:
        axis.set_xticks(range(n), class_names, rotation=90)
        axis.set_yticks(range(n), class_names)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        axis.text(j, i, str(matrix[i, j]), ha="center", va="center",
                                  color="white" if matrix[i, j] > matrix.max() / 2 else "black",
                                  fontsize=8)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title("confusion matrix")
    figure.tight_layout()
    with atomic_path(path, ".png") as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def accuracy_report(probabilities: np.ndarray, labels: np.ndarray, class_names) -> dict:
    """Top-1 and top-5 accuracy, per-class accuracy and the confusion matrix
    of class probabilities ``(N, classes)`` against ``labels``."""
    n = len(class_names)
    k = min(5, n)
    top = np.argsort(-probabilities, axis=1, kind="stable")
    predicted = top[:, 0]
    matrix = np.zeros((n, n), dtype="int64")
    np.add.at(matrix, (labels, predicted), 1)
    per_class = {}
    for index, name in enumerate(class_names):
        total = int(matrix[index].sum())
        if total:
            per_class[name] = {"images": total, "accuracy": float(matrix[index, index] / total)}
    return {"images": int(len(labels)), "top1": float(np.mean(predicted == labels)),
            "top5": float(np.mean(np.any(top[:, :k] == labels[:, None], axis=1))),
            "top5_k": k, "per_class": per_class, "confusion_matrix": matrix.tolist()}


def evaluate(data_dir, model: str, weights, *, batch_size: int = 32,
             image_size: int | None = None, data_format: str | None = None,
             plot: str | None = None) -> dict:
    """Accuracy of trained weights on the class-per-subfolder images of
    ``data_dir`` (its ``val`` folder where it has one): ``top1``, ``top5``
    (top-``top5_k`` with fewer than five classes), ``per_class`` and
    ``confusion_matrix`` (rows: true class); with ``plot``, the confusion
    matrix as a PNG there. See ``load_trained`` for how the classes, input
    size and preprocessing are known."""
    if plot:
        _require_matplotlib(f"the confusion matrix ({os.path.basename(os.fspath(plot))})")
    net, class_names, setup = load_trained(model, weights, data_dir=data_dir,
                                           image_size=image_size, data_format=data_format)
    folder = split_layout(data_dir)[1] or os.fspath(data_dir)
    data = scan_folder(folder, class_names)
    batches = ImageBatches(data.paths, data.labels, batch_size=batch_size,
                           image_size=setup["image_size"], data_format=setup["data_format"],
                           preprocessing=setup["preprocessing"])
    probabilities = np.asarray(net.predict(batches, verbose=0), dtype="float64")
    report = accuracy_report(probabilities, data.labels, class_names)
    report.update(model=model, weights=os.fspath(weights), data_dir=folder,
                  classes=class_names, skipped=data.skipped, **setup)
    if plot:
        plot_confusion(np.asarray(report["confusion_matrix"]), class_names, plot)
        report["plot"] = plot
    return report
