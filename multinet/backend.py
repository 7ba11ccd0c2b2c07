"""The one module that knows which framework runs underneath Keras.

Everything else in multinet speaks ``keras.layers`` and ``keras.ops`` only.
Framework imports happen lazily inside functions, so importing multinet never
imports a backend other than the one Keras selected.
"""

from __future__ import annotations

import functools

import keras

CHANNELS_LAST = "channels_last"
CHANNELS_FIRST = "channels_first"
DATA_FORMATS = (CHANNELS_LAST, CHANNELS_FIRST)


def name() -> str:
    """The Keras backend in use: ``"tensorflow"``, ``"jax"`` or ``"torch"``."""
    return keras.backend.backend()


@functools.cache
def gpu_devices() -> tuple[str, ...]:
    """Names of the accelerators the current backend can see (empty on CPU)."""
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        devices = tf.config.list_physical_devices("GPU")
        names = []
        for device in devices:
            details = tf.config.experimental.get_device_details(device)
            names.append(details.get("device_name", device.name))
        return tuple(names)
    if backend == "jax":
        import jax

        return tuple(d.device_kind for d in jax.devices() if d.platform != "cpu")
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return tuple(
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            )
        return ()
    return ()


def framework_version() -> str:
    """Version string of the framework behind the current backend."""
    backend = name()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if module is None:
        return "unknown"
    import importlib

    return getattr(importlib.import_module(module), "__version__", "unknown")


def channels_first_conv_supported() -> bool:
    """Whether ``keras.ops.conv`` runs NCHW data natively here.

    TensorFlow's CPU convolution kernels are NHWC only ("The Conv2D op currently
    only supports the NHWC tensor format on the CPU"); every other backend, and
    TensorFlow on a GPU, runs NCHW.
    """
    if name() == "tensorflow":
        return bool(gpu_devices())
    return True


def preferred_compute_format() -> str:
    """The data format in which convolution stacks run fastest on this backend.

    Models built by multinet take and return data in the format the user asks
    for, but compute in this format inside, with one transpose at the input
    (and one at a spatial output) when the two differ. Weights are the same in
    both formats, so this is invisible except in speed.

    - torch: PyTorch convolutions are NCHW; Keras' channels_last path
      transposes around every convolution.
    - jax (XLA on CPU) and tensorflow (CPU kernels): NHWC.
    """
    backend = name()
    if backend == "torch":
        return CHANNELS_FIRST
    if backend == "tensorflow" and gpu_devices():
        return CHANNELS_FIRST
    return CHANNELS_LAST
