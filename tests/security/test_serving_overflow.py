"""Serving never returns a silently wrong answer (trust issue, finding 4): inputs that drive
the model out of the fixed-point range are refused naming the layer, and a truncation
failure (off by 2^32) is detected by the range check and the query rerun."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from bridge.mpc import layers
from bridge.mpc.range_check import FixedPointOverflowError
from bridge.reference import run_reference
from tests.distributed.models import tiny_mlp

ATOL = 2e-3


def _rows(seed: int = 1, rows: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(rows, 6))


@pytest.mark.parametrize("value", [1e9, 1e12, -1e12])
def test_huge_inputs_are_refused_naming_the_layer(secure_backend, value):
    """Accepted by the input encoder (|v| < 2^47) but far beyond what the model's products
    can hold: refused, no output revealed, and the next query is right."""
    program, weights = tiny_mlp()
    executable = secure_backend.prepare(program, weights)
    try:
        x = _rows()
        x[1] = value
        with pytest.raises(FixedPointOverflowError, match=r"layer 'd0'.*2 attempts") as info:
            executable.run({"x": x})
        assert "overflow_bound" in str(info.value)
        assert not any(label.startswith("reveal:y") for label in executable.last_stats.snapshot().get("server1", {}))
        good = _rows(2)
        np.testing.assert_allclose(executable.run({"x": good}).outputs["y"],
                                   run_reference(program, weights, {"x": good})["y"], atol=ATOL)
    finally:
        executable.close()


def test_a_large_but_representable_activation_passes_a_raised_bound(secure_backend):
    """The bound is the user's: activations of 1e4 pass under overflow_bound=1e5 (exact answer)
    and are refused under overflow_bound=1e3."""
    program, weights = tiny_mlp()
    x = _rows() * 3e3
    expected = run_reference(program, weights, {"x": x})["y"]
    assert np.max(np.abs(expected)) > 1e3
    loose = secure_backend.prepare(program, weights, overflow_bound=1e5)
    strict = secure_backend.prepare(program, weights, overflow_bound=1e3)
    try:
        np.testing.assert_allclose(loose.run({"x": x}).outputs["y"], expected, rtol=1e-3, atol=1.0)
        with pytest.raises(FixedPointOverflowError):
            strict.run({"x": x})
    finally:
        loose.close()
        strict.close()


class _TruncationFault:
    """Adds 2^32 (real units; 2^48 ring units: a local truncation failure) to compute party
    0's share of one element of layer d0's output, in the first ``times`` queries."""

    def __init__(self, times: int) -> None:
        self.left = times
        self.lock = threading.Lock()
        self.original = layers.SECURE_FORWARD["dense"]

    def __call__(self, env, node, xs):
        out, cache = self.original(env, node, xs)
        ctx = env.ctx
        if node.name == "d0" and ctx.is_compute and ctx.index == 0:
            with self.lock:
                hit, self.left = self.left > 0, self.left - 1
            if hit:
                k = ctx.kernels
                share = k.to_numpy(out.share).copy()
                share[0, 0] += np.int64(1) << np.int64(48)
                out = type(out)(k.from_numpy(share))
        return out, cache


@pytest.fixture
def truncation_fault(monkeypatch):
    def install(times: int) -> _TruncationFault:
        fault = _TruncationFault(times)
        monkeypatch.setitem(layers.SECURE_FORWARD, "dense", fault)
        return fault

    return install


def test_truncation_failure_is_detected_and_rerun(secure_backend, truncation_fault):
    program, weights = tiny_mlp()
    executable = secure_backend.prepare(program, weights)
    try:
        x = _rows(3)
        baseline = executable.run({"x": x})
        assert baseline.reruns == 0
        truncation_fault(times=1)
        result = executable.run({"x": x})
        np.testing.assert_allclose(result.outputs["y"], run_reference(program, weights, {"x": x})["y"], atol=ATOL)
        assert result.reruns == 1 and executable.reruns_total == 1
        # the rerun is in the stats: twice the traffic of the query without it, bar the one reveal
        once = baseline.stats.total_bytes("server0", ("reveal:",))
        assert result.stats.total_bytes("server0", ("reveal:",)) == 2 * once
    finally:
        executable.close()


def test_the_fault_gives_a_wrong_answer_without_the_check(secure_backend, truncation_fault):
    """The control: the injected fault does corrupt the answer when nothing checks it."""
    program, weights = tiny_mlp()
    executable = secure_backend.prepare(program, weights, check_overflow=False)
    try:
        x = _rows(3)
        truncation_fault(times=1)
        got = executable.run({"x": x}).outputs["y"]
        assert np.max(np.abs(got - run_reference(program, weights, {"x": x})["y"])) > 1e6
    finally:
        executable.close()


def test_a_fault_that_repeats_is_refused(secure_backend, truncation_fault):
    program, weights = tiny_mlp()
    executable = secure_backend.prepare(program, weights, max_reruns=2)
    try:
        truncation_fault(times=3)
        with pytest.raises(FixedPointOverflowError, match=r"layer 'd0'.*3 attempts"):
            executable.run({"x": _rows(3)})
        assert executable.reruns_total == 2
    finally:
        executable.close()


def test_bad_settings_are_refused(secure_backend):
    program, weights = tiny_mlp()
    with pytest.raises(ValueError, match="overflow_bound"):
        secure_backend.prepare(program, weights, overflow_bound=2.0**40)
    with pytest.raises(ValueError, match="max_reruns"):
        secure_backend.prepare(program, weights, max_reruns=-1)


def _digits_model():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])


@pytest.mark.parametrize(("scale", "rows"), [(1.0, 256), (1e5, 256), (1e8, 256),
                                             pytest.param(1e5, 1797, marks=pytest.mark.slow)])
def test_scaled_digits_are_right_or_refused(secure_backend, scale, rows):
    """load_digits scaled by 1e5 used to give a wrong argmax, by 1e8 66.5% agreement, with no
    error: now every answer equals Keras' or the query is refused."""
    from sklearn.datasets import load_digits

    from frontends.keras import privatize

    model = _digits_model()
    x = (load_digits().data[:rows] * scale).astype(np.float64)
    expected = model.predict(x.astype(np.float32), verbose=0, batch_size=128)
    private = privatize(model, "encrypted_serving", backend=secure_backend.name)
    if np.max(np.abs(expected)) > 2.0**20 or scale >= 1e8:
        with pytest.raises(FixedPointOverflowError, match="layer"):
            private.predict(x, batch_size=128, verbose=0)
        return
    got = private.predict(x, batch_size=128, verbose=0)
    np.testing.assert_array_equal(np.argmax(got, axis=1), np.argmax(expected, axis=1))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=5e-3 * scale)


