"""A model trained in plaintext Keras on real data (scikit-learn's load_digits: 1,797 8x8
handwritten digits), then served encrypted: the class each held-out image gets must be the
one ``model.predict`` gives (>= 99% of the images), and the probabilities must be within the
zoo tolerance of ``model.predict``'s.

The CNN has what real image models have: rescaling of raw pixels, 'same' padding, batch
normalization (trained, so its moving statistics are not (0, 1)), max and average pools and
a softmax.  It is trained once per test module (six epochs, a few seconds).  The default run serves 100
held-out images on every backend; the slow run serves all 500.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from frontends.keras import privatize
from tests.conformance.test_zoo import ZOO_TOLERANCE
from tests.conftest import SECURE_BACKENDS

#: images held out of training (the last ones of load_digits), all served in the slow run
HELD_OUT = 500
#: the default run's slice of them
SHORT = 100
#: the share of held-out images whose class must match model.predict's
AGREEMENT = 0.99


def _digits_cnn() -> Any:
    import keras

    keras.utils.set_random_seed(3)
    x = keras.Input((8, 8, 1))
    h = keras.layers.Rescaling(1.0 / 16)(x)  # load_digits pixels are 0..16
    h = keras.layers.Conv2D(16, 3, padding="same")(h)
    h = keras.layers.BatchNormalization(momentum=0.9)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = keras.layers.BatchNormalization(momentum=0.9)(h)
    h = keras.layers.AveragePooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(10, activation="softmax")(h)
    model = keras.Model(x, out)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def trained() -> tuple[Any, np.ndarray, np.ndarray]:
    """(model, held-out images, their labels): trained on the first 1,297 digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32)[..., None]
    labels = digits.target.astype(np.int64)
    model = _digits_cnn()
    model.fit(images[:-HELD_OUT], labels[:-HELD_OUT], epochs=6, batch_size=32, verbose=0)
    return model, images[-HELD_OUT:], labels[-HELD_OUT:]


def test_the_plaintext_model_learned_the_digits(trained):
    """A model that learned nothing would make argmax agreement trivial (or meaningless)."""
    model, x, y = trained
    accuracy = float((model.predict(x, verbose=0).argmax(-1) == y).mean())
    assert accuracy >= 0.9, f"the digits CNN reached only {accuracy:.1%} on held-out images"


def _check_served(model: Any, x: np.ndarray, backend_name: str) -> None:
    expected = model.predict(x, verbose=0)
    got = privatize(model, privacy="encrypted_serving", backend=backend_name).predict(x, batch_size=100, verbose=0)
    assert got.shape == expected.shape
    agreement = float((got.argmax(-1) == expected.argmax(-1)).mean())
    assert agreement >= AGREEMENT, f"{backend_name}: argmax agrees on {agreement:.1%} of {len(x)} images"
    np.testing.assert_allclose(got, expected, atol=ZOO_TOLERANCE, rtol=0)


@pytest.mark.parametrize("backend_name", SECURE_BACKENDS)
def test_served_digits_agree_with_predict(trained, backend_name):
    model, x, _ = trained
    _check_served(model, x[:SHORT], backend_name)


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", SECURE_BACKENDS)
def test_served_digits_agree_with_predict_on_every_held_out_image(trained, backend_name):
    model, x, _ = trained
    _check_served(model, x, backend_name)
