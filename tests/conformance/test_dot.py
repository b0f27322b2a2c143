"""keras.layers.Dot imported as the ops it is (a product and a feature sum for (batch, n)
operands; a batched matmul with the contracted axes moved into place for (batch, n, d)): the
reference equals ``model.predict`` for every axes pairing, encrypted serving matches on both
backends, and normalize=True / mixed ranks are refused by name."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from bridge.reference import run_reference
from frontends.keras import privatize, to_ir
from frontends.keras.importer import UnsupportedLayerError
from tests.conftest import SECURE_BACKENDS

CASES = {
    "vectors": ([(5,), (5,)], 1),
    "last_last": ([(4, 6), (3, 6)], (2, 2)),
    "first_first": ([(4, 6), (4, 2)], (1, 1)),
    "last_first": ([(4, 6), (6, 2)], (2, 1)),
    "first_last": ([(4, 6), (3, 4)], (1, 2)),
    "negative": ([(4, 6), (3, 6)], -1),
}


def _model(shapes, axes, normalize: bool = False) -> keras.Model:
    inputs = [keras.Input(s) for s in shapes]
    return keras.Model(inputs, keras.layers.Dot(axes=axes, normalize=normalize)(inputs))


def _inputs(shapes, batch: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.normal(size=(batch, *s)).astype("float32") for s in shapes]


@pytest.mark.parametrize("case", sorted(CASES))
def test_dot_reference_matches_predict(case):
    shapes, axes = CASES[case]
    model = _model(shapes, axes)
    xs = _inputs(shapes)
    program, weights = to_ir(model)
    (got,) = run_reference(program, weights, dict(zip(program.graph.inputs, xs))).values()
    expected = model.predict(xs, verbose=0)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend_name", SECURE_BACKENDS)
@pytest.mark.parametrize("case", ["vectors", "first_last"])
def test_dot_encrypted_matches_predict(backend_name, case):
    shapes, axes = CASES[case]
    model = _model(shapes, axes)
    xs = _inputs(shapes)
    got = privatize(model, privacy="encrypted_serving", backend=backend_name).predict(xs, verbose=0)
    # one Beaver product and its truncation: a few units of 2^-16 per term
    np.testing.assert_allclose(got, model.predict(xs, verbose=0), atol=2e-3, rtol=0)


@pytest.mark.parametrize("shapes, axes, option", [
    ([(5,), (5,)], 1, "normalize=True"),
    ([(5,), (4, 5)], -1, "inputs of shapes"),
    ([(2, 3, 4), (2, 3, 4)], (3, 3), "inputs of shapes"),
])
def test_dot_refusals_name_the_problem(shapes, axes, option):
    model = _model(shapes, axes, normalize=option == "normalize=True")
    with pytest.raises(UnsupportedLayerError, match="Dot") as raised:
        to_ir(model)
    assert option in str(raised.value)