def test_check_plan_knows_what_is_nonnegative_and_what_feeds_a_relu():
    from bridge.mpc.range_check import serving_check_plan
    from frontends.cli.bench import cnn_infer

    plan = serving_check_plan(cnn_infer().program)
    by_layer = {e.layer: e for e in plan.entries}
    # conv/dense feeding a ReLU: |x| from the ReLU; average pools of ReLU outputs: >= 0; the logits: neither
    assert by_layer["conv2d_0"].rectified == "relu_1" and not by_layer["conv2d_0"].nonnegative
    assert by_layer["avg_pool2d_2"].nonnegative and by_layer["avg_pool2d_2"].rectified is None
    assert by_layer["dense_9"].rectified is None and not by_layer["dense_9"].nonnegative
    assert not {"relu_1", "flatten_6"} & set(by_layer)


def test_grouped_check_flags_a_group_whose_sum_exceeds_the_bound(secure_backend):
    """The documented price of the grouped check: d0 feeds a ReLU, so its |x| are summed in
    groups of 16; elements each below the bound whose sum is above it are flagged."""
    program, weights = tiny_mlp()
    x = _rows(5)
    h0 = np.abs(x @ weights["d0/kernel"] + weights["d0/bias"])
    bound = float(h0.max()) * 1.5
    assert h0.reshape(-1)[:16].sum() > bound  # each element passes, the first group does not
    executable = secure_backend.prepare(program, weights, overflow_bound=bound, max_reruns=0)
    try:
        with pytest.raises(FixedPointOverflowError, match="'d0'"):
            executable.run({"x": x})
    finally:
        executable.close()
