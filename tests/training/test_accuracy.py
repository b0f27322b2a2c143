"""Private training reaches plaintext Keras' test accuracy (same initial weights, hyperparameters
and batch order): digits MLP and CNN within 2 points, breast-cancer logistic regression within 1.

Small epochs to fit CI; the full figures come from ``privacy-bridge demo`` / the benchmark."""

from __future__ import annotations

import keras
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

from frontends.keras.training import fit_encrypted
from tests.training.helpers import keras_fit_in_order


def _digits(image: bool):
    d = load_digits()
    x = (d.data / 16.0).astype("float32")
    if image:
        x = x.reshape(-1, 8, 8, 1)
    return train_test_split(x, d.target, test_size=0.25, random_state=0)


def _breast_cancer():
    d = load_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(d.data, d.target.astype("float32"), test_size=0.25,
                                                        random_state=0)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    return ((x_train - mean) / std).astype("float32"), ((x_test - mean) / std).astype("float32"), y_train, y_test


def _compiled(layers, loss):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=loss, metrics=["accuracy"])
    return model


MODELS = {
    "digits_mlp": (lambda: [keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                            keras.layers.Dense(10, activation="softmax")],
                   "sparse_categorical_crossentropy", lambda: _digits(image=False), 2, 64, 0.02),
    "digits_cnn": (lambda: [keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                            keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
                            keras.layers.Dense(10, activation="softmax")],
                   "sparse_categorical_crossentropy", lambda: _digits(image=True), 2, 64, 0.02),
    "breast_cancer_logreg": (lambda: [keras.Input((30,)), keras.layers.Dense(1, activation="sigmoid")],
                             "binary_crossentropy", _breast_cancer, 1, 32, 0.01),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_private_training_matches_plaintext_keras_accuracy(secure_backend, name):
    layers, loss, data, epochs, batch_size, points = MODELS[name]
    x_train, x_test, y_train, y_test = data()
    private, plain = _compiled(layers(), loss), _compiled(layers(), loss)
    plain.set_weights(private.get_weights())
    half = len(x_train) // 2
    owners = {"alice": (x_train[:half], y_train[:half]), "bob": (x_train[half:], y_train[half:])}
    fit_encrypted(private, secure_backend, owners, epochs=epochs, batch_size=batch_size, verbose=0, timeout_s=120)
    keras_fit_in_order(plain, x_train, y_train, epochs=epochs, batch_size=batch_size, seed=0)
    private_acc = private.evaluate(x_test, y_test, verbose=0)[1]
    plain_acc = plain.evaluate(x_test, y_test, verbose=0)[1]
    print(f"{name} on {secure_backend.name}: private {private_acc:.4f}, plaintext Keras {plain_acc:.4f}")
    assert plain_acc > 0.8  # the baseline itself learned
    assert abs(private_acc - plain_acc) <= points + 1e-9
