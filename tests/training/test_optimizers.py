"""Adam and RMSprop: Keras 3's update rules in float64 (the reference) and on shares, on every
secure backend; the secure inverse square root they rest on, and its documented error."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.ir import AdamSpec, Numerics, RMSpropSpec, SGDSpec
from bridge.mpc.functions import inv_sqrt
from bridge.mpc.optimizers import OptimizerState, check_numerics, inv_sqrt_range, secure_update, wide_bits
from bridge.mpc.protocol import Shared, reveal_to, share_input
from bridge.mpc.runtime import ThreadedParties
from bridge.reference_train import ReferenceOptimizerState, optimizer_update

PARTIES = ("owner", "p0", "p1", "dealer", "client")


@pytest.fixture
def parties(kernels):
    tp = ThreadedParties(PARTIES, kernels, Numerics(), ("p0", "p1"), "dealer", timeout_s=60)
    tp.run(lambda ctx: ctx.setup_seeds())
    return tp


def _shared_raw(ctx, raw: np.ndarray) -> Shared:
    """Share ring integers directly (inputs at more fractional bits than ``share_input`` encodes)."""
    k = ctx.kernels
    if ctx.is_dealer:
        return Shared(k.zeros(raw.shape))
    mask = np.random.default_rng(7).integers(-(2**62), 2**62, size=raw.shape, dtype=np.int64)
    return Shared(k.from_numpy(mask if ctx.index == 0 else raw - mask))


# -- inv_sqrt -----------------------------------------------------------------------------------


def test_inv_sqrt_meets_its_documented_error_over_the_whole_range(parties):
    frac = 40
    lo, hi = -40, 8
    x = np.concatenate([np.geomspace(2.0**lo, 2.0**hi, 1500), [2.0**lo, 2.0**hi, 1.0, 3.0, 1e-6]])
    below_and_above = np.array([0.0, -1e-9, 2.0**-44, 2.0**9, 1e4])
    raw = np.round(np.concatenate([x, below_and_above]) * 2.0**frac).astype(np.int64)

    def body(ctx):
        out = inv_sqrt(ctx, _shared_raw(ctx, raw), lo, hi, frac) if ctx.in_protocol else None
        return reveal_to(ctx, out, ("client",), "out")

    before = parties.stats.snapshot()
    got = parties.run(body)["client"]
    stats = parties.stats.since(before)
    exact = 1 / np.sqrt(np.clip(raw / 2.0**frac, 2.0**lo, 2.0**hi))
    # documented: relative 2^-12 plus about one unit 2^-16 of absolute rounding
    np.testing.assert_array_less(np.abs(got - exact), exact * 2.0**-12 + 2.0**-15)
    # out of range inputs are clamped, not garbage
    np.testing.assert_allclose(got[-5:], [2.0**20, 2.0**20, 2.0**20, 2.0**-4, 2.0**-4], rtol=2**-12)
    assert stats.total_rounds("p0") == 19  # 18 documented + the final reveal
    # 13 comparisons per element dominate: about 0.7 kB per element
    assert 600 < stats.total_bytes("p0") / raw.size < 800


def test_inv_sqrt_refuses_a_range_it_cannot_bracket(parties):
    def body(ctx):
        if ctx.in_protocol:
            inv_sqrt(ctx, _shared_raw(ctx, np.zeros(2, dtype=np.int64)), -3, 8, 16)

    with pytest.raises(ValueError, match="even lo_exp"):
        parties.run(body)


def test_second_moments_fit_the_comparison_range():
    assert wide_bits(16) == 40 and inv_sqrt_range(16) == (-40, 8)
    check_numerics(AdamSpec(learning_rate=1e-3), 16, 64)
    with pytest.raises(ValueError, match="compare_bits=64"):
        check_numerics(AdamSpec(learning_rate=1e-3), 16, 40)


# -- the reference is Keras 3 -------------------------------------------------------------------

SPECS = {
    "adam": AdamSpec(learning_rate=0.01),
    "adam_eps": AdamSpec(learning_rate=0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-3),
    "rmsprop": RMSpropSpec(learning_rate=0.01),
    "rmsprop_momentum_centered": RMSpropSpec(learning_rate=0.005, rho=0.8, momentum=0.5, centered=True, epsilon=1e-4),
}


def _keras_optimizer(spec):
    import keras

    if isinstance(spec, AdamSpec):
        return keras.optimizers.Adam(spec.learning_rate, beta_1=spec.beta_1, beta_2=spec.beta_2, epsilon=spec.epsilon)
    return keras.optimizers.RMSprop(spec.learning_rate, rho=spec.rho, momentum=spec.momentum, epsilon=spec.epsilon,
                                    centered=spec.centered)


def _gradients(steps: int, shape=(6, 5), seed=3):
    rng = np.random.default_rng(seed)
    # magnitudes from 1e-3 to 1, as in a small network's gradients
    return [rng.normal(size=shape) * np.geomspace(1e-3, 1.0, shape[1]) for _ in range(steps)]


@pytest.mark.parametrize("name", list(SPECS))
def test_reference_optimizers_are_keras_3(name):
    import keras

    spec = SPECS[name]
    w0 = np.random.default_rng(0).normal(size=(6, 5))
    variable = keras.Variable(w0.astype("float32"))
    optimizer = _keras_optimizer(spec)
    weights, state = {"w": w0.copy()}, ReferenceOptimizerState()
    for g in _gradients(6):
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g.astype("float32")), variable)])
        optimizer_update(weights, state, {"w": g}, spec)
    assert state.iterations == 6
    np.testing.assert_allclose(weights["w"], keras.ops.convert_to_numpy(variable), atol=2e-5)


# -- on shares ----------------------------------------------------------------------------------


def _secure_steps(parties, spec, w0: dict, grads: list[dict]):
    names = sorted(w0)

    def body(ctx):
        share = lambda v, what: share_input(ctx, "owner", v if ctx.name == "owner" else None, v.shape, what)  # noqa: E731
        params = {n: share(w0[n], n) for n in names}
        steps = [{n: share(g[n], f"g{i}{n}") for n in names} for i, g in enumerate(grads)]
        state = OptimizerState()
        if ctx.in_protocol:
            for g in steps:
                secure_update(ctx, spec, params, state, g)
        return {n: reveal_to(ctx, params[n] if ctx.in_protocol else None, ("client",), n) for n in names}

    return parties.run(body)["client"]


@pytest.mark.parametrize("name", list(SPECS))
def test_secure_optimizer_steps_follow_the_reference(parties, name):
    """Five steps on two tensors at once; the tolerance is the documented error: the direction
    within 2^-12 relative + 2^-15 absolute, the step rounded to 2^-16, per step."""
    spec = SPECS[name]
    rng = np.random.default_rng(1)
    w0 = {"a": rng.normal(size=(6, 5)), "b": rng.normal(size=(5,))}
    grads = [{"a": ga, "b": gb[0]} for ga, gb in zip(_gradients(5), _gradients(5, shape=(1, 5), seed=9))]
    grads = [{n: np.round(g * 2**16) / 2**16 for n, g in step.items()} for step in grads]  # what shares can hold
    weights, state = {n: w.copy() for n, w in w0.items()}, ReferenceOptimizerState()
    for g in grads:
        optimizer_update(weights, state, g, spec)
    got = _secure_steps(parties, spec, w0, grads)
    steps = len(grads)
    for n in w0:
        moved = np.abs(weights[n] - w0[n])
        assert moved.max() > 20 * 2**-16  # the optimizer did move the weights
        tolerance = steps * (spec.learning_rate * 4 * (2**-12 * 3 + 2**-15) + 2 * 2**-16) + 2**-16
        np.testing.assert_allclose(got[n], weights[n], atol=tolerance, rtol=0)


def test_sgd_runs_through_the_same_entry_point(parties):
    spec = SGDSpec(learning_rate=0.1, momentum=0.9)
    w0 = {"w": np.linspace(-1, 1, 12).reshape(3, 4)}
    grads = [{"w": g[:3, :4]} for g in _gradients(3)]
    weights, state = {"w": w0["w"].copy()}, ReferenceOptimizerState()
    for g in grads:
        optimizer_update(weights, state, g, spec)
    np.testing.assert_allclose(_secure_steps(parties, spec, w0, grads)["w"], weights["w"], atol=3e-4)


# -- end to end: a few steps of fit ---------------------------------------------------------------


FIT_SLICE = {
    "adam": (lambda: __import__("keras").optimizers.Adam(0.01), 0.01),
    "rmsprop_centered_momentum": (
        lambda: __import__("keras").optimizers.RMSprop(0.005, momentum=0.5, centered=True), 0.005 * (1 + 0.5)),
}


@pytest.mark.parametrize("name", list(FIT_SLICE))
def test_three_encrypted_fit_steps_follow_the_reference(secure_backend, name):
    """Three batches of the digits MLP: weights after encrypted fit against the float64 reference.
    Gradients differ by fixed-point rounding before the optimizer sees them, so the bound is on
    the optimizer's own scale: each step moves a weight by at most about lr (Adam) or
    lr (1 + momentum) per unit of normalised direction; the runs may differ by 30% of that at
    most, and on average by 2% of how far the weights moved."""
    import keras
    from sklearn.datasets import load_digits

    from frontends.keras.training import fit_encrypted
    from bridge.registry import get_backend

    make_optimizer, step = FIT_SLICE[name]
    digits = load_digits()
    x, y = (digits.data[:96] / 16.0).astype("float32"), digits.target[:96]

    def model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
        m.compile(optimizer=make_optimizer(), loss="sparse_categorical_crossentropy")
        return m

    secure, reference = model(), model()
    start = [w.copy() for w in secure.get_weights()]
    fit_encrypted(secure, secure_backend, (x, y), batch_size=32, shuffle=False, verbose=0, timeout_s=120)
    fit_encrypted(reference, get_backend("plaintext"), (x, y), batch_size=32, shuffle=False, verbose=0)
    for got, want, before in zip(secure.get_weights(), reference.get_weights(), start, strict=True):
        moved = np.abs(want - before)
        assert moved.mean() > 0.2 * step  # every tensor moved: an adaptive step is about lr per weight
        assert np.abs(got - want).max() <= 0.3 * 3 * step
        assert np.abs(got - want).mean() <= 0.02 * moved.mean()


@pytest.mark.parametrize(("spec", "rounds"), [(AdamSpec(learning_rate=1e-3), 27), (RMSpropSpec(learning_rate=1e-3), 20),
                                              (RMSpropSpec(learning_rate=1e-3, centered=True, momentum=0.9), 21)])
def test_one_step_costs_what_the_module_documents(parties, spec, rounds):
    n = 500
    shared = {}

    def share(ctx):
        w = share_input(ctx, "owner", np.zeros(n) if ctx.name == "owner" else None, (n,), "w")
        g = share_input(ctx, "owner", np.full(n, 0.01) if ctx.name == "owner" else None, (n,), "g")
        shared[ctx.name] = (w, g)

    def step(ctx):
        if ctx.in_protocol:
            w, g = shared[ctx.name]
            secure_update(ctx, spec, {"w": w}, OptimizerState(), {"w": g})

    parties.run(share)
    before = parties.stats.snapshot()
    parties.run(step)
    stats = parties.stats.since(before)
    assert stats.total_rounds("p0") == rounds
    documented = 920 if isinstance(spec, AdamSpec) else 820
    assert abs(stats.total_bytes("p0") / n - documented) < 40  # bit-packed words round up on small n
