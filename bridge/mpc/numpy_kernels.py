"""Reference ring kernels in NumPy: the oracle the framework backends are tested against.

Every operation is the obvious NumPy one on int64 arrays.  NumPy's integer array
arithmetic wraps modulo 2^64 (two's complement) without raising; the overflow
warnings it emits for 0-d operands are silenced.  ``matmul`` runs on the uint64
view of its operands, where C defines wrap-around (signed overflow is undefined
behaviour in C even though NumPy's int64 loop happens to wrap), and reinterprets
the result as int64: the bits are the same, so the ring element is the same.

This module also holds the argument checks every backend shares (shift amounts,
matmul shapes, pads, gather indices, segment ids), so that all backends accept and
refuse exactly the same calls with the same messages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bridge.mpc.kernels import RingKernels

# -- argument checks shared by every backend ------------------------------------------------


def as_int64_array(array: np.ndarray) -> np.ndarray:
    """``array`` as int64 without copying when it already is; integer arrays are reinterpreted
    modulo 2^64, anything else is refused."""
    array = np.asarray(array)
    if array.dtype == np.int64:
        return array
    if array.dtype == np.uint64:
        return array.view(np.int64)
    if array.dtype.kind in "biu":
        return array.astype(np.int64)
    raise TypeError(
        f"ring tensors are int64; received an array of dtype {array.dtype}. "
        "Encode reals to fixed point first (bridge.mpc.fixedpoint.encode)."
    )


def check_shift(bits: int) -> int:
    """A shift amount in [0, 63]: shifting a 64-bit word by 64 or more is not a ring operation."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 0 <= bits < 64:
        raise ValueError(f"expected a shift amount that is an int in [0, 63]; received {bits!r}")
    return int(bits)


def check_matmul(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> None:
    """(M, K) @ (K, N) only: batched products are reshaped to 2-D by the caller."""
    if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[1] != b_shape[0]:
        raise ValueError(
            f"matmul expects (M, K) @ (K, N); received {a_shape} @ {b_shape}. "
            "Reshape batched operands to 2-D, or transpose so the inner dimensions agree."
        )


def check_pads(pads: Sequence[tuple[int, int]], ndim: int) -> list[tuple[int, int]]:
    """One non-negative (before, after) pair per axis."""
    pairs = [tuple(int(p) for p in pair) for pair in pads]
    if len(pairs) != ndim or any(len(p) != 2 or p[0] < 0 or p[1] < 0 for p in pairs):
        raise ValueError(
            f"pad expects one non-negative (before, after) pair per axis of a rank-{ndim} tensor; "
            f"received {list(pads)!r}"
        )
    return pairs  # type: ignore[return-value]


def check_take_indices(indices: np.ndarray, size: int, axis: int) -> np.ndarray:
    """``np.take`` indices as non-negative int64, negatives counted from the end, range checked."""
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"gather expects integer indices; received dtype {indices.dtype}")
    indices = indices.astype(np.int64, copy=False)
    if indices.size:
        low, high = int(indices.min()), int(indices.max())
        if low < -size or high >= size:
            raise IndexError(
                f"gather index out of range for axis {axis} of size {size}: "
                f"indices span [{low}, {high}], valid are [{-size}, {size - 1}]"
            )
        if low < 0:
            indices = np.where(indices < 0, indices + size, indices)
    return indices


def normalize_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for a rank-{ndim} tensor")
    return axis % ndim


def check_segment_ids(ids: np.ndarray, data_shape: tuple[int, ...], num_segments: int) -> np.ndarray:
    """Flattened int64 segment ids; ``ids.shape`` must be a prefix of ``data_shape``.

    A prefix (not only axis 0) makes ``segment_sum(g, idx, n)`` the exact adjoint of
    ``gather(x, idx, axis=0)`` for indices of any shape, as in
    ``tf.math.unsorted_segment_sum``.
    """
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"segment_sum expects integer segment ids; received dtype {ids.dtype}")
    if tuple(data_shape[: ids.ndim]) != ids.shape:
        raise ValueError(
            f"segment ids of shape {ids.shape} must match the leading axes of the data, "
            f"of shape {tuple(data_shape)}"
        )
    ids = ids.astype(np.int64, copy=False).reshape(-1)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_segments):
        raise IndexError(
            f"segment ids must lie in [0, {num_segments - 1}]; received ids in "
            f"[{int(ids.min())}, {int(ids.max())}]. Raise num_segments or fix the ids."
        )
    return ids


