"""Private training reaches plaintext Keras' test accuracy (same initial weights, hyperparameters
and batch order: both fit after the same keras.utils.set_random_seed): digits MLP and CNN within
2 points, breast-cancer logistic regression within 1; Adam and RMSprop on the digits MLP within 2.

Small epochs to fit CI; the full figures come from ``privacy-bridge demo`` / the benchmark."""

from __future__ import annotations

import keras
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

from frontends.keras.training import fit_encrypted


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


def _compiled(layers, loss, optimizer=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(layers)
    model.compile(optimizer=optimizer() if optimizer else keras.optimizers.SGD(0.1, momentum=0.9), loss=loss,
                  metrics=["accuracy"])
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


def _private_and_plain(secure_backend, layers, loss, data, epochs, batch_size, optimizer=None):
    x_train, x_test, y_train, y_test = data()
    private, plain = _compiled(layers(), loss, optimizer), _compiled(layers(), loss, optimizer)
    plain.set_weights(private.get_weights())
    half = len(x_train) // 2
    owners = {"alice": (x_train[:half], y_train[:half]), "bob": (x_train[half:], y_train[half:])}
    keras.utils.set_random_seed(7)
    fit_encrypted(private, secure_backend, owners, epochs=epochs, batch_size=batch_size, verbose=0, timeout_s=300)
    keras.utils.set_random_seed(7)  # model.fit then draws the same batches
    plain.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0)
    return private.evaluate(x_test, y_test, verbose=0)[1], plain.evaluate(x_test, y_test, verbose=0)[1]


@pytest.mark.parametrize("name", list(MODELS))
def test_private_training_matches_plaintext_keras_accuracy(secure_backend, name):
    layers, loss, data, epochs, batch_size, points = MODELS[name]
    private_acc, plain_acc = _private_and_plain(secure_backend, layers, loss, data, epochs, batch_size)
    print(f"{name} on {secure_backend.name}: private {private_acc:.4f}, plaintext Keras {plain_acc:.4f}")
    assert plain_acc > 0.8  # the baseline itself learned
    assert abs(private_acc - plain_acc) <= points + 1e-9


OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(0.003),
    "rmsprop": lambda: keras.optimizers.RMSprop(0.002),
}


@pytest.mark.slow  # 2 epochs of Adam/RMSprop steps on shares: about 1 min on torch-spdz, 4 on tf-pond
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_adaptive_optimizers_reach_keras_accuracy_on_digits(secure_backend, optimizer):
    layers, loss, data, _, batch_size, points = MODELS["digits_mlp"]
    private_acc, plain_acc = _private_and_plain(secure_backend, layers, loss, data, 2, 32, OPTIMIZERS[optimizer])
    print(f"digits_mlp {optimizer} on {secure_backend.name}: private {private_acc:.4f}, plaintext Keras {plain_acc:.4f}")
    assert plain_acc > 0.85
    assert abs(private_acc - plain_acc) <= points + 1e-9
