"""Benchmark: a federated run vs the same local training with no aggregation at all.

Workload: ``load_digits`` split IID between 3 clients, a 64-32-10 ReLU MLP compiled
with Adam, ``rounds`` rounds of one local epoch.  The federated run is
``fit_federated`` end to end (sampling, local training, secure aggregation on the
backend's kernels, averaging); the baseline makes exactly the same local ``fit``
calls with the same trainer and never aggregates.  ``ratio`` = federated / baseline
(goal: <= 1.2).  Each side is timed ``repeats`` times after one warm-up fit; the
fastest is kept.

The workload is a Keras model, so this imports the Keras front end lazily (the one
benchmark that needs a front end); ``privacy-bridge bench`` calls ``federated_bench``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bridge.federated.fedavg import sample_clients


def digits_mlp(seed: int = 0) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10, activation="softmax")]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def federated_bench(
    backend_name: str = "torch-spdz",
    *,
    rounds: int = 5,
    local_epochs: int = 1,
    num_clients: int = 3,
    secure_aggregation: bool = True,
    repeats: int = 3,
    quick: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """One row: wall time of FedAvg with (secure) aggregation vs local training alone."""
    from bridge.registry import get_backend

    if secure_aggregation:
        get_backend(backend_name).make_kernels()  # loads torch before TensorFlow where both are used
    from bridge.federated.splits import load_digits_clients
    from frontends.keras.federated import KerasLocalTrainer, fit_federated

    if quick:
        rounds, repeats = min(rounds, 3), 1
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, received {repeats}")
    clients, (x_test, y_test) = load_digits_clients(num_clients, "iid", seed=seed)
    names = list(clients)
    warm = digits_mlp(seed)
    KerasLocalTrainer(warm, clients, local_epochs=1, seed=seed)(names[0], warm.get_weights(), 0)

    federated_s, baseline_s = [], []
    for _ in range(repeats):
        model = digits_mlp(seed)
        start = time.perf_counter()
        history = fit_federated(
            model, backend_name, clients, rounds=rounds, local_epochs=local_epochs,
            secure_aggregation=secure_aggregation, verbose=0, seed=seed,
        )
        federated_s.append(time.perf_counter() - start)

        local = digits_mlp(seed)
        weights = local.get_weights()
        start = time.perf_counter()
        trainer = KerasLocalTrainer(local, clients, local_epochs=local_epochs, seed=seed)
        for r in range(rounds):
            for client in sample_clients(names, 1.0, seed, r):
                trainer(client, weights, r)
        baseline_s.append(time.perf_counter() - start)

    accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), axis=1) == y_test))
    fed, base = min(federated_s), min(baseline_s)
    return {
        "workload": f"fedavg_digits_{num_clients}clients",
        "backend": backend_name if secure_aggregation else "trusted aggregator",
        "rounds": rounds,
        "wall_s": fed,
        # FedAvg's secure aggregation uses pairwise masks agreed by the clients, no dealer material:
        # nothing to make ahead, all of it is online
        "online_s": fed,
        "offline_s": 0.0,
        "local_training_s": base,
        "ratio": fed / base,
        "bytes_per_party": int(history.history["bytes_per_party"][-1]),
        "upload_bytes": int(history.history["upload_bytes"][-1]),
        "test_accuracy": accuracy,
    }
