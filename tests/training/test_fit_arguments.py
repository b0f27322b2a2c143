"""fit's data arguments under encrypted training, as Keras' model.fit reads them: the shuffled
batch order (keras.utils.set_random_seed), validation_split, class_weight / sample_weight,
models with several inputs, and the label error that names the offending values."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from bridge.registry import get_backend
from frontends.keras.fit_data import keras_batch_order, owned_data, split_validation
from frontends.keras.training import fit_encrypted

PLAIN = get_backend("plaintext")


def _digits(n: int, offset: int = 0):
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data[offset:offset + n] / 16.0).astype("float32"), d.target[offset:offset + n]


def _mlp(optimizer=None) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(16, activation="relu", name="hidden"),
        keras.layers.Dense(10, activation="softmax", name="out"),
    ])
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.2, momentum=0.5),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _twins(make=_mlp):
    ours, theirs = make(), make()
    theirs.set_weights(ours.get_weights())
    return ours, theirs


def _assert_same_weights(a: keras.Model, b: keras.Model, atol: float = 2e-5) -> None:
    for u, v in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(u, v, atol=atol)


class _RowRecorder:
    """Wraps a backend so every train_batch's rows are recorded."""

    def __init__(self, backend):
        self.backend, self.rows = backend, []
        self.name = backend.name

    def prepare_training(self, *args, **kwargs):
        executable = self.backend.prepare_training(*args, **kwargs)
        train_batch = executable.train_batch

        def recorded(rows):
            self.rows.append(np.asarray(rows).copy())
            return train_batch(rows)

        executable.train_batch = recorded
        return executable


# -- the batch order is Keras' ---------------------------------------------------------------------


def test_shuffled_fit_visits_the_batches_keras_fit_visits():
    """Same seed, shuffle=True: the plaintext reference lands on model.fit's weights exactly,
    which it cannot unless every batch holds the same rows in the same order."""
    x, y = _digits(200)
    ours, theirs = _twins()
    keras.utils.set_random_seed(11)
    fit_encrypted(ours, PLAIN, (x, y), epochs=3, batch_size=32, verbose=0)
    keras.utils.set_random_seed(11)
    theirs.fit(x, y, epochs=3, batch_size=32, verbose=0)
    _assert_same_weights(ours, theirs)
    # a different seed gives a different order and different weights: the order mattered
    other, _ = _twins()
    keras.utils.set_random_seed(12)
    fit_encrypted(other, PLAIN, (x, y), epochs=3, batch_size=32, verbose=0)
    assert max(np.abs(a - b).max() for a, b in zip(other.get_weights(), theirs.get_weights())) > 1e-3


def test_the_order_is_a_permutation_per_epoch_and_fixed_by_the_seed():
    model = _mlp()
    keras.utils.set_random_seed(3)
    first = keras_batch_order(model, 70, 32, 2, True)
    keras.utils.set_random_seed(3)
    again = keras_batch_order(model, 70, 32, 2, True)
    for epoch, epoch_again in zip(first, again, strict=True):
        assert [len(b) for b in epoch] == [32, 32, 6]
        assert sorted(np.concatenate(epoch).tolist()) == list(range(70))
        assert all(np.array_equal(a, b) for a, b in zip(epoch, epoch_again, strict=True))
    assert not np.array_equal(np.concatenate(first[0]), np.arange(70))
    unshuffled = keras_batch_order(model, 70, 32, 1, False)[0]
    assert np.array_equal(np.concatenate(unshuffled), np.arange(70))


def test_secure_backends_train_on_the_rows_keras_would(secure_backend):
    x, y = _digits(40)
    recorder = _RowRecorder(secure_backend)
    keras.utils.set_random_seed(4)
    fit_encrypted(_mlp(), recorder, {"alice": (x[:24], y[:24]), "bob": (x[24:], y[24:])}, epochs=1,
                  batch_size=16, verbose=0, timeout_s=120)
    keras.utils.set_random_seed(4)
    expected = keras_batch_order(_mlp(), 40, 16, 1, True)[0]
    assert [r.tolist() for r in recorder.rows] == [e.tolist() for e in expected]


def test_one_process_per_party_needs_a_keras_seed_to_shuffle():
    from keras.src.backend.common import global_state

    x, y = _digits(32)
    model = _mlp()
    global_state.set_global_attribute("global_random_seed", None)  # as in a script that never seeds
    with pytest.raises(ValueError, match=r"keras.utils.set_random_seed\(n\) with the same n"):
        fit_encrypted(model, get_backend("torch-spdz"), (x, y), cluster=(_FakeCluster(), "server0"), verbose=0)


