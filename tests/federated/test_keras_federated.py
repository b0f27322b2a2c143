"""fit_federated on load_digits with a Keras MLP: accuracy vs centralized, dropouts, DP, History."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from bridge.backend import BackendError  # noqa: E402
from bridge.federated import TooFewClientsError  # noqa: E402
from bridge.federated.splits import load_digits_clients  # noqa: E402
from frontends.keras.federated import fit_federated  # noqa: E402
from tests.conftest import SECURE_BACKENDS  # noqa: E402

ROUNDS, LOCAL_EPOCHS, SEED = 10, 2, 0


def build_model(seed: int = SEED):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10, activation="softmax")]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def accuracy(model, test) -> float:
    x, y = test
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))


@pytest.fixture(scope="module")
def iid():
    return load_digits_clients(3, "iid", seed=SEED)


@pytest.fixture(scope="module")
def centralized_accuracy(iid):
    """Plaintext Keras training on the union of the clients' data, same total epochs."""
    clients, test = iid
    model = build_model()
    x = np.concatenate([x for x, _ in clients.values()])
    y = np.concatenate([y for _, y in clients.values()])
    model.fit(x, y, epochs=ROUNDS * LOCAL_EPOCHS, batch_size=32, verbose=0)
    return accuracy(model, test)


def test_iid_accuracy_within_two_points_of_centralized(secure_backend, iid, centralized_accuracy, record_property):
    clients, test = iid
    model = build_model()
    history = fit_federated(
        model, secure_backend.name, clients, rounds=ROUNDS, local_epochs=LOCAL_EPOCHS, validation_data=test,
        verbose=0, seed=SEED,
    )
    federated = accuracy(model, test)
    print(f"\nIID, 3 clients, {secure_backend.name}: federated {federated:.4f}, centralized {centralized_accuracy:.4f}")
    record_property("federated_accuracy", federated)
    assert federated >= centralized_accuracy - 0.02
    h = history.history
    assert len(h["loss"]) == ROUNDS and h["clients_used"] == [3.0] * ROUNDS and h["clients_dropped"] == [0.0] * ROUNDS
    assert h["val_accuracy"][-1] == pytest.approx(federated, abs=1e-6)
    assert h["accuracy"][-1] > 0.9 and h["bytes_per_party"][-1] > 8 * model.count_params()


def test_non_iid_figure(secure_backend, centralized_accuracy, record_property):
    """McMahan's pathological split: sorted by label, 2 shards per client (each client sees 4 of 10 classes)."""
    clients, test = load_digits_clients(3, "shards", seed=SEED, shards_per_client=2)
    classes = [len(np.unique(y)) for _, y in clients.values()]
    model = build_model()
    fit_federated(model, secure_backend.name, clients, rounds=ROUNDS, local_epochs=LOCAL_EPOCHS, verbose=0, seed=SEED)
    federated = accuracy(model, test)
    print(
        f"\nnon-IID (2 label shards per client, classes per client {classes}), "
        f"{secure_backend.name}: federated {federated:.4f} (IID centralized {centralized_accuracy:.4f})"
    )
    record_property("non_iid_accuracy", federated)
    assert max(classes) <= 5  # the split is label-skewed
    assert federated > 0.75


def small_run(model, clients, backend=None, **kwargs):
    if backend is None:
        if not SECURE_BACKENDS:
            pytest.skip("no secure backend installed")
        backend = SECURE_BACKENDS[0]
    options = dict(rounds=2, local_epochs=1, verbose=0, seed=SEED)
    options.update(kwargs)
    return fit_federated(model, backend, clients, **options)


@pytest.fixture
def backend_name(secure_backend):
    return secure_backend.name


def test_injected_failures_drop_clients_without_stopping_rounds(iid, backend_name):
    clients, test = iid

    def injector(round_index, client, phase):
        if round_index == 0 and client == "client1" and phase == "train":
            raise ConnectionError("client1 went offline")
        if round_index == 1 and client == "client2" and phase == "mid_share":
            raise ConnectionError("client2 died while sharing")

    model = build_model()
    start = [w.copy() for w in model.get_weights()]
    # round_timeout_s also bounds the aggregators' wait for client2's missing share; 10 s leaves
    # room for local training on a loaded 2-core host (3 s did not)
    history = small_run(model, clients, backend_name, failure_injector=injector, round_timeout_s=10.0)
    assert history.history["clients_used"] == [2.0, 2.0]
    assert history.history["clients_dropped"] == [1.0, 1.0]
    first, second = history.federated_rounds
    assert first["included"] == ["client0", "client2"] and "client1 went offline" in first["dropped"]["client1"]
    assert second["included"] == ["client0", "client1"] and "partial share was discarded" in second["dropped"]["client2"]
    assert not np.allclose(model.get_weights()[0], start[0])
    assert accuracy(model, test) > 0.5


