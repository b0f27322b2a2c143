"""Encrypted training: a model owner and two data owners, alice and bob.

The model owner secret-shares its initial model; alice and bob secret-share their
private data and labels; forward, backward and SGD run on shares between two
compute servers; only the model owner receives the trained weights.

    python examples/encrypted_training.py [--quick] [--backend tf-pond]

Each party in its own process (on one host):

    privacy-bridge launch --cluster examples/training_cluster.toml -- examples/encrypted_training.py --quick
"""

import argparse

import keras
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from privacy_bridge import privatize

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true")
parser.add_argument("--backend", default=None)
args = parser.parse_args()

x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype("float32")
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
if args.quick:
    x_train, y_train = x_train[:600], y_train[:600]
half = len(x_train) // 2
data = {"alice": (x_train[:half], y_train[:half]), "bob": (x_train[half:], y_train[half:])}

# --- the model owner's plain Keras program ---------------------------------------------
keras.utils.set_random_seed(0)
model = keras.Sequential([
    keras.Input((64,)),
    keras.layers.Dense(64, activation="relu"),
    keras.layers.Dense(10, activation="softmax"),
])
model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])

# --- the one line that makes it private ------------------------------------------------
private = privatize(model, privacy="encrypted_training", backend=args.backend)
history = private.fit(data, epochs=2 if args.quick else 10, batch_size=32, verbose=0 if args.quick else "auto")

print(f"backend: {private.backend.name}")
if history.received_weights:  # the trained weights are back in the Keras model of the model owner
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"training loss per epoch: {[round(v, 4) for v in history.history['loss']]}")
    print(f"test accuracy after encrypted training: {accuracy:.4f}")
