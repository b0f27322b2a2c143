"""Encrypted logistic regression on load_breast_cancer (a stand-in for genetic data).

Two hospitals hold patients' features and diagnoses; neither may see the other's.
They train one logistic regression under MPC; the model owner gets the weights.

    python examples/logistic_regression.py [--quick] [--backend tf-pond]
"""

import argparse

import keras
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from privacy_bridge import privatize

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true")
parser.add_argument("--backend", default=None)
args = parser.parse_args()

x, y = load_breast_cancer(return_X_y=True)
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
scaler = StandardScaler().fit(x_train)
x_train, x_test = scaler.transform(x_train).astype("float32"), scaler.transform(x_test).astype("float32")
y_train, y_test = y_train.astype("float32").reshape(-1, 1), y_test.astype("float32").reshape(-1, 1)
half = len(x_train) // 2
data = {"hospital_a": (x_train[:half], y_train[:half]), "hospital_b": (x_train[half:], y_train[half:])}

keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((30,)), keras.layers.Dense(1, activation="sigmoid")])
model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="binary_crossentropy", metrics=["accuracy"])

private = privatize(model, privacy="encrypted_training", backend=args.backend)
private.fit(data, epochs=1 if args.quick else 5, batch_size=32, verbose=0 if args.quick else "auto")

_, accuracy = model.evaluate(x_test, y_test, verbose=0)
print(f"backend: {private.backend.name}")
print(f"test accuracy of the privately trained logistic regression: {accuracy:.4f}")
