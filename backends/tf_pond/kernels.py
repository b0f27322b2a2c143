"""Exact Z_2^64 kernels on TensorFlow int64 tensors, with stock TF ops only.

TensorFlow's int64 Add/Sub/Mul/Neg wrap modulo 2^64, ``tf.bitwise.right_shift`` is
arithmetic on signed types, and ``tf.linalg.matmul`` has an exact int64 CPU kernel
(each checked against Python integers in ``tests/backends/test_ring_kernels.py``).
Measured with ``scripts/bench_kernels.py`` (TF 2.21, 2-core AVX-512 EPYC), the int64
matmul is faster than an exact float64 limb-product path for every shape we run
((128, 784) @ (784, 128): 2.5 ms int64, 3.9 ms limbs under tf.function), so there is
no limb path here.

TensorFlow is imported by this module only; the tf-pond backend imports this module
only when it makes its kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from bridge.mpc.kernels import RingKernels
from bridge.mpc.numpy_kernels import (
    as_int64_array,
    check_matmul,
    check_pads,
    check_segment_ids,
    check_shift,
    check_take_indices,
    normalize_axis,
)


def _wrap64(value: int) -> int:
    value %= 1 << 64
    return value - (1 << 64) if value >= 1 << 63 else value


class TfKernels(RingKernels):
    """Z_2^64 on tf.int64 eager tensors (CPU)."""

    name = "tensorflow"

    # -- conversion ---------------------------------------------------------------------------
    def from_numpy(self, array: np.ndarray) -> tf.Tensor:
        return tf.convert_to_tensor(as_int64_array(array), dtype=tf.int64)

    def to_numpy(self, tensor: tf.Tensor) -> np.ndarray:
        return np.asarray(tensor.numpy() if hasattr(tensor, "numpy") else tensor, dtype=np.int64, order="C")

    def shape(self, tensor: tf.Tensor) -> tuple[int, ...]:
        return tuple(tensor.shape)

    def zeros(self, shape: Sequence[int]) -> tf.Tensor:
        return tf.zeros(tuple(shape), dtype=tf.int64)

    def constant(self, value: int, shape: Sequence[int] = ()) -> tf.Tensor:
        return tf.fill(tuple(shape), tf.constant(_wrap64(int(value)), dtype=tf.int64))

    # -- elementwise ------------------------------------------------------------------------
    def add(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.add(a, b)

    def sub(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.subtract(a, b)

    def mul(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.multiply(a, b)

    def neg(self, a: tf.Tensor) -> tf.Tensor:
        return tf.negative(a)

    # -- bitwise ----------------------------------------------------------------------------
    def bit_and(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.bitwise.bitwise_and(a, b)

    def bit_xor(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.bitwise.bitwise_xor(a, b)

    def shift_right(self, a: tf.Tensor, bits: int) -> tf.Tensor:
        return tf.bitwise.right_shift(a, tf.constant(check_shift(bits), dtype=tf.int64))

    def shift_left(self, a: tf.Tensor, bits: int) -> tf.Tensor:
        return tf.bitwise.left_shift(a, tf.constant(check_shift(bits), dtype=tf.int64))

    # -- linear algebra -----------------------------------------------------------------------
    def matmul(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        check_matmul(tuple(a.shape), tuple(b.shape))
        return tf.linalg.matmul(a, b)

    # -- layout ---------------------------------------------------------------------------------
    def sum(self, a: tf.Tensor, axis: int | tuple[int, ...], keepdims: bool = False) -> tf.Tensor:
        if isinstance(axis, tuple) and not axis:
            return a
        return tf.reduce_sum(a, axis=list(axis) if isinstance(axis, tuple) else axis, keepdims=keepdims)

    def reshape(self, a: tf.Tensor, shape: Sequence[int]) -> tf.Tensor:
        return tf.reshape(a, tuple(shape))

    def transpose(self, a: tf.Tensor, perm: Sequence[int]) -> tf.Tensor:
        return tf.transpose(a, perm=tuple(perm))

    def broadcast_to(self, a: tf.Tensor, shape: Sequence[int]) -> tf.Tensor:
        return tf.broadcast_to(a, tuple(shape))

    def pad(self, a: tf.Tensor, pads: Sequence[tuple[int, int]]) -> tf.Tensor:
        pairs = check_pads(pads, len(a.shape))
        if not any(p for pair in pairs for p in pair):
            return a
        return tf.pad(a, pairs, mode="CONSTANT", constant_values=0)

    def gather(self, a: tf.Tensor, indices: np.ndarray, axis: int) -> tf.Tensor:
        axis = normalize_axis(axis, len(a.shape))
        idx = check_take_indices(indices, a.shape[axis], axis)
        return tf.gather(a, idx, axis=axis)

    def segment_sum(self, a: tf.Tensor, segment_ids: np.ndarray, num_segments: int) -> tf.Tensor:
        ids = check_segment_ids(segment_ids, tuple(a.shape), num_segments)
        return tf.math.unsorted_segment_sum(a, ids.reshape(np.shape(segment_ids)), num_segments)

    def concat(self, tensors: Sequence[tf.Tensor], axis: int) -> tf.Tensor:
        return tf.concat(list(tensors), axis=axis)

    def stack(self, tensors: Sequence[tf.Tensor], axis: int = 0) -> tf.Tensor:
        return tf.stack(list(tensors), axis=axis)

    def unstack(self, a: tf.Tensor) -> list[tf.Tensor]:
        return tf.unstack(a, axis=0)

    # -- optional acceleration -----------------------------------------------------------------
    def compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Identity, by measurement (TF 2.21, CPU): ``tf.function`` is no faster than eager
        for our kernels (0.33 ms vs 0.15 ms for a Beaver combination on 128x128, 11.6 vs
        14.0 ms for a long shift/xor chain on 16x65536), and ``jit_compile=True`` fuses
        elementwise chains (4.8x on that chain) but makes int64 matmul 5.6x slower and
        recompiles for every new shape."""
        return fn
