"""Encrypted serving of a pretrained model.

A model owner trained a digit classifier; a client wants predictions without showing
its images, and the owner does not want to hand over its weights.  The weights are
secret-shared once to two compute servers; each batch of the client's images is
secret-shared; only the client can open the predictions.

    python examples/encrypted_serving.py [--quick] [--backend tf-pond]
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

# --- the model owner's plain Keras program ---------------------------------------------
keras.utils.set_random_seed(0)
model = keras.Sequential([
    keras.Input((64,)),
    keras.layers.Dense(64, activation="relu"),
    keras.layers.Dense(10, activation="softmax"),
])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x_train, y_train, epochs=3 if args.quick else 20, batch_size=32, verbose=0)

# --- the one line that makes it private ------------------------------------------------
private = privatize(model, privacy="encrypted_serving", backend=args.backend)

n = 64 if args.quick else len(x_test)
scores = private.evaluate(x_test[:n], y_test[:n], batch_size=64, verbose=0)
stats = private.last_stats
print(f"backend: {private.backend.name}")
if scores is not None:  # only the client receives predictions (one process per party: its process)
    loss, accuracy = scores
    plain_loss, plain_accuracy = model.evaluate(x_test[:n], y_test[:n], verbose=0)
    print(f"encrypted accuracy {accuracy:.4f} (plaintext {plain_accuracy:.4f}) on {n} test images")
for server in private.program.placement.compute_parties:
    if stats.total_bytes(server):  # each process counts its own party's traffic
        print(f"compute server {server} sent {stats.total_bytes(server) / 1e6:.2f} MB "
              f"in {stats.total_rounds(server)} rounds")
