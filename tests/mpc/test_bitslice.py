"""Bit slicing by 64x64 transposes (``bridge.mpc.bitslice``) against a per-bit reference."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.mpc.bitslice import bit_planes, transpose64
from bridge.mpc.kernels import bit_planes_np


def _reference(values: np.ndarray, nbits: int) -> np.ndarray:
    """Plane b, word w, bit i = bit b of element 64 w + i: one bit at a time."""
    n = len(values)
    words = -(-n // 64)
    planes = np.zeros((nbits, words), dtype=np.uint64)
    unsigned = values.astype(np.int64).view(np.uint64)
    for b in range(nbits):
        bits = ((unsigned >> np.uint64(b)) & np.uint64(1)).astype(np.uint64)
        for j, bit in enumerate(bits):
            planes[b, j // 64] |= bit << np.uint64(j % 64)
    return planes.view(np.int64)


@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 130, 1000])
@pytest.mark.parametrize("nbits", [1, 5, 32, 63, 64])
def test_bit_planes_match_the_per_bit_reference(n, nbits):
    rng = np.random.default_rng(n * 100 + nbits)
    values = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=n, dtype=np.int64, endpoint=True)
    extremes = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max, -1, 0, 1], dtype=np.int64)
    values[: min(n, 5)] = extremes[: min(n, 5)]
    got = bit_planes(values, nbits)
    assert got.dtype == np.int64 and got.shape == (nbits, -(-n // 64))
    np.testing.assert_array_equal(got, _reference(values, nbits))
    np.testing.assert_array_equal(bit_planes_np(values, nbits), got)  # the kernels' entry point


def test_transpose64_is_an_involution_and_moves_single_bits():
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 2**63, size=(3, 64), dtype=np.int64).view(np.uint64)
    original = blocks.copy()
    np.testing.assert_array_equal(transpose64(transpose64(blocks)), original)
    one = np.zeros((1, 64), dtype=np.uint64)
    one[0, 5] = np.uint64(1) << np.uint64(40)  # row 5, column 40
    transpose64(one)
    expected = np.zeros((1, 64), dtype=np.uint64)
    expected[0, 40] = np.uint64(1) << np.uint64(5)  # row 40, column 5
    np.testing.assert_array_equal(one, expected)


@pytest.mark.parametrize("nbits", [0, 65])
def test_bit_planes_refuse_a_width_outside_1_to_64(nbits):
    with pytest.raises(ValueError, match="nbits must be in 1..64"):
        bit_planes(np.zeros(3, dtype=np.int64), nbits)
