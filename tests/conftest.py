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
