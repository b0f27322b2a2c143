"""The range check in chunks (``range_check.CHECK_CHUNK``): a large model's comparisons run as
consecutive calls of bounded size, with the same answers and flags, 5 rounds per extra chunk."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.mpc import range_check
from bridge.mpc.range_check import FixedPointOverflowError
from bridge.reference import run_reference
from tests.distributed.models import tiny_mlp

ROWS = 40
#: tiny_mlp at 40 rows: d0 (feeds the ReLU) 320 values in 20 sums, two comparisons each;
#: y 120 values, two comparisons each
COMPARISONS = 2 * 20 + 2 * ROWS * 3


def _rows() -> np.ndarray:
    return np.random.default_rng(3).uniform(-1.0, 1.0, size=(ROWS, 6))


def test_a_chunked_check_answers_alike_and_costs_five_rounds_a_chunk(secure_backend, monkeypatch):
    program, weights = tiny_mlp()
    x = _rows()
    whole = secure_backend.prepare(program, weights)
    try:
        baseline = whole.run({"x": x})
    finally:
        whole.close()
    monkeypatch.setattr(range_check, "CHECK_CHUNK", 16)
    chunked = secure_backend.prepare(program, weights)
    try:
        result = chunked.run({"x": x})
        np.testing.assert_allclose(result.outputs["y"], run_reference(program, weights, {"x": x})["y"], atol=2e-3)
        assert result.reruns == 0
        chunks = -(-COMPARISONS // 16)
        assert result.stats.total_rounds("server0") == baseline.stats.total_rounds("server0") + 5 * (chunks - 1)
        bad = x.copy()
        bad[-1] = 1e9  # its sums sit in the second and later chunks
        with pytest.raises(FixedPointOverflowError, match="layer 'd0'"):
            chunked.run({"x": bad})
    finally:
        chunked.close()
