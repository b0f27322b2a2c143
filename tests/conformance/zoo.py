"""The model zoo of the foundation issue, built in Keras with seeded, non-trivial weights.

Run as a script (``python -m tests.conformance.zoo OUT``) under a chosen
``KERAS_BACKEND`` to export every zoo model's Program, inputs and Keras
predictions, so that another process can serve them on another framework.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SEED = 3


def mlp():
    import keras

    keras.utils.set_random_seed(SEED)
    return keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(12, activation="tanh"),
            keras.layers.Dense(5, activation="softmax"),
        ],
        name="mlp",
    )


def lenet():
    import keras

    keras.utils.set_random_seed(SEED)
    return keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.AveragePooling2D(2),
            keras.layers.Conv2D(6, 3, padding="same"),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="relu"),
            keras.layers.Dense(3),
        ],
        name="lenet",
    )


def residual_bn():
    import keras

    keras.utils.set_random_seed(SEED)
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    skip = keras.layers.Conv2D(4, 1)(inputs)
    h = keras.layers.Add()([h, skip])
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(3, activation="sigmoid")(h)
    model = keras.Model(inputs, outputs, name="residual_bn")
    bn = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    rng = np.random.default_rng(SEED)
    gamma, beta = rng.uniform(0.5, 1.5, 4), rng.normal(size=4) * 0.2
    mean, var = rng.normal(size=4) * 0.3, rng.uniform(0.5, 2.0, 4)
    bn.set_weights([gamma, beta, mean, var])
    return model


ZOO = {"mlp": mlp, "lenet": lenet, "residual_bn": residual_bn}


def zoo_input(name: str, batch: int = 6) -> np.ndarray:
    shapes = {"mlp": (20,), "lenet": (12, 12, 1), "residual_bn": (6, 6, 2)}
    return np.random.default_rng(11).uniform(-1, 1, size=(batch, *shapes[name])).astype(np.float32)


def export_all(out: Path) -> None:
    from bridge.ir import save_program
    from frontends.keras.importer import to_ir

    for name, build in ZOO.items():
        model = build()
        program, weights = to_ir(model)
        save_program(out / name, program, weights)
        x = zoo_input(name)
        np.save(out / name / "x.npy", x)
        np.save(out / name / "keras.npy", model.predict(x, verbose=0))


if __name__ == "__main__":
    export_all(Path(sys.argv[1]))
