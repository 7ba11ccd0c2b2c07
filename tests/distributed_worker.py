"""k steps of training through multinet.distribute's engine on N devices, in a fresh process.

    python tests/distributed_worker.py OUT_DIR --devices N

Builds a small convolutional network without batch statistics from fixed numpy
weights, trains epochs of 3 global batches of 8 samples with SGD (momentum) and
a validation set, optionally with keras.callbacks.BackupAndRestore (--backup; a
run resumes from the epoch the backup holds), and writes OUT_DIR/result.npz (the
weights after training, the history; chief only) and OUT_DIR/batches-<rank>.json
(the batch sizes this process's replicas saw in training steps). On torch with N > 1 it relaunches
itself under torchrun through ``maybe_launch_torchrun``, as ``multinet train``
does. Multi-device JAX needs XLA_FLAGS=--xla_force_host_platform_device_count=N
set before it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
from pathlib import Path

import keras
import numpy as np

from multinet import distribute

GLOBAL_BATCH = 8
STEPS = 3
CLASSES = 10
SHAPE = (12, 12, 3)
SEEN: list[int] = []  # per-replica batch sizes of the training steps


class RecordBatch(keras.layers.Layer):
    """The identity; records how many samples each replica's training step sees."""

    def call(self, x, training=None):
        if training:
            backend = keras.backend.backend()
            if backend == "jax":
                import jax

                # The layout XLA compiles the step for: the samples per device.
                jax.debug.inspect_array_sharding(
                    x, callback=lambda sharding: SEEN.append(sharding.shard_shape(x.shape)[0]))
            elif backend == "tensorflow":
                import tensorflow as tf

                def record(size):
                    SEEN.append(int(size))
                    return size

                size = tf.py_function(record, [tf.shape(x)[0]], tf.int32)
                with tf.control_dependencies([size]):  # keep the recording in the graph
                    x = tf.identity(x)
            else:
                SEEN.append(int(x.shape[0]))
        return x


def build_model() -> keras.Model:
    inputs = keras.Input(SHAPE)
    x = RecordBatch()(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(CLASSES)(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(7)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32")
                       for w in model.get_weights()])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


class Reseed(keras.callbacks.Callback):
    """Seeds Python's random (the batch order fit draws) as each epoch begins, so
    that every engine trains on the batches in the same order whatever it drew
    before (TensorFlow's strategy peeks at the data first)."""

    def on_epoch_begin(self, epoch, logs=None):
        random.seed(epoch)


class KeepBackup(keras.callbacks.Callback):
    """Copies BackupAndRestore's folder as it is after the first epoch."""

    def __init__(self, backup: Path, copy: Path):
        super().__init__()
        self.backup, self.copy = backup, copy

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            shutil.copytree(self.backup, self.copy)


class Batches(keras.utils.PyDataset):
    def __init__(self, count: int, seed: int):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(count, *SHAPE)).astype("float32")
        self.y = rng.integers(0, CLASSES, count)

    def __len__(self):
        return -(-len(self.x) // GLOBAL_BATCH)

    def __getitem__(self, index):
        part = slice(index * GLOBAL_BATCH, (index + 1) * GLOBAL_BATCH)
        return self.x[part], self.y[part]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--backup", type=Path, help="BackupAndRestore's folder (kept)")
    parser.add_argument("--keep-first-epoch", type=Path,
                        help="copy the backup after the first epoch here")
    args = parser.parse_args(argv)

    n = distribute.resolve_devices(args.devices, batch_size=GLOBAL_BATCH)
    launched = distribute.maybe_launch_torchrun(n, [__file__, *argv])
    if launched is not None:
        return launched
    engine = distribute.get_engine(n)
    with engine.scope():
        model = build_model()
    callbacks = [Reseed()]
    if args.backup:
        callbacks.append(keras.callbacks.BackupAndRestore(args.backup, delete_checkpoint=False))
    if args.keep_first_epoch:
        callbacks.append(KeepBackup(args.backup, args.keep_first_epoch))
    history = engine.fit(model, Batches(GLOBAL_BATCH * STEPS, 1), Batches(2 * GLOBAL_BATCH, 2),
                         epochs=args.epochs, callbacks=callbacks, verbose=0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"batches-{engine.rank}.json").write_text(json.dumps({
        "seen": SEEN, "devices": engine.devices, "pid": os.getpid(),
        "replicas": getattr(getattr(engine, "strategy", None), "num_replicas_in_sync", None),
    }))
    if engine.is_chief:
        np.savez(args.out / "result.npz", *model.get_weights(),
                 history=json.dumps(history.history))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
