"""A refused or failed query leaves every party and randomness stream in step: the next
good query is right (trust issue, finding 3: one refused batch used to shift the dealer's
streams against the compute parties', and every later answer was off by ~3e9)."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.mpc.fixedpoint import FixedPointError
from bridge.reference import run_reference
from tests.distributed.models import tiny_mlp

ATOL = 2e-3


def _good(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(4, 6))


def _refused(kind: str) -> np.ndarray:
    bad = _good(9)
    bad[2, 3] = np.nan if kind == "nan" else 3.0e14  # beyond the fixed-point range 2^47
    return bad


@pytest.mark.parametrize("kind", ["nan", "out_of_range"])
def test_good_refused_good(secure_backend, kind):
    program, weights = tiny_mlp()
    executable = secure_backend.prepare(program, weights)
    try:
        for seed in (1, 2):
            expected = run_reference(program, weights, {"x": _good(seed)})["y"]
            np.testing.assert_allclose(executable.run({"x": _good(seed)}).outputs["y"], expected, atol=ATOL)
            with pytest.raises(FixedPointError, match="input|x"):
                executable.run({"x": _refused(kind)})
        expected = run_reference(program, weights, {"x": _good(3)})["y"]
        np.testing.assert_allclose(executable.run({"x": _good(3)}).outputs["y"], expected, atol=ATOL)
    finally:
        executable.close()


def test_failure_inside_a_run_leaves_streams_in_step(secure_backend):
    """Without the up-front input check, the client refuses its input inside the run, while
    the dealer has already drawn and sent its material for the whole query: the next query
    must still be right (each run draws from its own streams)."""
    program, weights = tiny_mlp()
    executable = secure_backend.prepare(program, weights)
    executable._encode_local_inputs = lambda inputs: {n: np.asarray(v, dtype=np.float64) for n, v in inputs.items()}
    try:
        executable.run({"x": _good(1)})
        for _ in range(2):
            with pytest.raises(FixedPointError):
                executable.run({"x": _refused("nan")})
        expected = run_reference(program, weights, {"x": _good(4)})["y"]
        np.testing.assert_allclose(executable.run({"x": _good(4)}).outputs["y"], expected, atol=ATOL)
    finally:
        executable.close()


def test_keras_predict_good_refused_good(secure_backend):
    """The same through the public API: privatize(...).predict."""
    import keras

    from frontends.keras import privatize

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    private = privatize(model, "encrypted_serving", backend=secure_backend.name)
    x = _good(5).astype(np.float32)
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(private.predict(x, verbose=0), expected, atol=ATOL)
    with pytest.raises(FixedPointError):
        private.predict(_refused("nan").astype(np.float32), verbose=0)
    np.testing.assert_allclose(private.predict(x, verbose=0), expected, atol=ATOL)
