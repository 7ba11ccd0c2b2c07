"""The classic Keras tutorial multinet comes from, on every backend and in
both data formats: Sequential CNNs with rmsprop and Nesterov SGD, the
demo's one-neuron linear regression, HDF5 weights, and a Functional-API model on a
(1, 28, 28) channels_first input."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from multinet import demo, layers


def stripes(rng, n, data_format, size=16):
    """A small real task: horizontal (0) or vertical (1) stripes, with noise."""
    labels = rng.integers(0, 2, size=n)
    x = rng.normal(0.0, 0.3, size=(n, size, size, 1)).astype("float32")
    period = rng.integers(2, 5, size=n)
    grid = np.arange(size)
    for i in range(n):
        line = (grid // period[i]) % 2
        pattern = np.repeat(line[:, None], size, axis=1) if labels[i] == 0 else np.repeat(
            line[None, :], size, axis=0)
        x[i, :, :, 0] += pattern
    if data_format == "channels_first":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x, keras.utils.to_categorical(labels, 2)


def small_cnn(data_format, size=16):
    shape = (size, size, 1) if data_format == "channels_last" else (1, size, size)
    return keras.Sequential([
        keras.Input(shape=shape),
        layers.Conv2D(8, 3, activation="relu", data_format=data_format),
        layers.Conv2D(8, 3, activation="relu", data_format=data_format),
        layers.MaxPooling2D(2, data_format=data_format),
        keras.layers.Dropout(0.25),
        keras.layers.Flatten(data_format=data_format),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dropout(0.25),
        keras.layers.Dense(2, activation="softmax"),
    ])


@pytest.mark.parametrize(
    "optimizer",
    ["rmsprop", "sgd_nesterov"],
)
def test_sequential_cnn_fit_and_evaluate(optimizer, data_format):
    rng = np.random.default_rng(7)
    keras.utils.set_random_seed(7)
    x_train, y_train = stripes(rng, 256, data_format)
    x_test, y_test = stripes(rng, 64, data_format)
    model = small_cnn(data_format)
    if optimizer == "sgd_nesterov":
        optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9, nesterov=True)
    model.compile(loss="categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"])
    before = model.evaluate(x_test, y_test, verbose=0)[0]
    history = model.fit(x_train, y_train, batch_size=32, epochs=5,
                        validation_data=(x_test, y_test), verbose=0)
    assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=32, verbose=0)
    assert loss < before
    assert accuracy >= 0.9


def test_demo_linear_regression_learns_three():
    """Step 1 of ``multinet demo``: y = 3x + N(0, 0.1) on 256 points, true bias 0."""
    keras.utils.set_random_seed(demo.SEED)
    said = []
    w, b = demo.linear_regression(said.append, verbose=0)
    assert abs(w - 3.0) < 0.05
    assert abs(b) < 0.05
    assert f"w = {w:.3f}, b = {b:+.3f}" in said[-1]


def test_save_weights_load_weights_hdf5(tmp_path, data_format):
    rng = np.random.default_rng(3)
    x, _ = stripes(rng, 8, data_format)
    model = small_cnn(data_format)
    expected = model.predict(x, verbose=0)
    path = str(tmp_path / "cnn.weights.h5")
    model.save_weights(path)
    other = small_cnn(data_format)
    assert not np.allclose(other.predict(x, verbose=0), expected)
    other.load_weights(path)
    np.testing.assert_array_equal(other.predict(x, verbose=0), expected)


def test_functional_vision_model_channels_first():
    """The tutorial's Functional-API vision model on a (1, 28, 28) input."""
    rng = np.random.default_rng(5)
    keras.utils.set_random_seed(5)
    fmt = "channels_first"
    inputs = keras.Input(shape=(1, 28, 28))
    x = layers.Conv2D(16, 3, padding="same", activation="relu", data_format=fmt)(inputs)
    x = layers.MaxPooling2D(2, data_format=fmt)(x)
    x = layers.Conv2D(32, 3, activation="relu", data_format=fmt)(x)
    x = layers.MaxPooling2D(2, data_format=fmt)(x)
    x = keras.layers.Flatten(data_format=fmt)(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    assert model.output_shape == (None, 2)
    assert model.get_layer(index=3).output.shape == (None, 32, 12, 12)
    x_train, y_train = stripes(rng, 128, fmt, size=28)
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)
    x_test, y_test = stripes(rng, 64, fmt, size=28)
    assert model.evaluate(x_test, y_test, verbose=0)[1] >= 0.9
