"""Federated learning across hospitals with label-skewed (non-IID) data.

Each hospital keeps its patients' records and trains the shared Keras model locally;
only the securely aggregated update (the sum of all hospitals' updates, opened to
the model owner) ever leaves them.  Here load_digits stands in for the records and
each hospital sees a Dirichlet(0.5) skew of the classes.

    python examples/federated_hospitals.py [--quick] [--backend tf-pond] [--dp]

Each hospital, each aggregator and the model owner in its own process (on one host):

    privacy-bridge launch --cluster examples/federated_cluster.toml -- examples/federated_hospitals.py --quick
"""

import argparse

import keras
import numpy as np

from bridge.federated.splits import load_digits_clients
from privacy_bridge import privatize

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true")
parser.add_argument("--backend", default=None)
parser.add_argument("--dp", action="store_true", help="clip updates and add Gaussian noise to the aggregate")
args = parser.parse_args()

clients, (x_test, y_test) = load_digits_clients(num_clients=4, split="dirichlet", alpha=0.5, seed=0)
hospitals = {f"hospital_{chr(ord('a') + i)}": data for i, data in enumerate(clients.values())}
for name, (_, y) in hospitals.items():
    print(f"{name}: {len(y)} records, class counts {np.bincount(y, minlength=10).tolist()}")

# --- the plain Keras program --------------------------------------------------------
keras.utils.set_random_seed(0)
model = keras.Sequential([
    keras.Input((64,)),
    keras.layers.Dense(32, activation="relu"),
    keras.layers.Dense(10, activation="softmax"),
])
model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])

# --- the one line that makes it private ------------------------------------------------
dp = {"clip_norm": 1.0, "noise_multiplier": 0.5} if args.dp else {}
private = privatize(model, privacy="federated", backend=args.backend,
                    rounds=8 if args.quick else 15, local_epochs=1, secure_aggregation=True, **dp)
history = private.fit(hospitals, batch_size=32, verbose=0 if args.quick else "auto")

print(f"backend: {private.backend.name}")
if history.received_weights:  # an aggregator's process never sees the model
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"test accuracy of the federated model (non-IID hospitals): {accuracy:.4f}")
if "epsilon" in history.history:
    print(f"differential privacy: epsilon={history.history['epsilon'][-1]:.2f}")
