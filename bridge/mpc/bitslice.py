"""Bit slicing by 64x64 bit-matrix transposes, in NumPy, in O(n) memory.

A comparison opens c = y + r for every compared element and needs its bits as planes:
plane b holds bit b of 64 elements per int64 word.  Unpacking every bit to a byte (the
obvious way) costs 64 bytes per element three times over (unpack, transpose, pad) and
dominated a large model's range check (MobileNetV2 at 96x96: 42% of the compute parties'
samples, and the process's peak memory).  Here each block of 64 words is one 64x64 bit
matrix (row i: element i, column b: its bit b) and is transposed in place by the classic
recursive block swap (Hacker's Delight, 7-3): six stages, each exchanging the off-diagonal
halves of every 2j x 2j block with masks and shifts, vectorised over all blocks.  Working
memory: the words and a few half-size temporaries.
"""

from __future__ import annotations

import numpy as np

#: (j, mask): the stage swapping j x j blocks; mask selects the bits whose position has bit j clear
_STAGES = tuple(
    (j, np.uint64(sum(1 << b for b in range(64) if not b & j)))
    for j in (32, 16, 8, 4, 2, 1)
)


def transpose64(blocks: np.ndarray) -> np.ndarray:
    """Transpose each 64x64 bit matrix in ``blocks`` (w, 64) uint64, in place: afterwards
    bit i of ``blocks[:, b]`` is bit b of the old ``blocks[:, i]``."""
    w = blocks.shape[0]
    for j, mask in _STAGES:
        view = blocks.reshape(w, 64 // (2 * j), 2, j)
        lo, hi = view[:, :, 0, :], view[:, :, 1, :]
        t = ((lo >> np.uint64(j)) ^ hi) & mask
        hi ^= t
        t <<= np.uint64(j)
        lo ^= t
    return blocks


def bit_planes(values: np.ndarray, nbits: int) -> np.ndarray:
    """int64 values (n,) -> their low ``nbits`` bits as planes (nbits, ceil(n/64)) of int64
    words; element j of a plane is bit j % 64 of word j // 64 (little-endian bit order)."""
    if not 0 < nbits <= 64:
        raise ValueError(f"nbits must be in 1..64; received {nbits}")
    flat = np.asarray(values).reshape(-1)
    n = flat.shape[0]
    words = -(-n // 64)
    blocks = np.zeros((words, 64), dtype=np.uint64)
    blocks.reshape(-1)[:n] = flat.astype(np.int64, copy=False).view(np.uint64)
    transpose64(blocks)
    return np.ascontiguousarray(blocks[:, :nbits].T).view(np.int64)
