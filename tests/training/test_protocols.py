"""The small protocols of encrypted training, on every secure backend: bit conversion, the
logarithm behind the reported loss, batch metrics, the overflow check and SGD."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bridge.ir import Loss, Numerics
from bridge.mpc.compare import Bits
from bridge.mpc.protocol import Shared, reveal_to, share_input
from bridge.mpc.runtime import ThreadedParties
from bridge.mpc.training import batch_metrics, bits_to_arith, log_unit, overflow_flags, sgd_step
from bridge.reference_train import correct, encode_labels, loss_head, loss_values, sgd_update
from tests.training.helpers import mlp_program

PARTIES = ("owner", "p0", "p1", "dealer", "client")


@pytest.fixture
def parties(kernels):
    tp = ThreadedParties(PARTIES, kernels, Numerics(), ("p0", "p1"), "dealer", timeout_s=30)
    tp.run(lambda ctx: ctx.setup_seeds())
    return tp


def run(tp, fn, *values):
    """Share ``values`` from 'owner', apply ``fn`` on shares, reveal the result to 'client'."""

    def body(ctx):
        shared = [share_input(ctx, "owner", v if ctx.name == "owner" else None, v.shape, f"in{i}")
                  for i, v in enumerate(values)]
        out = fn(ctx, *shared) if ctx.in_protocol else None
        return reveal_to(ctx, out, ("client",), "out")

    return tp.run(body)["client"]


def test_bits_to_arith_is_exact_and_costs_one_bit(parties):
    bits = np.random.default_rng(0).integers(0, 2, size=(3, 70))

    def convert(ctx, _):
        k = ctx.kernels
        # XOR-share the public bits: P0 holds them, P1 zeros
        mine = ctx.public(bits) if ctx.is_compute and ctx.index == 0 else k.zeros(bits.shape)
        return bits_to_arith(ctx, Bits(mine))

    before = parties.stats.snapshot()
    out = run(parties, convert, np.zeros(1))
    np.testing.assert_array_equal(np.round(out * 2**16), bits)
    sent = parties.stats.since(before).total_bytes("p0", ("share:", "reveal:"))
    assert sent == math.ceil(bits.size / 8)


def test_log_unit_is_accurate_on_the_unit_interval(parties):
    x = np.concatenate([np.geomspace(2**-15, 1.0, 200), [1.0, 0.5, 0.25, 2**-16, 0.0]])
    encoded = np.round(x * 2**16) / 2**16
    got = run(parties, log_unit, x)
    want = np.log(np.maximum(encoded, 2**-16))
    assert np.max(np.abs(got - want)) < 2e-3


@pytest.mark.parametrize(
    ("loss", "from_logits"),
    [(Loss.SPARSE_CATEGORICAL_CROSSENTROPY, False), (Loss.BINARY_CROSSENTROPY, True), (Loss.MSE, False)],
)
def test_batch_metrics_match_the_reference(parties, loss, from_logits):
    width = 4
    program, _ = mlp_program([3, width], loss=loss, from_logits=from_logits)
    head = loss_head(program)
    rng = np.random.default_rng(1)
    n = 40
    if loss == Loss.SPARSE_CATEGORICAL_CROSSENTROPY:
        z = rng.normal(size=(n, width)) * 2
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        y = encode_labels(head, rng.integers(0, width, size=n))
    elif loss == Loss.BINARY_CROSSENTROPY:
        p = rng.uniform(0.02, 0.98, size=(n, width))
        y = rng.integers(0, 2, size=(n, width)).astype(float)
    else:
        p, y = rng.normal(size=(n, width)), rng.normal(size=(n, width))
    p = np.round(p * 2**16) / 2**16  # what the shares hold
    got = run(parties, lambda ctx, a, b: batch_metrics(ctx, head, a, b, with_accuracy=loss != Loss.MSE), p, y)
    assert abs(got[0] - loss_values(head, p, y).sum()) < 2e-3 * n
    if loss != Loss.MSE:
        assert abs(got[1] - correct(head, p, y).sum()) < 1e-3


def test_overflow_flags_name_exactly_the_tensors_out_of_bound(parties):
    bound = 1024.0
    ok = np.random.default_rng(2).uniform(-1000, 1000, size=(5, 7))
    high, low = ok.copy(), ok.copy()
    high[3, 4] = 1030.0
    low[0, 0] = -5000.0
    edge = np.full((2, 2), 1023.9)
    flags = run(parties, lambda ctx, *ts: overflow_flags(ctx, list(ts), bound), ok, high, low, edge)
    np.testing.assert_array_equal(np.round(flags * 2**16), [0, 1, 1, 0])


def test_overflow_flags_read_the_magnitude_from_a_relu_output(parties):
    bound = 1024.0
    x = np.random.default_rng(4).uniform(-1000, 1000, size=(3, 6))
    neg, pos = x.copy(), x.copy()
    neg[1, 1], pos[2, 5] = -3000.0, 1500.0

    def check(ctx, a, ra, b, rb, c, rc):
        return overflow_flags(ctx, [a, b, c], bound, [ra, rb, rc])

    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    flags = run(parties, check, x, relu(x), neg, relu(neg), pos, relu(pos))
    np.testing.assert_array_equal(np.round(flags * 2**16), [0, 1, 1])


def test_overflow_flags_catch_a_truncation_wrap(parties):
    """A local-truncation failure adds about 2^(64 - 2f) = 2^32 to a value: always flagged."""
    value = np.zeros((4,))

    def wrapped(ctx, x):
        k = ctx.kernels
        if ctx.is_compute and ctx.index == 0:
            x = Shared(k.add(x.share, k.constant(1 << 48)))  # +2^32 in fixed point
        return overflow_flags(ctx, [x], 1024.0)

    assert run(parties, wrapped, value)[0] > 0


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_matches_keras_and_the_reference(parties, momentum):
    import keras

    rng = np.random.default_rng(3)
    w0, grads = rng.normal(size=(4, 3)), [rng.normal(size=(4, 3)) for _ in range(3)]
    variable = keras.Variable(w0.astype("float32"))
    optimizer = keras.optimizers.SGD(learning_rate=0.05, momentum=momentum)
    weights, velocity = {"w": w0.copy()}, {}
    for g in grads:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g.astype("float32")), variable)])
        sgd_update(weights, velocity, {"w": g}, 0.05, momentum)
    np.testing.assert_allclose(weights["w"], keras.ops.convert_to_numpy(variable), atol=1e-5)

    def secure(ctx, w, *gs):
        params, vel = {"w": w}, {}
        for g in gs:
            sgd_step(ctx, params, vel, {"w": g}, 0.05, momentum)
        return params["w"]

    np.testing.assert_allclose(run(parties, secure, w0, *grads), weights["w"], atol=2e-4)
