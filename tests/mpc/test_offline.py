"""The offline phase (bridge.mpc.offline): material made before the query gives the same
answer as material drawn inline, is consumed once, never shared between runs, and a run
without it still works and is counted."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bridge.mpc import offline
from bridge.mpc.fixedpoint import FixedPointError
from bridge.mpc.offline import SLOT_BASE, MaterialCursor, OfflineError, PartyMaterial, SlotCounter, SlotKey
from bridge.mpc.party import DERIVED, RANDOM, PartyContext
from bridge.reference import run_reference
from tests.distributed.models import tiny_mlp

ATOL = 2e-3
ROWS = 4


def _x(seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).uniform(-1.0, 1.0, size=(ROWS, 6))}


@pytest.fixture
def served(secure_backend):
    program, weights = tiny_mlp()
    executable = secure_backend.prepare(program, weights)
    yield program, weights, executable
    executable.close()


def test_precomputed_run_matches_inline_and_counts(served):
    program, weights, executable = served
    inline = executable.run(_x(1))
    assert executable.last_material == {"server0": False, "server1": False, "dealer": False}
    seconds = executable.precompute(ROWS, runs=1)
    assert seconds > 0
    assert all(m["ready"] == 1 and m["by_batch"] == {str(ROWS): 1} for m in executable.material.values())
    pre = executable.run(_x(1))
    assert executable.last_material == {"server0": True, "server1": True, "dealer": True}
    expected = run_reference(program, weights, _x(1))["y"]
    np.testing.assert_allclose(pre.outputs["y"], expected, atol=ATOL)
    np.testing.assert_allclose(pre.outputs["y"], inline.outputs["y"], atol=ATOL)
    # the online phase moves exactly the bytes and rounds of the inline run, per party and label
    assert pre.stats.snapshot() == inline.stats.snapshot()
    # consumed: the pool is empty again, and the next query (no material) is drawn inline and counted
    again = executable.run(_x(2))
    np.testing.assert_allclose(again.outputs["y"], run_reference(program, weights, _x(2))["y"], atol=ATOL)
    assert executable.last_material["dealer"] is False
    for party, m in executable.material.items():
        assert (m["ready"], m["made"], m["precomputed"], m["inline"]) == (0, 1, 1, 2), party


def test_dealer_sends_exactly_its_recording_online(served):
    _, _, executable = served
    executable.precompute(ROWS, runs=1)
    pool = executable.offline["dealer"].pool
    material = pool._ready[SlotKey(ROWS, 0)]
    recorded = sum(s.nbytes for s in material.sent)
    assert recorded > 0 and all(s.peer == "server1" for s in material.sent)
    stats = executable.run(_x(3)).stats
    # the dealer's whole online traffic is its recorded corrections to P1, one round each
    assert stats.total_bytes("dealer") == recorded
    assert stats.total_rounds("dealer") == len(material.sent)


def test_two_runs_never_share_material(served, monkeypatch):
    """P0's 64-bit material of a precomputed slot and of the next (inline) slot share no word."""
    _, _, executable = served
    drawn: list[np.ndarray] = []
    original = PartyContext.draw_own
    k = executable.parties.contexts["server0"].kernels

    def spy(self, request):
        out = original(self, request)
        if self.name == "server0" and request[0] in (RANDOM, DERIVED) and out is not None:
            drawn.append(np.asarray(k.to_numpy(out)).ravel())
        return out

    monkeypatch.setattr(PartyContext, "draw_own", spy)
    executable.precompute(ROWS, runs=1)
    made = np.concatenate(drawn)
    drawn.clear()
    executable.run(_x(1))  # slot 0: from the pool, nothing drawn now
    assert drawn == []
    executable.run(_x(2))  # slot 1: inline
    inline = np.concatenate(drawn)
    assert made.size == inline.size > 0
    assert np.intersect1d(made, inline).size == 0
    # slot streams are above every run stream and distinct per slot and bucket
    keys = [SlotKey(1, 0), SlotKey(1, 1), SlotKey(2, 0)]
    assert len({key.stream for key in keys}) == 3 and min(key.stream for key in keys) >= SLOT_BASE


def test_material_is_handed_out_once_and_passed_slots_dropped():
    made: list[SlotKey] = []

    def make(key: SlotKey) -> PartyMaterial:
        made.append(key)
        return PartyMaterial(key, [], [], 0.001)

    pool = offline.MaterialPool(make, capacity=4)
    pool.want(2, 3)
    pool.fill()
    assert made == [SlotKey(2, 0), SlotKey(2, 1), SlotKey(2, 2)] and pool.level() == {2: 3}
    assert pool.take(SlotKey(2, 1)) is not None  # slot 0 was passed: dropped, never handed out
    assert pool.take(SlotKey(2, 0)) is None and pool.take(SlotKey(2, 1)) is None
    assert pool.level() == {2: 1}
    pool.fill()  # refills past every slot taken
    assert made[3:] == [SlotKey(2, 3), SlotKey(2, 4)]
    c = pool.counts
    assert (c.precomputed, c.inline, c.dropped, c.made) == (1, 2, 1, 5)
    pool.capacity = 1
    pool.want(3, 5)
    pool.fill()  # full: nothing more is made
    assert c.made == 5


def test_cursor_refuses_a_request_it_was_not_made_for(kernels):
    material = PartyMaterial(SlotKey(1, 0), [(RANDOM, (2,), False)], [kernels.zeros((2,))], 0.0)
    cursor = MaterialCursor(material)
    with pytest.raises(OfflineError, match="not the one traced"):
        cursor.take((RANDOM, (3,), False))
    cursor = MaterialCursor(material)
    with pytest.raises(OfflineError, match="used 0 of the 1"):
        cursor.finish()


