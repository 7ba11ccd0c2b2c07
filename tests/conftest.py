"""Shared fixtures: the data format, a reset global Keras config, seeded data."""

from __future__ import annotations

import keras
import numpy as np
import pytest

DATA_FORMATS = ("channels_last", "channels_first")


def pytest_report_header(config):
    from multinet import backend

    return (
        f"keras {keras.__version__}, backend {backend.name()} "
        f"{backend.framework_version()}, devices: {backend.gpu_devices() or 'cpu'}"
    )


@pytest.fixture(params=DATA_FORMATS)
def data_format(request):
    return request.param


@pytest.fixture(autouse=True)
def _restore_keras_config():
    """Tests may change global Keras state; put it back afterwards."""
    data_format = keras.config.image_data_format()
    floatx = keras.config.floatx()
    yield
    keras.config.set_image_data_format(data_format)
    keras.config.set_floatx(floatx)
    keras.backend.clear_session()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def numpy_initial_weights():
    """On JAX, draw Keras' random initial weights (uniform, normal and
    truncated normal: glorot_uniform, the default of convolutions and dense
    layers, and the families' variance-scaling and normal initializers) with
    numpy in this module.

    JAX compiles its random kernels once per weight shape, about a second
    each on a busy 2-core CPU and over 60 shapes per MobileNet, before any
    weights are loaded. For modules whose tests do not depend on the initial
    values (they load weights, copy them, or only check shapes). Other
    backends are left alone.
    """
    from multinet import backend

    if backend.name() != "jax":
        yield
        return
    import jax.numpy as jnp
    from keras.src.backend.jax import random as jax_random

    rng = np.random.default_rng(0)

    def as_array(values, dtype):
        dtype = keras.backend.standardize_dtype(dtype or keras.config.floatx())
        return jnp.asarray(values.astype(dtype))

    def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
        return as_array(rng.uniform(minval, maxval, tuple(shape)), dtype)

    def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        return as_array(rng.normal(mean, stddev, tuple(shape)), dtype)

    def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        values = rng.normal(0.0, 1.0, tuple(shape))
        outside = np.abs(values) > 2.0
        while outside.any():  # redrawn, as jax.random.truncated_normal's [-2, 2]
            values[outside] = rng.normal(0.0, 1.0, int(outside.sum()))
            outside = np.abs(values) > 2.0
        return as_array(mean + stddev * values, dtype)

    with pytest.MonkeyPatch.context() as patch:
        for draw in (uniform, normal, truncated_normal):
            patch.setattr(jax_random, draw.__name__, draw)
        yield
