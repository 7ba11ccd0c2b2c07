"""Data-parallel training through each backend's own engine.

- JAX: ``keras.distribution.DataParallel`` over a ``DeviceMesh``.
- TensorFlow: ``tf.distribute.MirroredStrategy``.
- PyTorch: ``DistributedDataParallel`` (gloo on CPU, nccl on GPUs) under torchrun.

The one interface ``multinet.training`` uses::

    n = resolve_devices(devices=None, distribute=False, batch_size=32)
    launched = maybe_launch_torchrun(n, argv)   # torch, n > 1: runs torchrun, returns its exit code
    engine = get_engine(n)
    with engine.scope():
        model = ...; model.compile(...)
    history = engine.fit(model, train, validation, epochs=..., callbacks=[...], verbose=...)
    if engine.is_chief: write files

This file holds the one-device engine; the multi-device ones build on it.
"""

from __future__ import annotations

import contextlib


class DistributeError(ValueError):
    """A device request that cannot be met (one line)."""


def device_count() -> int:
    """How many devices the current backend sees for data-parallel training."""
    return 1


def resolve_devices(devices: int | None = None, distribute: bool = False, *,
                    batch_size: int | None = None) -> int:
    """The number of devices to train on: ``devices``, every visible one with
    ``distribute=True``, else 1. Raises DistributeError (one line) for more devices
    than exist or a global batch size the device count does not divide."""
    if devices is not None and distribute:
        raise DistributeError("give either --devices N or --distribute, not both")
    if devices is not None and devices < 1:
        raise DistributeError(f"--devices must be at least 1, got {devices}")
    available = device_count()
    n = available if distribute else (devices or 1)
    if n > available:
        raise DistributeError(f"{n} devices were asked for but this backend sees {available}")
    if batch_size is not None and batch_size % n:
        raise DistributeError(
            f"--batch-size {batch_size} is not divisible by the device count {n}")
    return n


def maybe_launch_torchrun(n: int, argv: list[str]) -> int | None:
    """On torch with n > 1 devices outside torchrun: run ``argv`` under torchrun
    with n processes and return its exit status. Otherwise None (train here)."""
    return None


class SingleDevice:
    """Training on one device: Keras' own ``fit``."""

    devices = 1
    rank = 0
    is_chief = True

    def scope(self):
        """Build and compile the model inside this context."""
        return contextlib.nullcontext()

    def fit(self, model, train, validation=None, *, epochs: int, initial_epoch: int = 0,
            callbacks=(), verbose="auto"):
        """``model.fit`` on ``train`` (a ``keras.utils.PyDataset`` whose batches are
        global batches) and returns the ``keras.callbacks.History``."""
        return model.fit(train, validation_data=validation, epochs=epochs,
                         initial_epoch=initial_epoch, callbacks=list(callbacks),
                         verbose=verbose)


def get_engine(n: int = 1):
    """The engine that trains on ``n`` devices of the current backend."""
    if n == 1:
        return SingleDevice()
    raise DistributeError(f"data-parallel training on {n} devices is not available yet")