def test_slot_counter_counts_per_bucket():
    c = SlotCounter()
    assert [c.next(4), c.next(4), c.next(1), c.next(4)] == [SlotKey(4, 0), SlotKey(4, 1), SlotKey(1, 0), SlotKey(4, 2)]


def test_failed_run_leaves_precomputed_slots_in_step(served):
    """A query refused inside the run (the dealer has replayed part of its slot) uses up its
    slot only: the next query takes the next precomputed slot and is right."""
    program, weights, executable = served
    executable._encode_local_inputs = lambda inputs: {n: np.asarray(v, dtype=np.float64) for n, v in inputs.items()}
    executable.precompute(ROWS, runs=3)
    executable.run(_x(1))
    bad = _x(9)
    bad["x"][1, 2] = np.nan
    with pytest.raises(FixedPointError):
        executable.run(bad)
    out = executable.run(_x(4)).outputs["y"]
    assert executable.last_material == {"server0": True, "server1": True, "dealer": True}
    np.testing.assert_allclose(out, run_reference(program, weights, _x(4))["y"], atol=ATOL)


def test_background_pool_refills(served):
    program, weights, executable = served
    executable.keep_pool(depth=2, capacity=4)
    executable.run(_x(1))  # the first query of a batch size asks the pool for it

    def level() -> list[dict[str, int]]:
        return [m["by_batch"] for m in executable.material.values()]

    def wait_full() -> None:
        deadline = time.monotonic() + 60
        while level() != [{str(ROWS): 2}] * 3:
            assert time.monotonic() < deadline, f"the pool did not refill: {level()}"
            time.sleep(0.05)

    for seed in (2, 3):
        wait_full()
        out = executable.run(_x(seed)).outputs["y"]
        assert executable.last_material == {"server0": True, "server1": True, "dealer": True}
        np.testing.assert_allclose(out, run_reference(program, weights, _x(seed))["y"], atol=ATOL)
    wait_full()
    assert all(m["precomputed"] + m["waited"] == 2 and m["inline"] == 1 for m in executable.material.values())


def test_bench_splits_online_and_offline(served):
    from bridge.bench.offline import split_times

    _, _, executable = served
    t = split_times(executable, _x(5), ROWS, repeats=2)
    assert len(t["inline"]) == len(t["online"]) == len(t["offline"]) == 2
    assert min(t["offline"]) > 0 and t["max_abs_diff"] < ATOL
    # two warm-ups and two timed queries of each kind: half of them precomputed, half inline
    assert all((m["precomputed"] + m["waited"], m["inline"]) == (3, 3) for m in executable.material.values())


def test_precomputed_query_costs_the_documented_rounds(secure_backend):
    """Without the range check: 4 comparison rounds + bit injection, 2 dense layers, the
    reveal (tests/distributed/test_bench.py), with the material made before as inline."""
    program, weights = tiny_mlp()
    executable = secure_backend.prepare(program, weights, check_overflow=False)
    try:
        executable.precompute(ROWS, runs=1)
        stats = executable.run(_x(1)).stats
        assert executable.last_material == {"server0": True, "server1": True, "dealer": True}
        # server1 receives the output, so only server0 sends in the reveal
        assert [stats.total_rounds(p, ("share:",)) for p in ("server0", "server1")] == [8, 7]
        # bytes: the input's sharing excluded, what each compute party sends is fixed by the shapes alone
        inline = executable.run(_x(2)).stats
        assert [stats.total_bytes(p, ("share:",)) for p in ("server0", "server1")] == \
            [inline.total_bytes(p, ("share:",)) for p in ("server0", "server1")]
    finally:
        executable.close()


#: op kinds whose precomputed query runs in the default run; every conformance case runs under -m slow
SAMPLE_KINDS = ("conv2d", "max_pool2d", "softmax", "layer_norm", "multi_head_attention", "lstm")


def _conformance(kinds: tuple[str, ...] | None) -> list:
    from tests.conformance.cases import all_cases

    cases = all_cases()
    if kinds is None:
        return cases
    return [next(c for c in cases if c.kind == kind) for kind in kinds if any(c.kind == kind for c in cases)]


def _precomputed_matches_reference(backend, case) -> None:
    """The dealer's recorded part and the traced tensors fit the op's query exactly (a dealer
    path that asked for other material than the compute parties' would fail the trace)."""
    from tests.conformance.cases import TOLERANCE

    executable = backend.prepare(case.program, case.weights)
    try:
        batch = next(iter(case.inputs.values())).shape[0]
        executable.precompute(batch, runs=1)
        got = executable.run(case.inputs).outputs["y"]
        assert all(executable.last_material.values()), (case.name, executable.last_material)
    finally:
        executable.close()
    expected = run_reference(case.program, case.weights, case.inputs)["y"]
    np.testing.assert_allclose(got, expected, atol=TOLERANCE[case.kind], rtol=0, err_msg=case.name)


@pytest.mark.parametrize("kind", SAMPLE_KINDS)
def test_precomputed_ops_match_reference(secure_backend, kind):
    cases = _conformance((kind,))
    if not cases:
        pytest.skip(f"no conformance case of kind {kind!r}")
    _precomputed_matches_reference(secure_backend, cases[0])


@pytest.mark.slow
def test_every_conformance_case_runs_from_precomputed_material(secure_backend):
    for case in _conformance(None):
        _precomputed_matches_reference(secure_backend, case)
