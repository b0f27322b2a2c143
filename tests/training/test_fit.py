"""fit_encrypted: Keras fit semantics (History, callbacks, progress), weights written back or
kept shared, and the plaintext reference training agreeing with Keras' own fit."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from bridge.registry import get_backend
from frontends.keras.training import fit_encrypted
from tests.training.helpers import keras_fit_in_order


def _digits(n: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data[:n] / 16.0).astype("float32"), d.target[:n]


def _mlp(seed: int = 0, momentum: float = 0.5) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(16, activation="relu", name="hidden"),
        keras.layers.Dense(10, activation="softmax", name="out"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.2, momentum=momentum), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.events = []

    def on_train_begin(self, logs=None):
        self.events.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(f"epoch_begin {epoch}")

    def on_train_batch_begin(self, batch, logs=None):
        self.events.append("batch_begin")

    def on_train_batch_end(self, batch, logs=None):
        self.events.append(f"batch_end {sorted(logs)}")

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(f"epoch_end {epoch} {sorted(logs)}")

    def on_train_end(self, logs=None):
        self.events.append("train_end")


def test_plaintext_training_matches_keras_fit_with_the_same_batch_order():
    x, y = _digits(300)
    ours, theirs = _mlp(), _mlp()
    theirs.set_weights(ours.get_weights())
    history = fit_encrypted(ours, get_backend("plaintext"), {"alice": (x[:150], y[:150]), "bob": (x[150:], y[150:])},
                            epochs=2, batch_size=32, seed=5, verbose=0)
    keras_fit_in_order(theirs, x, y, epochs=2, batch_size=32, seed=5)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert history.history["loss"][1] < history.history["loss"][0]


def test_fit_encrypted_has_keras_fit_semantics(secure_backend):
    x, y = _digits(128)
    model = _mlp()
    before = [w.copy() for w in model.get_weights()]
    recorder = Recorder()
    keras.utils.set_random_seed(5)
    history = fit_encrypted(model, secure_backend, {"alice": (x[:64], y[:64]), "bob": (x[64:96], y[64:96])},
                            epochs=2, batch_size=32, validation_data={"carol": (x[96:], y[96:])},
                            callbacks=[recorder], verbose=0, timeout_s=120)
    assert isinstance(history, keras.callbacks.History) and model.history is history
    assert history.epoch == [0, 1]
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 2 for v in history.history.values())
    assert all(0.0 <= a <= 1.0 for a in history.history["accuracy"] + history.history["val_accuracy"])
    batch = f"batch_end {['accuracy', 'loss']}"
    epoch_keys = ['accuracy', 'loss', 'val_accuracy', 'val_loss']
    assert recorder.events == [
        "train_begin",
        "epoch_begin 0", *["batch_begin", batch] * 3, f"epoch_end 0 {epoch_keys}",
        "epoch_begin 1", *["batch_begin", batch] * 3, f"epoch_end 1 {epoch_keys}",
        "train_end",
    ]
    after = model.get_weights()
    assert all(a.shape == b.shape and not np.allclose(a, b) for a, b in zip(after, before))
    # the weights written back are what the model owner received
    reference = _mlp()
    reference.set_weights(before)
    keras.utils.set_random_seed(5)  # the same batch order as model.fit after the same seed
    reference.fit(x[:96], y[:96], epochs=2, batch_size=32, verbose=0)
    for a, b in zip(after, reference.get_weights()):
        np.testing.assert_allclose(a, b, atol=3e-2)


def test_keep_shared_leaves_the_model_untouched_and_serves_it(secure_backend):
    x, y = _digits(64)
    model = _mlp()
    before = [w.copy() for w in model.get_weights()]
    history = fit_encrypted(model, secure_backend, (x, y), epochs=1, batch_size=32, keep_shared=True, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))
    served = history.serving.run({next(iter(history.serving.program.graph.inputs)): x[:4]}).outputs
    (probs,) = served.values()
    assert probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=2e-2)
    assert set(history.serving.program.placement.input_owners.values()) == {"data_owner"}


def test_progress_bar_is_keras_style(secure_backend, capsys):
    x, y = _digits(40)
    fit_encrypted(_mlp(), secure_backend, (x, y), epochs=1, batch_size=20, verbose=1)
    out = capsys.readouterr().out
    assert "2/2" in out and "loss:" in out and "accuracy:" in out


def test_private_model_fit_goes_through_fit_encrypted(secure_backend):
    from frontends.keras import privatize

    x, y = _digits(64)
    model = _mlp()
    before = model.get_weights()[0].copy()
    history = privatize(model, privacy="encrypted_training", backend=secure_backend.name).fit(
        {"alice": (x[:32], y[:32]), "bob": (x[32:], y[32:])}, epochs=1, batch_size=32, verbose=0
    )
    assert len(history.history["loss"]) == 1 and not np.allclose(model.get_weights()[0], before)


@pytest.mark.parametrize("bad", [[1, 2, 3], {"alice": (np.zeros((2, 64)),)}])
def test_malformed_data_is_refused_with_the_expected_shape(bad):
    with pytest.raises(ValueError, match=r"\(x, y\)"):
        fit_encrypted(_mlp(), get_backend("plaintext"), bad, epochs=1)
