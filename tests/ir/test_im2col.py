"""Patch plans: brute-force agreement, the pad/reshape/gather/matmul recipe, caching."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.im2col import extract_patches, im2col_plan
from bridge.ir.shapes import same_padding, window_output


def brute_force(h, w, c, kh, kw, strides, padding):
    """Indices and real-cell counts by walking every window cell."""
    pads = (same_padding(h, kh, strides[0]), same_padding(w, kw, strides[1])) if padding == "same" else ((0, 0), (0, 0))
    wp = w + sum(pads[1])
    oh, ow = window_output(h, kh, strides[0], padding), window_output(w, kw, strides[1], padding)
    rows, counts = [], []
    for i in range(oh):
        for j in range(ow):
            row, real = [], 0
            for a in range(kh):
                for b in range(kw):
                    r, q = i * strides[0] + a, j * strides[1] + b
                    real += pads[0][0] <= r < pads[0][0] + h and pads[1][0] <= q < pads[1][0] + w
                    row.extend((r * wp + q) * c + ch for ch in range(c))
            rows.append(row)
            counts.append(real)
    return pads, oh, ow, np.array(rows), np.array(counts)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 8), st.integers(1, 8), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4),
    st.integers(1, 3), st.integers(1, 3), st.sampled_from(["valid", "same"]),
)
def test_plan_matches_brute_force(h, w, c, kh, kw, sh, sw, padding):
    if padding == "valid" and (kh > h or kw > w):
        with pytest.raises(ValueError, match=r"does not fit in an input"):
            im2col_plan(h, w, c, kh, kw, (sh, sw), padding)
        return
    plan = im2col_plan(h, w, c, kh, kw, (sh, sw), padding)
    pads, oh, ow, indices, counts = brute_force(h, w, c, kh, kw, (sh, sw), padding)
    assert (plan.pads, plan.out_h, plan.out_w) == (pads, oh, ow)
    assert plan.indices.shape == (oh * ow, kh * kw * c) == (plan.positions, plan.window_size)
    np.testing.assert_array_equal(plan.indices, indices)
    np.testing.assert_array_equal(plan.valid_counts, counts)
    assert plan.valid_counts.min() >= 1


def test_conv_is_pad_reshape_gather_matmul():
    rng = np.random.default_rng(3)
    x, kernel = rng.normal(size=(2, 5, 4, 3)), rng.normal(size=(2, 3, 3, 5))
    plan = im2col_plan(5, 4, 3, 2, 3, (2, 1), "same")
    padded = np.pad(x, [(0, 0), *plan.pads, (0, 0)])
    cols = np.take(padded.reshape(2, -1), plan.indices, axis=1)
    y = (cols @ kernel.reshape(-1, 5)).reshape(2, plan.out_h, plan.out_w, 5)
    np.testing.assert_array_equal(cols, extract_patches(plan, x))
    # Output (1, 2) reads padded rows 2..3 and columns 2..4.
    expected = np.tensordot(padded[:, 2:4, 2:5, :], kernel, axes=([1, 2, 3], [0, 1, 2]))
    np.testing.assert_allclose(y[:, 1, 2, :], expected, rtol=1e-13)


def test_plans_are_cached_and_read_only():
    a = im2col_plan(6, 6, 2, 3, 3, (1, 1), "same")
    b = im2col_plan(6, 6, 2, 3, 3, [1, 1], "same")
    assert a is b
    with pytest.raises(ValueError):
        a.indices[0, 0] = 1
    with pytest.raises(ValueError):
        a.valid_counts[0] = 1


def test_bad_padding_and_stride_are_refused():
    with pytest.raises(ValueError, match=r"padding must be 'valid' or 'same', received 'full'"):
        im2col_plan(4, 4, 1, 2, 2, (1, 1), "full")
    with pytest.raises(ValueError, match=r"window and stride must be >= 1"):
        im2col_plan(4, 4, 1, 2, 2, (0, 1), "valid")