class _FakeCluster:
    """Enough of a ClusterConfig for fit_encrypted to reach the batch order."""

    def with_role(self, role):
        from bridge.ir import Role

        return {Role.DATA_OWNER: ("alice",), Role.MODEL_OWNER: ("owner",)}.get(role, ())

    @property
    def parties(self):
        from bridge.ir import Party, Role

        roles = {"owner": {Role.MODEL_OWNER}, "alice": {Role.DATA_OWNER}, "server0": {Role.COMPUTE},
                 "server1": {Role.COMPUTE}, "dealer": {Role.DEALER}}
        return tuple(Party(name=n, roles=frozenset(r)) for n, r in roles.items())


# -- validation_split -------------------------------------------------------------------------------


def test_validation_split_holds_out_what_keras_holds_out():
    x, y = _digits(160)
    ours, theirs = _twins()
    keras.utils.set_random_seed(2)
    mine = fit_encrypted(ours, PLAIN, (x, y), epochs=2, batch_size=32, validation_split=0.25, verbose=0)
    keras.utils.set_random_seed(2)
    keras_history = theirs.fit(x, y, epochs=2, batch_size=32, validation_split=0.25, verbose=0)
    _assert_same_weights(ours, theirs)
    np.testing.assert_allclose(mine.history["val_loss"], keras_history.history["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(mine.history["val_accuracy"], keras_history.history["val_accuracy"], atol=1e-6)


def test_validation_split_keeps_each_row_with_its_owner():
    x, y = _digits(100)
    owned = owned_data({"alice": (x[:60], y[:60]), "bob": (x[60:], y[60:])}, "data", ["x"], "alice")
    train, validation = split_validation(owned, 0.3)  # the last 30 rows: all of them bob's
    assert {o: len(r) for o, r in train.items()} == {"alice": 60, "bob": 10}
    assert {o: len(r) for o, r in validation.items()} == {"bob": 30}
    np.testing.assert_array_equal(validation["bob"].y, y[70:])
    _, validation = split_validation(owned, 0.5)
    assert {o: len(r) for o, r in validation.items()} == {"alice": 10, "bob": 40}
    with pytest.raises(ValueError, match="validation_split must be in"):
        split_validation(owned, 1.0)


def test_secure_validation_split_reports_the_held_out_rows(secure_backend):
    x, y = _digits(96)
    model = _mlp()
    history = fit_encrypted(model, secure_backend, {"alice": (x[:48], y[:48]), "bob": (x[48:], y[48:])}, epochs=1,
                            batch_size=32, validation_split=0.25, verbose=0, timeout_s=120)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    loss, accuracy = model.evaluate(x[72:], y[72:], verbose=0)  # the held-out rows, after training
    assert history.history["val_loss"][0] == pytest.approx(loss, abs=0.02)
    assert history.history["val_accuracy"][0] == pytest.approx(accuracy, abs=1 / 24 + 1e-9)


# -- class_weight and sample_weight -------------------------------------------------------------------


def test_class_and_sample_weights_weigh_loss_and_gradient_as_keras_does():
    x, y = _digits(128)
    class_weight = {c: 0.5 + 0.25 * c for c in range(10)}
    ours, theirs = _twins()
    mine = fit_encrypted(ours, PLAIN, (x, y), epochs=2, batch_size=32, shuffle=False, class_weight=class_weight,
                         verbose=0)
    keras_history = theirs.fit(x, y, epochs=2, batch_size=32, shuffle=False, class_weight=class_weight, verbose=0)
    _assert_same_weights(ours, theirs)
    np.testing.assert_allclose(mine.history["loss"], keras_history.history["loss"], rtol=1e-4)
    # the same weights given per row, split between two owners as triples
    w = np.array([class_weight[int(c)] for c in y])
    split, _ = _twins()
    fit_encrypted(split, PLAIN, {"alice": (x[:64], y[:64], w[:64]), "bob": (x[64:], y[64:], w[64:])}, epochs=2,
                  batch_size=32, shuffle=False, verbose=0)
    _assert_same_weights(split, theirs)


def test_weights_change_the_training():
    x, y = _digits(96)
    plain, weighted = _twins()
    fit_encrypted(plain, PLAIN, (x, y), batch_size=32, shuffle=False, verbose=0)
    fit_encrypted(weighted, PLAIN, (x, y), batch_size=32, shuffle=False, verbose=0,
                  sample_weight=np.where(y < 5, 2.0, 0.1))
    assert max(np.abs(a - b).max() for a, b in zip(plain.get_weights(), weighted.get_weights())) > 1e-3


def test_secure_sample_weights_follow_the_reference(secure_backend):
    x, y = _digits(64)
    w = np.linspace(0.2, 2.0, 64)
    ours, reference = _twins()
    secure = fit_encrypted(ours, secure_backend, {"alice": (x[:32], y[:32], w[:32]), "bob": (x[32:], y[32:], w[32:])},
                           epochs=1, batch_size=32, shuffle=False, verbose=0, timeout_s=120)
    plain = fit_encrypted(reference, PLAIN, (x, y), sample_weight=w, epochs=1, batch_size=32, shuffle=False, verbose=0)
    assert secure.history["loss"][0] == pytest.approx(plain.history["loss"][0], abs=2e-3)
    _assert_same_weights(ours, reference, atol=5e-3)


def test_weight_arguments_are_refused_clearly():
    x, y = _digits(32)
    with pytest.raises(ValueError, match="class_weight and sample weights cannot be given together"):
        fit_encrypted(_mlp(), PLAIN, (x, y), class_weight={0: 2.0}, sample_weight=np.ones(32), verbose=0)
    with pytest.raises(ValueError, match=r"give each owner an \(x, y, sample_weight\) triple"):
        fit_encrypted(_mlp(), PLAIN, {"alice": (x, y)}, sample_weight=np.ones(32), verbose=0)
    with pytest.raises(ValueError, match="finite and >= 0; received -1.0 at index 3"):
        fit_encrypted(_mlp(), PLAIN, (x, y), sample_weight=np.where(np.arange(32) == 3, -1.0, 1.0), verbose=0)
    with pytest.raises(ValueError, match="different numbers of rows"):
        fit_encrypted(_mlp(), PLAIN, (x, y), sample_weight=np.ones(31), verbose=0)


# -- several inputs -----------------------------------------------------------------------------------


def _two_inputs() -> keras.Model:
    keras.utils.set_random_seed(1)
    left, right = keras.Input((40,), name="left"), keras.Input((24,), name="right")
    hidden = keras.layers.Add()([keras.layers.Dense(16, name="from_left")(left),
                                 keras.layers.Dense(16, name="from_right")(right)])
    out = keras.layers.Dense(10, activation="softmax", name="out")(keras.layers.ReLU()(hidden))
    model = keras.Model([left, right], out)
    model.compile(optimizer=keras.optimizers.SGD(0.2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_a_model_with_two_inputs_trains_like_keras():
    x, y = _digits(96)
    ours, theirs = _twins(_two_inputs)
    keras.utils.set_random_seed(6)
    fit_encrypted(ours, PLAIN, {"alice": ([x[:48, :40], x[:48, 40:]], y[:48]),
                                "bob": ({"left": x[48:, :40], "right": x[48:, 40:]}, y[48:])},
                  epochs=2, batch_size=32, verbose=0)
    keras.utils.set_random_seed(6)
    theirs.fit([x[:, :40], x[:, 40:]], y, epochs=2, batch_size=32, verbose=0)
    _assert_same_weights(ours, theirs)
    with pytest.raises(ValueError, match=r"the model has 2 inputs \['left', 'right'\]"):
        fit_encrypted(_two_inputs(), PLAIN, (x, y), verbose=0)


def test_secure_training_of_two_inputs_follows_the_reference(secure_backend):
    x, y = _digits(64)
    ours, reference = _twins(_two_inputs)
    data = {"alice": ({"left": x[:, :40], "right": x[:, 40:]}, y)}
    fit_encrypted(ours, secure_backend, data, epochs=1, batch_size=32, shuffle=False, verbose=0, timeout_s=120)
    fit_encrypted(reference, PLAIN, data, epochs=1, batch_size=32, shuffle=False, verbose=0)
    _assert_same_weights(ours, reference, atol=5e-3)
    assert max(np.abs(a - b).max() for a, b in zip(ours.get_weights(), _two_inputs().get_weights())) > 1e-2


def test_two_outputs_are_refused_naming_them():
    from bridge.reference_train import TrainingRefused

    inputs = keras.Input((8,))
    model = keras.Model(inputs, [keras.layers.Dense(2, activation="softmax", name="a")(inputs),
                                 keras.layers.Dense(3, activation="softmax", name="b")(inputs)])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(TrainingRefused, match="one loss"):
        fit_encrypted(model, PLAIN, (np.zeros((4, 8)), np.zeros(4)), verbose=0)


# -- labels ------------------------------------------------------------------------------------------


def _bad_labels():
    x, y = _digits(400)
    y = y.copy()
    y[345] = 12
    return x, y


LABEL_ERROR = r"integers in \[0, 10\).*received 12 at index 345 \(1 of 400 labels\)"


def test_a_label_out_of_range_is_named_with_its_index():
    with pytest.raises(ValueError, match=LABEL_ERROR):
        fit_encrypted(_mlp(), PLAIN, _bad_labels(), verbose=0)


def test_a_label_out_of_range_is_named_before_anything_is_shared(secure_backend):
    with pytest.raises(ValueError, match=LABEL_ERROR):
        fit_encrypted(_mlp(), secure_backend, _bad_labels(), verbose=0)
