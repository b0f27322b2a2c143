"""Serving's range check ends in a zero test (``range_check.overflow_tests``/``reveal_flags``):
the same flags as the counted check, in 5 rounds fewer; what is revealed is 0 or a fresh random
non-zero residue, never the count of violations."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.bench.offline import with_batch
from bridge.bench.workloads import cnn_infer, mlp_infer
from bridge.ir import Numerics
from bridge.mpc.party import PAIR, uniform_mod
from bridge.mpc.protocol import Shared, share_input
from bridge.mpc.range_check import ZERO_TEST_PRIME, overflow_tests, reveal_flags
from bridge.mpc.runtime import ThreadedParties
from bridge.registry import get_backend
from tests.conftest import SECURE_BACKENDS

PARTIES = ("owner", "p0", "p1", "dealer", "client")
P = ZERO_TEST_PRIME


@pytest.fixture
def parties(kernels):
    tp = ThreadedParties(PARTIES, kernels, Numerics(), ("p0", "p1"), "dealer", timeout_s=30)
    tp.run(lambda ctx: ctx.setup_seeds())
    return tp


def _tests(tp, values, bound=1024.0, relu=None, group=1, nonnegative=None, shift=None):
    """Run overflow_tests on ``values`` (shared by 'owner'); every party's flags, and the
    compute parties' shares of the masked counts."""

    def body(ctx):
        ctx.begin_run()
        shared = [share_input(ctx, "owner", v if ctx.name == "owner" else None, v.shape, f"in{i}")
                  for i, v in enumerate(values)]
        if shift is not None and ctx.is_compute and ctx.index == 0:  # a truncation failure: +2^32 in fixed point
            shared[shift] = Shared(ctx.kernels.add(shared[shift].share, ctx.kernels.constant(1 << 48)))
        rect = None
        if relu is not None:
            rect = [share_input(ctx, "owner", np.maximum(v, 0) if ctx.name == "owner" and r else None,
                                v.shape, f"r{i}") if r else None for i, (v, r) in enumerate(zip(values, relu))]
        tests = overflow_tests(ctx, shared, bound, rect, group, nonnegative) if ctx.in_protocol else None
        return reveal_flags(ctx, tests, PARTIES), (tests.share if tests is not None else None)

    return tp.run(body)


def test_flags_name_exactly_the_tensors_out_of_bound_for_every_party(parties):
    ok = np.random.default_rng(2).uniform(-1000, 1000, size=(5, 7))
    high, low = ok.copy(), ok.copy()
    high[3, 4] = 1030.0
    low[0, 0], low[1, 1], low[2, 2] = -5000.0, -2000.0, -1500.0  # three violations: still one flag
    edge = np.full((2, 2), 1023.9)
    out = _tests(parties, [ok, high, low, edge])
    for party in PARTIES:
        np.testing.assert_array_equal(out[party][0], [False, True, True, False])


def test_flags_from_relu_outputs_and_grouped_sums(parties):
    x = np.random.default_rng(4).uniform(-60, 60, size=(3, 32))
    neg, pos = x.copy(), x.copy()
    neg[1, 1], pos[2, 5] = -3000.0, 1500.0
    out = _tests(parties, [x, neg, pos], relu=[True, True, True])
    np.testing.assert_array_equal(out["client"][0], [False, True, True])
    # groups of 16: |x| sums of 16 values under 60 stay below 1024; one 3000 does not (the
    # grouped check compares S and 2B - S: its sums may reach 2B)
    pos[2, 5] = 3000.0
    out = _tests(parties, [x, neg, pos], relu=[True, True, True], group=16)
    np.testing.assert_array_equal(out["client"][0], [False, True, True])
    nonneg = np.abs(x)
    out = _tests(parties, [nonneg, nonneg], group=16, nonnegative=[True, False])
    np.testing.assert_array_equal(out["client"][0], [False, False])


def test_a_truncation_wrap_is_flagged(parties):
    out = _tests(parties, [np.zeros((4,)), np.zeros((3,))], shift=1)
    np.testing.assert_array_equal(out["client"][0], [False, True])


