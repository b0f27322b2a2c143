"""Patch extraction as a gather with public indices: convolution and pooling for any backend.

A 2-D window over an NHWC image reads cells whose positions depend only on shapes,
never on data, so every backend (the float64 reference, ring-share kernels on
torch or TensorFlow) can extract patches the same way, with no data-dependent
control flow:

1. pad:      x (n, H, W, C) -> (n, Hp, Wp, C) with ``plan.pads`` on the two spatial axes;
2. reshape:  -> (n, Hp * Wp * C);
3. gather:   take ``plan.indices`` along axis 1 -> (n, out_h * out_w, kh * kw * C);
4. matmul:   with the kernel reshaped to (kh * kw * C, filters) -> (n, out_h * out_w, filters),
             then reshape to (n, out_h, out_w, filters).

The window axis is ordered (row, column, channel), so a Keras kernel of shape
(kh, kw, C, filters) reshapes directly to (kh * kw * C, filters).  Pooling
reshapes the window axis to (kh * kw, C) and reduces over kh * kw.  Padding is
Keras/TensorFlow's: 'same' puts the odd extra cell after (``same_padding``), and
'same' average pooling divides by ``valid_counts``, the number of real
(non-padded) cells in each window.

Every step is linear in x, so on additive shares each party runs them locally.
The adjoint of step 3 (scatter-add of patch entries back onto their cells) is the
backward pass of a convolution or pooling with respect to its input.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from bridge.ir.shapes import same_padding, window_output

Pads = tuple[tuple[int, int], tuple[int, int]]


@dataclass(frozen=True, eq=False)
class Im2ColPlan:
    """Public, data-independent description of one windowed op's patches."""

    #: ((top, bottom), (left, right)) zero padding of the spatial axes
    pads: Pads
    out_h: int
    out_w: int
    #: (out_h * out_w, kh * kw * C) int64 indices into one padded image flattened over (Hp, Wp, C)
    indices: np.ndarray
    #: (out_h * out_w,) int64: real (non-padded) cells in each window, the divisor of 'same' avg pooling
    valid_counts: np.ndarray

    @property
    def positions(self) -> int:
        """Output positions: out_h * out_w."""
        return int(self.indices.shape[0])

    @property
    def window_size(self) -> int:
        """Entries per patch: kh * kw * C."""
        return int(self.indices.shape[1])


def _axis(size: int, window: int, stride: int, padding: str, what: str) -> tuple[tuple[int, int], int]:
    if window < 1 or stride < 1:
        raise ValueError(f"{what}: window and stride must be >= 1, received window={window}, stride={stride}")
    if padding == "same":
        pads = same_padding(size, window, stride)
    elif padding == "valid":
        pads = (0, 0)
    else:
        raise ValueError(f"padding must be 'valid' or 'same', received {padding!r}")
    out = window_output(size, window, stride, padding)
    if out < 1:
        raise ValueError(
            f"{what}: a window of {window} does not fit in an input of {size} with padding='valid'; "
            "use a smaller window or padding='same'"
        )
    return pads, out


def im2col_plan(
    h: int,
    w: int,
    c: int,
    kh: int,
    kw: int,
    strides: tuple[int, int] | list[int],
    padding: str,
    dilation: tuple[int, int] | list[int] = (1, 1),
) -> Im2ColPlan:
    """The plan for a (kh, kw) window with ``strides`` and Keras ``padding`` over (h, w, c) images.

    ``dilation`` spaces the window's taps (a dilated convolution): the window spans
    (k - 1) d + 1 cells, which is what 'same' padding and the output size count.
    Plans are cached and their arrays read-only: they depend on shapes alone.
    """
    sh, sw = strides
    dh, dw = dilation
    return _plan(int(h), int(w), int(c), int(kh), int(kw), int(sh), int(sw), str(padding), int(dh), int(dw))


@lru_cache(maxsize=256)
def _plan(
    h: int, w: int, c: int, kh: int, kw: int, sh: int, sw: int, padding: str, dh: int = 1, dw: int = 1
) -> Im2ColPlan:
    if min(h, w, c) < 1:
        raise ValueError(f"im2col needs a non-empty (h, w, c) image, received {(h, w, c)}")
    if min(dh, dw) < 1:
        raise ValueError(f"dilation must be >= 1, received {(dh, dw)}")
    pads_h, out_h = _axis(h, (kh - 1) * dh + 1, sh, padding, "rows")
    pads_w, out_w = _axis(w, (kw - 1) * dw + 1, sw, padding, "columns")
    wp = w + pads_w[0] + pads_w[1]

    # Top-left corner of each window in the padded image, then offsets inside a window.
    rows = (np.arange(out_h) * sh)[:, None, None, None, None] + (np.arange(kh) * dh)[None, None, :, None, None]
    cols = (np.arange(out_w) * sw)[None, :, None, None, None] + (np.arange(kw) * dw)[None, None, None, :, None]
    chans = np.arange(c)[None, None, None, None, :]
    indices = ((rows * wp + cols) * c + chans).reshape(out_h * out_w, kh * kw * c).astype(np.int64)

    # A padded cell is a row outside [top, top + h) or a column outside [left, left + w).
    real_rows = ((rows >= pads_h[0]) & (rows < pads_h[0] + h)).sum(axis=2)  # (out_h, 1, 1, 1)
    real_cols = ((cols >= pads_w[0]) & (cols < pads_w[0] + w)).sum(axis=3)  # (1, out_w, 1, 1)
    valid_counts = (real_rows * real_cols).reshape(out_h * out_w).astype(np.int64)

    indices.setflags(write=False)
    valid_counts.setflags(write=False)
    return Im2ColPlan((pads_h, pads_w), out_h, out_w, indices, valid_counts)


def extract_patches(plan: Im2ColPlan, x: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """(n, H, W, C) -> (n, out_h * out_w, kh * kw * C) in NumPy, padding with ``fill``."""
    padded = np.pad(x, [(0, 0), *plan.pads, (0, 0)], constant_values=fill)
    return np.take(padded.reshape(x.shape[0], -1), plan.indices, axis=1)