def test_fewer_than_min_clients_fails_clearly(iid):
    clients, _ = iid

    def injector(round_index, client, phase):
        if client != "client0":
            raise RuntimeError(f"{client} crashed")

    with pytest.raises(TooFewClientsError, match="min_clients=2"):
        small_run(build_model(), clients, failure_injector=injector)


def test_secure_and_trusted_aggregation_agree(iid, backend_name):
    clients, _ = iid
    secure, trusted = build_model(), build_model()
    small_run(secure, clients, backend_name)
    small_run(trusted, clients, "plaintext", secure_aggregation=False)
    for a, b in zip(secure.get_weights(), trusted.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_runs_are_reproducible_without_noise_and_noised_with_it(iid):
    clients, _ = iid
    plain = [build_model(), build_model()]
    for model in plain:
        small_run(model, clients, clip_norm=5.0)
    for a, b in zip(plain[0].get_weights(), plain[1].get_weights()):
        np.testing.assert_array_equal(a, b)
    noised = [build_model(), build_model()]
    histories = [small_run(model, clients, clip_norm=5.0, noise_multiplier=1.0) for model in noised]
    assert not np.allclose(noised[0].get_weights()[0], noised[1].get_weights()[0])
    history = histories[0]
    eps = history.history["epsilon"]
    assert len(eps) == 2 and 0 < eps[0] < eps[1] and history.privacy["epsilon"] == eps[1]
    assert history.privacy["delta"] == 1e-5 and "RdpAccountant" in history.privacy["accountant"]
    assert "loss" not in history.history  # training metrics are not released under DP


def test_callbacks_see_each_round_and_can_stop(iid):
    clients, _ = iid
    seen = []

    class StopAfterFirst(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, sorted(logs)))
            self.model.stop_training = True

    history = small_run(build_model(), clients, callbacks=[StopAfterFirst()], rounds=3)
    assert len(seen) == 1 and "clients_used" in seen[0][1] and "loss" in seen[0][1]
    assert history.epoch == [0]


def test_progress_bar_per_round(iid, capsys):
    clients, _ = iid
    small_run(build_model(), clients, verbose=1)
    out = capsys.readouterr().out
    assert "Round 1/2" in out and "Round 2/2" in out
    # counters print as the integers they are, not as Progbar's averaged floats (0.0000e+00)
    assert "clients_used: 3 - clients_dropped: 0 - bytes_per_party: " in out
    assert "e+00" not in out and "clients_used: 3.0" not in out


def few(clients, n=24):
    return {name: (x[:n], y[:n]) for name, (x, y) in clients.items()}


def test_fit_epochs_means_rounds(iid, backend_name):
    from frontends.keras import privatize

    clients, _ = iid
    private = privatize(build_model(), privacy="federated", backend=backend_name, local_epochs=1)
    history = private.fit(few(clients), epochs=2, batch_size=8, verbose=0)
    assert len(history.history["loss"]) == 2 and history.epoch == [0, 1]
    assert history.params["epochs"] == 2 and history.params["rounds"] == 2
    assert history.params["epochs_are"] == "rounds" and history.params["local_epochs"] == 1
    assert len(history.federated_rounds) == 2
    # the same number twice is fine; two different numbers are refused before any training
    private = privatize(build_model(), privacy="federated", backend=backend_name, rounds=1)
    assert len(private.fit(few(clients), epochs=1, batch_size=8, verbose=0).history["loss"]) == 1
    with pytest.raises(ValueError, match=r"fit\(epochs=3\).*rounds=1.*local_epochs="):
        private.fit(few(clients), epochs=3, verbose=0)
    with pytest.raises(ValueError, match="positive integer, received 0"):
        private.fit(few(clients), rounds=None, epochs=0, verbose=0)


def test_errors(iid):
    clients, _ = iid
    with pytest.raises(BackendError, match="secure_aggregation=False"):
        small_run(build_model(), clients, "plaintext")
    uncompiled = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="compiled model"):
        small_run(uncompiled, clients)
    with pytest.raises(TypeError, match="client_name"):
        small_run(build_model(), clients["client0"])
    with pytest.raises(ValueError, match="needs clip_norm"):
        small_run(build_model(), clients, noise_multiplier=1.0)