def test_what_is_revealed_is_zero_or_a_fresh_residue_not_the_count(parties):
    """t r v mod p: 0 for a clean tensor; for a flagged one non-zero, different in every run and
    between tensors with the same count (a count-revealing test would repeat it)."""
    base = np.zeros((2, 8))
    two = base.copy()
    two[0, 0] = two[1, 1] = 5000.0
    seen = []
    for _ in range(2):
        out = _tests(parties, [base, two, two])
        opened = (out["p0"][1] + out["p1"][1]) % P
        assert opened[0] == 0
        assert opened[1] != 0 and opened[2] != 0 and opened[1] != opened[2]
        assert 2 not in opened[1:] and 4 not in opened[1:]  # two violations, four comparisons out
        seen.append(opened)
    assert seen[0][1] != seen[1][1]


def test_the_dealer_holds_no_compute_pair_seed(parties):
    seeds = parties.run(lambda ctx: dict(ctx._seeds))
    assert PAIR not in seeds["dealer"]
    assert seeds["p0"][PAIR] == seeds["p1"][PAIR] and len(seeds["p0"][PAIR]) == 32


def test_uniform_mod_is_the_128_bit_residue():
    rng = np.random.default_rng(0)
    words = rng.integers(-(1 << 63), (1 << 63) - 1, size=(1000, 2), dtype=np.int64)
    got = uniform_mod(words, P)
    want = [((int(a) % (1 << 64)) * (1 << 64) + (int(b) % (1 << 64))) % P for a, b in words]
    np.testing.assert_array_equal(got, want)
    assert got.min() >= 0 and got.max() < P


#: rounds per precomputed query of bench's mlp_infer at batch 1 (server0, the input's sharing
#: excluded): 3 matmuls, 2 ReLUs of 4 comparison rounds + 1 bit injection, the output's reveal;
#: the range check adds 4 comparison rounds, 1 bit conversion and the flags' reveal (was 11:
#: a second comparison of the counts and a second conversion)
MLP_ROUNDS = {"matmul": 3, "relu/compare": 8, "relu/mul_bit": 2, "reveal:dense_4": 1,
              "overflow_check/compare": 4, "overflow_check/b2a": 1, "reveal:overflow": 1}


def _by_op(snapshot: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for label, (_, rounds) in snapshot.items():
        if label.startswith("share:"):
            continue
        op = label.split("/", 1)[1] if label.split("/")[0].startswith(("dense_", "relu_")) else label
        out[op] = out.get(op, 0) + rounds
    return out


def test_a_served_query_costs_the_counted_rounds(secure_backend):
    workload = with_batch(mlp_infer(), 1)
    executable = secure_backend.prepare(workload.program, workload.weights)
    try:
        executable.precompute(1, runs=1)
        result = executable.run(workload.inputs())
        assert all(executable.last_material.values())
        snapshot = result.stats.snapshot()
        assert _by_op(snapshot["server0"]) == MLP_ROUNDS
        assert result.stats.total_rounds("server0", ("share:",)) == 20
        assert result.stats.total_rounds("server1", ("share:",)) == 20  # the client receives the output
        checked = len(executable.check_plan.entries)
        others = len(workload.program.placement.names) - 1
        # the flags' reveal: 4 bytes per checked tensor to every other party
        assert snapshot["server0"]["reveal:overflow"] == (4 * checked * others, 1)
    finally:
        executable.close()
    unchecked = secure_backend.prepare(workload.program, workload.weights, check_overflow=False)
    try:
        assert unchecked.run(workload.inputs()).stats.total_rounds("server0", ("share:",)) == 14
    finally:
        unchecked.close()


@pytest.mark.parametrize("backend", [b if b == "torch-spdz" else pytest.param(b, marks=pytest.mark.slow)
                                     for b in SECURE_BACKENDS])
def test_cnn_query_rounds(backend):
    """cnn_infer at batch 1: 4 convs/dense, 3 ReLUs (5 rounds each), the reveal, the check's 6
    (tf-pond slow: its first conv shapes are timed for the kernel choice, ~30 s here)."""
    workload = with_batch(cnn_infer(), 1)
    executable = get_backend(backend).prepare(workload.program, workload.weights)
    try:
        assert executable.run(workload.inputs()).stats.total_rounds("server0", ("share:",)) == 26
    finally:
        executable.close()