# -- the kernels ------------------------------------------------------------------------------


def _ring(value) -> np.ndarray:
    """Results as int64 ndarrays (0-d operations give NumPy scalars otherwise)."""
    return np.asarray(value, dtype=np.int64)


class NumpyKernels(RingKernels):
    """Exact Z_2^64 kernels on NumPy int64 arrays (the test oracle)."""

    name = "numpy"

    # -- conversion
    def from_numpy(self, array: np.ndarray) -> np.ndarray:
        return as_int64_array(array)

    def to_numpy(self, tensor: np.ndarray) -> np.ndarray:
        return np.asarray(tensor, dtype=np.int64, order="C")

    def shape(self, tensor: np.ndarray) -> tuple[int, ...]:
        return tuple(np.shape(tensor))

    # -- elementwise
    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return _ring(np.add(a, b))

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return _ring(np.subtract(a, b))

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return _ring(np.multiply(a, b))

    def neg(self, a: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return _ring(np.negative(a))

    # -- bitwise
    def bit_and(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _ring(np.bitwise_and(a, b))

    def bit_xor(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _ring(np.bitwise_xor(a, b))

    def shift_right(self, a: np.ndarray, bits: int) -> np.ndarray:
        return _ring(np.right_shift(a, check_shift(bits)))

    def shift_left(self, a: np.ndarray, bits: int) -> np.ndarray:
        # On uint64, where C defines the bits shifted out as lost.
        shifted = np.left_shift(_ring(a).view(np.uint64), np.uint64(check_shift(bits)))
        return shifted.view(np.int64)

    # -- linear algebra
    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = _ring(a), _ring(b)
        check_matmul(a.shape, b.shape)
        return np.matmul(a.view(np.uint64), b.view(np.uint64)).view(np.int64)

    # -- layout
    def sum(self, a: np.ndarray, axis: int | tuple[int, ...], keepdims: bool = False) -> np.ndarray:
        with np.errstate(over="ignore"):
            return _ring(np.sum(a, axis=axis, keepdims=keepdims, dtype=np.int64))

    def reshape(self, a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        return np.reshape(a, tuple(shape))

    def transpose(self, a: np.ndarray, perm: Sequence[int]) -> np.ndarray:
        return np.transpose(a, tuple(perm))

    def broadcast_to(self, a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        return np.broadcast_to(a, tuple(shape))

    def pad(self, a: np.ndarray, pads: Sequence[tuple[int, int]]) -> np.ndarray:
        a = _ring(a)
        return np.pad(a, check_pads(pads, a.ndim), mode="constant", constant_values=0)

    def gather(self, a: np.ndarray, indices: np.ndarray, axis: int) -> np.ndarray:
        a = _ring(a)
        axis = normalize_axis(axis, a.ndim)
        return np.take(a, check_take_indices(indices, a.shape[axis], axis), axis=axis)

    def segment_sum(self, a: np.ndarray, segment_ids: np.ndarray, num_segments: int) -> np.ndarray:
        a = _ring(a)
        ids = check_segment_ids(segment_ids, a.shape, num_segments)
        rest = a.shape[np.ndim(segment_ids):]
        out = np.zeros((num_segments, *rest), dtype=np.int64)
        with np.errstate(over="ignore"):
            np.add.at(out, ids, a.reshape(ids.size, *rest))
        return out

    def concat(self, tensors: Sequence[np.ndarray], axis: int) -> np.ndarray:
        return np.concatenate([_ring(t) for t in tensors], axis=axis)

    def stack(self, tensors: Sequence[np.ndarray], axis: int = 0) -> np.ndarray:
        return np.stack([_ring(t) for t in tensors], axis=axis)
