"""The federated user script the distributed tests run: embedded, or as one party under ``launch``.

    federated_script.py CLIENTS ROUNDS [kill CLIENT]

A small Keras model, FedAvg over CLIENTS clients (alice, bob, carol, ... in that
order) with secure aggregation; each process prints one ``RESULT`` line with what it
ended with.  With ``kill CLIENT``, that client's process SIGKILLs itself in round 1
after its first share reached aggregator 0 (a crash mid-protocol).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np

import keras  # noqa: E402
from frontends.keras import privatize  # noqa: E402

NAMES = ("alice", "bob", "carol", "dave")


def client_data(index: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(10 + index)
    x = rng.uniform(-1.0, 1.0, size=(40, 6)).astype("float32")
    return x, np.argmax(x[:, :3], axis=1)


def main() -> None:
    clients, rounds = int(sys.argv[1]), int(sys.argv[2])
    victim = sys.argv[4] if sys.argv[3:4] == ["kill"] else None
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    data = {name: client_data(i) for i, name in enumerate(NAMES[:clients])}

    def injector(round_index: int, client: str, phase: str) -> None:
        if client == victim and round_index == 0 and phase == "mid_share":
            os.kill(os.getpid(), signal.SIGKILL)

    private = privatize(model, privacy="federated", rounds=rounds, min_clients=2)
    history = private.fit(data, batch_size=10, verbose=0, failure_injector=injector)
    print("RESULT " + json.dumps({
        "party": os.environ.get("PRIVACY_BRIDGE_PARTY", "embedded"),
        "logs": history.history,
        "rounds": history.federated_rounds,
        "weights": [w.tolist() for w in model.get_weights()],
    }), flush=True)


if __name__ == "__main__":
    main()
