"""CSPRNG streams for every share, mask and triple.

AES-256 in counter mode (the ``cryptography`` package) keyed from ``os.urandom``.
Two parties holding the same seed draw identical streams, which is how the dealer
hands out correlated randomness without sending it (the "seeded dealer" of
CrypTen's TTP provider): only derived values such as c = f(a, b) travel.

One seed gives many independent streams: ``stream`` fills the high 64 bits of the
counter block (the low 64 count blocks), so stream n never overlaps stream m.  The
protocol runs draw from stream = run index, so that parties that stopped at different
points of a failed run start the next one in step (``PartyContext.begin_run``).
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32


def fresh_seed() -> bytes:
    return os.urandom(SEED_BYTES)


class Prg:
    """A deterministic stream of cryptographically strong bytes from one seed."""

    def __init__(self, seed: bytes, stream: int = 0) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"a PRG seed has {SEED_BYTES} bytes, received {len(seed)}")
        if not 0 <= stream < 1 << 64:
            raise ValueError(f"a PRG stream index is in [0, 2^64), received {stream}")
        cipher = Cipher(algorithms.AES(seed), modes.CTR(stream.to_bytes(8, "big") + b"\x00" * 8))
        self._encryptor = cipher.encryptor()

    def _stream(self, n: int) -> bytearray:
        """n keystream bytes written straight into a fresh buffer (no zero-string or copy)."""
        out = bytearray(n + 15)  # update_into wants room for a block's slack
        written = self._encryptor.update_into(_zeros(n), out)
        if written != n:
            raise RuntimeError(f"AES-CTR produced {written} bytes, expected {n}")
        return out

    def bytes(self, n: int) -> bytes:
        return bytes(self._stream(n)[:n])

    def ring(self, shape: tuple[int, ...]) -> np.ndarray:
        """Uniform elements of Z_2^64 as int64."""
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self._stream(8 * count), dtype=np.int64, count=count).reshape(shape)

    def bits(self, shape: tuple[int, ...]) -> np.ndarray:
        """Uniform bits (0/1) as int64, eight per random byte."""
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = (count + 7) // 8
        raw = np.frombuffer(self._stream(nbytes), dtype=np.uint8, count=nbytes)
        return np.unpackbits(raw)[:count].astype(np.int64).reshape(shape)


_ZEROS = bytes(1 << 20)


def _zeros(n: int) -> memoryview:
    """A read-only view of n zero bytes, from one shared buffer that grows on demand."""
    global _ZEROS
    if len(_ZEROS) < n:
        _ZEROS = bytes(max(n, 2 * len(_ZEROS)))
    return memoryview(_ZEROS)[:n]
