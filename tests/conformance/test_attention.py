"""The documented error bounds of LayerNorm, exponential and MultiHeadAttention, checked at the
edges of their ranges on every secure backend (``test_ops`` checks typical inputs)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bridge.ir import ops as irops
from bridge.mpc.normalization import EXP_CEIL
from bridge.reference import run_reference
from tests.conformance.cases import _case, _w
from tests.conformance.test_ops import run_on
from tests.conftest import SECURE_BACKENDS

F = 2.0**-16


def _run(backend_name: str, case, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    case = type(case)(case.name, case.kind, case.program, case.weights, inputs)
    return run_on(backend_name, case), run_reference(case.program, case.weights, inputs)["y"]


@pytest.mark.parametrize("backend_name", SECURE_BACKENDS)
def test_exponential_is_within_its_relative_bound_and_saturates_above_the_ceiling(backend_name):
    case = _case("exp", irops.Exp(), [(40,)])
    x = np.concatenate([np.linspace(-20.0, EXP_CEIL, 38), [EXP_CEIL + 2.0, 30.0]])[None]
    got, _ = _run(backend_name, case, {"x0": x})
    inside = x[0] <= EXP_CEIL
    want = np.exp(x[0][inside])
    error = np.abs(got[0][inside] - want)
    assert np.all(error <= 1e-3 * want + 2e-3), float(np.max(error / (want + 1)))
    # above the ceiling: e^EXP_CEIL (documented saturation), not a wrapped ring value
    np.testing.assert_allclose(got[0][~inside], math.exp(EXP_CEIL), rtol=1e-3)


@pytest.mark.parametrize("backend_name", SECURE_BACKENDS)
def test_layer_norm_bound_holds_for_tiny_huge_and_constant_rows(backend_name):
    """Rows of standard deviation 1e-2 and 300 and a constant row, gamma = 1 and beta = 0: the
    documented bound 1.5e-4 |y| + 3 2^-16 + (1.5 2^-16 + N 2^-25 |mean|) / std."""
    n = 6
    case = _case("layer_norm", irops.LayerNorm(epsilon=1e-5), [(n,)],
                 {"gamma": np.ones(n), "beta": np.zeros(n)})
    rng = np.random.default_rng(3)
    rows = np.stack([rng.normal(0.0, 1e-2, n), rng.normal(50.0, 300.0, n), np.full(n, 7.25), rng.normal(0, 1, n)])
    got, want = _run(backend_name, case, {"x0": rows})
    std = np.sqrt(rows.var(axis=1, keepdims=True) + 1e-5)
    mean = np.abs(rows.mean(axis=1, keepdims=True))
    bound = 1.5e-4 * np.abs(want) + 3 * F + (1.5 * F + n * 2.0**-25 * mean) / std
    assert np.all(np.abs(got - want) <= bound), np.abs(got - want) / bound
    # a constant row normalizes to beta = 0, up to the mean's one unit of truncation (2^-16, which
    # the probabilistic truncation adds or not) over sqrt(eps): the same value in every column
    assert np.all(np.abs(got[2]) <= 3 * F + 1.5 * F / np.sqrt(1e-5)), got[2]
    assert np.ptp(got[2]) <= 2 * F, got[2]



def _attention_case(causal: bool, steps: int = 6):
    weights = {"query_kernel": _w(4, 2, 3, seed=4), "key_kernel": _w(4, 2, 3, seed=5),
               "value_kernel": _w(4, 2, 3, seed=6), "output_kernel": _w(2, 3, 4, seed=7),
               "query_bias": _w(2, 3, seed=8), "key_bias": _w(2, 3, seed=9), "value_bias": _w(2, 3, seed=10),
               "output_bias": _w(4, seed=11)}
    op = irops.MultiHeadAttention(num_heads=2, key_dim=3, value_dim=3, causal=causal)
    return _case("mha", op, [(steps, 4), (steps, 4)], weights)


@pytest.mark.parametrize("backend_name", SECURE_BACKENDS)
def test_causal_attention_never_reads_later_steps(backend_name):
    """Changing steps 3.. of the input leaves steps 0..2 of the output alone (up to rounding): an
    unmasked or wrongly masked implementation moves them by far more than the tolerance."""
    case = _attention_case(causal=True)
    x = np.random.default_rng(5).normal(size=(1, 6, 4))
    later = x.copy()
    later[:, 3:] += 40.0 * np.random.default_rng(6).normal(size=(1, 3, 4))
    got, want = _run(backend_name, case, {"x0": x, "x1": x})
    got_later, want_later = _run(backend_name, case, {"x0": later, "x1": later})
    np.testing.assert_allclose(want_later[:, :3], want[:, :3], atol=1e-12)  # the reference's causality
    assert np.max(np.abs(want_later[:, 3:] - want[:, 3:])) > 1.0  # the change matters where it may
    np.testing.assert_allclose(got_later[:, :3], got[:, :3], atol=2e-2, rtol=0)
    np.testing.assert_allclose(got, want, atol=2e-2, rtol=0)


@pytest.mark.parametrize("backend_name", SECURE_BACKENDS)
def test_attention_over_longer_sequences_stays_within_tolerance(backend_name):
    case = _attention_case(causal=False, steps=16)
    x = np.random.default_rng(8).normal(size=(2, 16, 4))
    got, want = _run(backend_name, case, {"x0": x, "x1": x[::-1].copy()})
    np.testing.assert_allclose(got, want, atol=2e-2, rtol=0)


# -- cost: rounds exact, comparisons per row ----------------------------------------------------------

def _op_stats(case) -> dict[str, tuple[int, int]]:
    from bridge.registry import get_backend

    executable = get_backend("torch-spdz").prepare(case.program, case.weights)
    try:
        stats = executable.run(case.inputs).stats.snapshot()["server0"]
    finally:
        executable.close()
    return {label: value for label, value in stats.items() if label.split("/")[0] == "op"}


def test_layer_norm_costs_22_rounds_and_compares_once_per_row():
    """1 (square) + 19 (div_sqrt with its numerator) + 1 (d s) + 1 (gamma), whatever the row width;
    the comparison bytes depend on the number of rows only (not on N)."""
    costs = []
    for width in (4, 64):
        case = _case("layer_norm", irops.LayerNorm(), [(3, width)], {"gamma": _w(width), "beta": _w(width, seed=2)})
        stats = _op_stats(case)
        compare = sum(b for label, (b, _) in stats.items() if "/compare" in label)
        costs.append((sum(r for _, r in stats.values()), compare))
    assert costs[0][0] == costs[1][0] == 22
    assert costs[0][1] == costs[1][1] > 0


def test_attention_rounds_grow_by_one_comparison_level_when_keys_double():
    """Softmax's max over S keys is a tree of ceil(log2 S) comparison levels (5 rounds each) and its
    reciprocal on [1, S] one more Newton iteration (2 rounds) from S = 4 to 8; the projections and the
    two secret products do not depend on S."""
    rounds = {}
    for steps in (4, 8):
        case = _attention_case(causal=False, steps=steps)
        rounds[steps] = sum(r for _, r in _op_stats(case).values())
    assert rounds[4] == 40 and rounds[8] - rounds[4] == 5 + 2
