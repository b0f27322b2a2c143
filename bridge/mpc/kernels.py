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

import contextlib
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

    # -- conveniences with defaults (override for speed) ---------------------------------
    def unstack(self, a: Tensor) -> list[Tensor]:
        """The slices along axis 0 (views where the framework allows)."""
        rest = self.shape(a)[1:]
        return [self.reshape(self.gather(a, np.array([i]), axis=0), rest) for i in range(self.shape(a)[0])]

    def pack_bits(self, bits: Tensor) -> Tensor:
        """0/1 values (..., n) -> int64 words (..., ceil(n / 64)); element j is bit j % 64."""
        return self.from_numpy(pack_bits_np(self.to_numpy(bits)))

    def unpack_bits(self, words: Tensor, count: int) -> Tensor:
        """The inverse of ``pack_bits``: int64 words (..., w) -> 0/1 values (..., count)."""
        return self.from_numpy(unpack_bits_np(self.to_numpy(words), count))

    # -- optional acceleration -----------------------------------------------------------
    def compile(self, fn):
        """Wrap a pure tensor function for speed (e.g. ``tf.function``); identity by default."""
        return fn

    def parallel_parties(self, count: int) -> contextlib.AbstractContextManager:
        """While ``count`` parties run their kernels in threads of this process (embedded
        mode), keep their intra-op threads within the cores: ``count`` thread teams of
        ``cores`` threads each would oversubscribe a small machine.  No-op by default."""
        return contextlib.nullcontext()


def pack_bits_np(bits: np.ndarray) -> np.ndarray:
    """NumPy bit slicing: (..., n) 0/1 -> (..., ceil(n/64)) int64 words, little-endian bit order."""
    n = bits.shape[-1]
    words = -(-n // 64)
    padded = np.zeros(bits.shape[:-1] + (words * 64,), dtype=np.uint8)
    padded[..., :n] = bits
    packed = np.packbits(padded, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<i8").astype(np.int64, copy=False)


def unpack_bits_np(words: np.ndarray, count: int) -> np.ndarray:
    raw = np.ascontiguousarray(words.astype("<i8", copy=False)).view(np.uint8)
    return np.unpackbits(raw, axis=-1, bitorder="little")[..., :count].astype(np.int64)


def bit_planes_np(values: np.ndarray, nbits: int) -> np.ndarray:
    """int64 values (n,) -> their low ``nbits`` bits as planes (nbits, ceil(n/64)) of packed words
    (64x64 bit-matrix transposes, ``bridge.mpc.bitslice``: O(n) memory)."""
    from bridge.mpc.bitslice import bit_planes

    return bit_planes(values, nbits)
