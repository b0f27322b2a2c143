"""Fixed framing of tensors on the wire.  Nothing is ever pickled.

A frame is::

    magic "PB1" | kind u8 | ndim u8 | shape u64 x ndim | payload

``kind`` says how the int64 values were packed: full 64-bit words, the low 32/16/8
bits (for values in a smaller ring, e.g. comparisons modulo 2^k), single bits (8
per byte, for binary shares), or raw bytes (seeds, control data).  A receiver
checks magic, kind and that the payload length matches the shape exactly, so a
malformed message is rejected with an error instead of being misread.
"""

from __future__ import annotations

import struct

import numpy as np

MAGIC = b"PB1"

KIND_I64, KIND_U32, KIND_U16, KIND_U8, KIND_BITS, KIND_BYTES = range(6)
_WORD_KINDS = {KIND_I64: np.dtype("<i8"), KIND_U32: np.dtype("<u4"), KIND_U16: np.dtype("<u2"), KIND_U8: np.dtype("u1")}
MAX_NDIM = 16


class WireError(ValueError):
    """A peer sent a message that is not a valid frame."""


def kind_for_bits(bits: int) -> int:
    """The narrowest packing that holds values of a ring with ``bits`` bits."""
    if bits == 1:
        return KIND_BITS
    if bits <= 8:
        return KIND_U8
    if bits <= 16:
        return KIND_U16
    if bits <= 32:
        return KIND_U32
    return KIND_I64


def payload_size(kind: int, shape: tuple[int, ...]) -> int:
    count = int(np.prod(shape, dtype=np.int64))
    if kind == KIND_BITS:
        return (count + 7) // 8
    if kind == KIND_BYTES:
        return count
    return count * _WORD_KINDS[kind].itemsize


def encode_frame(array: np.ndarray, bits: int = 64) -> bytes:
    """Pack an int64 array whose values matter modulo 2^bits."""
    array = np.ascontiguousarray(array)
    kind = kind_for_bits(bits)
    if array.ndim > MAX_NDIM:
        raise WireError(f"cannot send a tensor of rank {array.ndim} (at most {MAX_NDIM})")
    if kind == KIND_BITS:
        payload = np.packbits(array.astype(np.uint8, copy=False) & 1).tobytes()
    else:
        payload = array.astype(_WORD_KINDS[kind], copy=False).tobytes()
    header = MAGIC + struct.pack("<BB", kind, array.ndim) + struct.pack(f"<{array.ndim}Q", *array.shape)
    return header + payload


def encode_bytes(data: bytes) -> bytes:
    return MAGIC + struct.pack("<BBQ", KIND_BYTES, 1, len(data)) + data


def _parse(frame: bytes) -> tuple[int, tuple[int, ...], memoryview]:
    view = memoryview(frame)
    if len(view) < 5 or bytes(view[:3]) != MAGIC:
        raise WireError("message does not start with the privacy-bridge frame magic; dropped")
    kind, ndim = struct.unpack_from("<BB", view, 3)
    if kind > KIND_BYTES or ndim > MAX_NDIM:
        raise WireError(f"message has unknown kind {kind} or rank {ndim}; dropped")
    head = 5 + 8 * ndim
    if len(view) < head:
        raise WireError("message is shorter than its header; dropped")
    shape = struct.unpack_from(f"<{ndim}Q", view, 5)
    if len(view) - head != payload_size(kind, shape):
        raise WireError(
            f"message payload has {len(view) - head} bytes, its header promises "
            f"{payload_size(kind, shape)} for shape {shape}; dropped"
        )
    return kind, shape, view[head:]


def decode_frame(frame: bytes) -> np.ndarray:
    """The int64 array in a tensor frame (narrow kinds are sign-extended later by the caller's ring)."""
    kind, shape, payload = _parse(frame)
    if kind == KIND_BYTES:
        raise WireError("expected a tensor message, received raw bytes")
    if kind == KIND_BITS:
        count = int(np.prod(shape, dtype=np.int64))
        bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))[:count]
        return bits.astype(np.int64).reshape(shape)
    return np.frombuffer(payload, dtype=_WORD_KINDS[kind]).astype(np.int64).reshape(shape)


def decode_bytes(frame: bytes) -> bytes:
    kind, _, payload = _parse(frame)
    if kind != KIND_BYTES:
        raise WireError("expected raw bytes, received a tensor message")
    return bytes(payload)
