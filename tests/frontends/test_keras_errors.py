"""What predict says and returns for inputs a Keras user passes by habit: one sample, no samples,
a bad batch_size.  Every private mode that serves, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from frontends.keras import privatize  # noqa: E402
from tests.conftest import SECURE_BACKENDS  # noqa: E402

#: (privacy, backend) pairs that run predict through the IR
SERVING = [("none", "plaintext")] + [("encrypted_serving", b) for b in SECURE_BACKENDS]


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(12, activation="relu"), keras.layers.Dense(10)])


@pytest.mark.parametrize(("privacy", "backend"), SERVING)
def test_a_single_sample_is_reported_with_the_shape_the_user_passed(model, privacy, backend):
    private = privatize(model, privacy=privacy, backend=backend)
    sample = np.zeros(64, np.float32)
    with pytest.raises(ValueError) as info:
        private.predict(sample, verbose=0)
    message = str(info.value)
    assert "received one sample of shape (64,)" in message and "(batch, 64)" in message
    assert "x[None]" in message and "(32,)" not in message
    with pytest.raises(ValueError, match=r"expected shape \(batch, 64\), received \(5, 63\)"):
        private.predict(np.zeros((5, 63), np.float32), verbose=0)
    # the advice works: one sample as a batch of one
    got = private.predict(sample[None], verbose=0)
    np.testing.assert_allclose(got, model.predict(sample[None], verbose=0), atol=5e-3)


@pytest.mark.parametrize(("privacy", "backend"), SERVING)
def test_an_empty_batch_gives_an_empty_array_of_the_output_shape(model, privacy, backend):
    private = privatize(model, privacy=privacy, backend=backend)
    out = private.predict(np.zeros((0, 64), np.float32), verbose=0)
    assert isinstance(out, np.ndarray) and out.shape == (0, 10) and out.dtype == np.float32
    assert private.last_stats is None  # nothing was shared or sent
    with pytest.raises(ValueError, match="0 samples"):
        private.evaluate(np.zeros((0, 64), np.float32), np.zeros((0,), np.int64), verbose=0)


@pytest.mark.parametrize(("privacy", "backend"), SERVING)
@pytest.mark.parametrize("batch_size", [-1, 0, 2.5, True])
def test_a_bad_batch_size_is_refused(model, privacy, backend, batch_size):
    private = privatize(model, privacy=privacy, backend=backend)
    with pytest.raises(ValueError, match=rf"batch_size must be a positive integer .*received {batch_size!r}"):
        private.predict(np.zeros((3, 64), np.float32), batch_size=batch_size, verbose=0)
