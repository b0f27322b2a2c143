"""The primitive interface a backend implements: wrapping tensor arithmetic in Z_2^64.

Every secure protocol in ``bridge.mpc`` (sharing, Beaver multiplication, truncation,
comparison, the layers' forward and backward) is written once against this
interface.  A backend supplies only the framework-specific part: how its tensors
add, multiply and matmul modulo 2^64, how they gather and scatter, and how they
convert to and from NumPy for the wire.

All tensors are signed 64-bit integers; arithmetic wraps modulo 2^64 exactly
(two's complement).  Shapes are tuples of ints.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

Tensor = Any  # a backend's native int64 tensor (torch.Tensor, tf.Tensor, ...)


class RingKernels(ABC):
    """Exact int64 (mod 2^64) tensor kernels of one framework."""

    #: short name, e.g. "torch" or "tensorflow"
    name: str = ""

    # -- conversion ---------------------------------------------------------------
    @abstractmethod
    def from_numpy(self, array: np.ndarray) -> Tensor:
        """An int64 NumPy array as a native tensor (may share memory)."""

    @abstractmethod
    def to_numpy(self, tensor: Tensor) -> np.ndarray:
        """A native tensor as a C-contiguous int64 NumPy array."""

    @abstractmethod
    def shape(self, tensor: Tensor) -> tuple[int, ...]: ...

    def zeros(self, shape: Sequence[int]) -> Tensor:
        return self.from_numpy(np.zeros(tuple(shape), dtype=np.int64))

    def constant(self, value: int, shape: Sequence[int] = ()) -> Tensor:
        return self.from_numpy(np.full(tuple(shape), value, dtype=np.int64))

    # -- elementwise, broadcasting, wrapping -------------------------------------
    @abstractmethod
    def add(self, a: Tensor, b: Tensor) -> Tensor: ...

    @abstractmethod
    def sub(self, a: Tensor, b: Tensor) -> Tensor: ...

    @abstractmethod
    def mul(self, a: Tensor, b: Tensor) -> Tensor: ...

    @abstractmethod
    def neg(self, a: Tensor) -> Tensor: ...

    # -- bitwise ---------------------------------------------------------------------
    @abstractmethod
    def bit_and(self, a: Tensor, b: Tensor) -> Tensor: ...

    @abstractmethod
    def bit_xor(self, a: Tensor, b: Tensor) -> Tensor: ...

    @abstractmethod
    def shift_right(self, a: Tensor, bits: int) -> Tensor:
        """Arithmetic (sign-extending) right shift."""

    @abstractmethod
    def shift_left(self, a: Tensor, bits: int) -> Tensor: ...

    # -- linear algebra --------------------------------------------------------------
    @abstractmethod
    def matmul(self, a: Tensor, b: Tensor) -> Tensor:
        """(M, K) @ (K, N) -> (M, N), exact modulo 2^64."""

    # -- layout ----------------------------------------------------------------------
    @abstractmethod
    def sum(self, a: Tensor, axis: int | tuple[int, ...], keepdims: bool = False) -> Tensor: ...

    @abstractmethod
    def reshape(self, a: Tensor, shape: Sequence[int]) -> Tensor: ...

    @abstractmethod
    def transpose(self, a: Tensor, perm: Sequence[int]) -> Tensor: ...

    @abstractmethod
    def broadcast_to(self, a: Tensor, shape: Sequence[int]) -> Tensor: ...

    @abstractmethod
    def pad(self, a: Tensor, pads: Sequence[tuple[int, int]]) -> Tensor:
        """Zero padding, one (before, after) pair per axis."""

    @abstractmethod
    def gather(self, a: Tensor, indices: np.ndarray, axis: int) -> Tensor:
        """``np.take(a, indices, axis)``: indices is an int64 array of any shape."""

    @abstractmethod
    def segment_sum(self, a: Tensor, segment_ids: np.ndarray, num_segments: int) -> Tensor:
        """Sum rows of ``a`` (axis 0) into ``num_segments`` buckets: the adjoint of gather."""

    @abstractmethod
    def concat(self, tensors: Sequence[Tensor], axis: int) -> Tensor: ...

    @abstractmethod
    def stack(self, tensors: Sequence[Tensor], axis: int = 0) -> Tensor: ...

    # -- bit slicing (defaults from the ops above; override for speed) ---------------------
    def pack_bits(self, bits: Tensor) -> Tensor:
        """0/1 values (..., n) -> int64 words (..., ceil(n / 64)); element j is bit j % 64."""
        shape = self.shape(bits)
        n = shape[-1]
        words = -(-n // 64)
        padded = self.pad(bits, [(0, 0)] * (len(shape) - 1) + [(0, words * 64 - n)])
        grouped = self.reshape(padded, tuple(shape[:-1]) + (words, 64))
        weights = self.from_numpy(np.left_shift(np.int64(1), np.arange(64, dtype=np.int64)))
        return self.sum(self.mul(grouped, weights), axis=len(shape))

    def unpack_bits(self, words: Tensor, count: int) -> Tensor:
        """The inverse of ``pack_bits``: int64 words (..., w) -> 0/1 values (..., count)."""
        shape = self.shape(words)
        one = self.constant(1)
        planes = [self.bit_and(self.shift_right(words, j), one) for j in range(64)]
        bits = self.stack(planes, axis=len(shape))
        flat = self.reshape(bits, tuple(shape[:-1]) + (shape[-1] * 64,))
        return self.gather(flat, np.arange(count, dtype=np.int64), axis=len(shape) - 1)

    # -- optional acceleration -----------------------------------------------------------
    def compile(self, fn):
        """Wrap a pure tensor function for speed (e.g. ``tf.function``); identity by default."""
        return fn
