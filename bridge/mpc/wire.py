"""Fixed framing of tensors on the wire.  Nothing is ever pickled.

A frame is::

    magic "PB1" | kind u8 | ndim u8 | shape u64 x ndim | payload

``kind`` says how the int64 values were packed: full 64-bit words, the low 32/16/8
bits (for values in a smaller ring, e.g. comparisons modulo 2^k), single bits (8
per byte, for binary shares), or raw bytes (seeds, control data).  A receiver
checks magic, kind, that every dimension is bounded (an empty frame may not
claim a 2^40-long axis either) and that the payload length matches the shape
exactly, computed in Python integers so that no product wraps; a malformed
message is rejected with a ``WireError`` naming the problem instead of being
misread, and nothing is allocated beyond what the payload itself justifies.
"""

from __future__ import annotations

import math
import struct

import numpy as np

MAGIC = b"PB1"

KIND_I64, KIND_U32, KIND_U16, KIND_U8, KIND_BITS, KIND_BYTES = range(6)
_WORD_KINDS = {KIND_I64: np.dtype("<i8"), KIND_U32: np.dtype("<u4"), KIND_U16: np.dtype("<u2"), KIND_U8: np.dtype("u1")}
MAX_NDIM = 16
#: largest single axis a frame may declare
MAX_DIM = 2**31 - 1
#: largest element count a frame may declare, counting only its non-zero axes (so an
#: empty frame cannot declare absurd ones either): 16 GiB once decoded to int64
MAX_ELEMENTS = 2**31
_FRAME_TYPES = (bytes, bytearray, memoryview)


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


def check_shape(shape: tuple[int, ...]) -> None:
    """Refuse a shape no honest party sends: too many axes, an axis too long, too many elements."""
    if len(shape) > MAX_NDIM:
        raise WireError(f"a tensor of rank {len(shape)} cannot be framed (at most {MAX_NDIM})")
    if any(d > MAX_DIM for d in shape):
        raise WireError(f"shape {tuple(shape)} has an axis longer than {MAX_DIM}")
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise WireError(f"shape {tuple(shape)} declares more than {MAX_ELEMENTS} elements")


def payload_size(kind: int, shape: tuple[int, ...]) -> int:
    """Bytes of payload a frame of this kind and shape carries (exact Python integers, no wrap)."""
    count = math.prod(int(d) for d in shape)
    if kind == KIND_BITS:
        return (count + 7) // 8
    if kind == KIND_BYTES:
        return count
    return count * _WORD_KINDS[kind].itemsize


def encode_frame(array: np.ndarray, bits: int = 64) -> bytes:
    """Pack an int64 array whose values matter modulo 2^bits."""
    array = np.ascontiguousarray(array)
    kind = kind_for_bits(bits)
    check_shape(array.shape)
    if kind == KIND_BITS:
        payload = np.packbits(array.astype(np.uint8, copy=False) & 1).tobytes()
    else:
        payload = array.astype(_WORD_KINDS[kind], copy=False).tobytes()
    header = MAGIC + struct.pack("<BB", kind, array.ndim) + struct.pack(f"<{array.ndim}Q", *array.shape)
    return header + payload


def encode_bytes(data: bytes) -> bytes:
    check_shape((len(data),))
    return MAGIC + struct.pack("<BBQ", KIND_BYTES, 1, len(data)) + data


def _parse(frame: bytes) -> tuple[int, tuple[int, ...], memoryview]:
    if not isinstance(frame, _FRAME_TYPES):
        raise WireError(f"message is a {type(frame).__name__}, not bytes; dropped")
    view = memoryview(frame)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
    if len(view) < 5 or bytes(view[:3]) != MAGIC:
        raise WireError("message does not start with the privacy-bridge frame magic; dropped")
    kind, ndim = struct.unpack_from("<BB", view, 3)
    if kind > KIND_BYTES or ndim > MAX_NDIM:
        raise WireError(f"message has unknown kind {kind} or rank {ndim}; dropped")
    if kind == KIND_BYTES and ndim != 1:
        raise WireError(f"a raw-bytes message has rank 1, this one declares rank {ndim}; dropped")
    head = 5 + 8 * ndim
    if len(view) < head:
        raise WireError("message is shorter than its header; dropped")
    shape = struct.unpack_from(f"<{ndim}Q", view, 5)
    check_shape(shape)
    expected = payload_size(kind, shape)
    if len(view) - head != expected:
        raise WireError(
            f"message payload has {len(view) - head} bytes, its header promises "
            f"{expected} for shape {shape}; dropped"
        )
    payload = view[head:]
    if kind == KIND_BITS and math.prod(shape) % 8 and payload[-1] & (0xFF >> (math.prod(shape) % 8)):
        raise WireError("a bit-packed message has non-zero padding bits; dropped")
    return kind, shape, payload


def decode_frame(frame: bytes) -> np.ndarray:
    """The int64 array in a tensor frame (narrow kinds are sign-extended later by the caller's ring)."""
    kind, shape, payload = _parse(frame)
    if kind == KIND_BYTES:
        raise WireError("expected a tensor message, received raw bytes")
    if kind == KIND_BITS:
        count = math.prod(shape)
        bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))[:count]
        return bits.astype(np.int64).reshape(shape)
    return np.frombuffer(payload, dtype=_WORD_KINDS[kind]).astype(np.int64).reshape(shape)


def decode_bytes(frame: bytes) -> bytes:
    kind, _, payload = _parse(frame)
    if kind != KIND_BYTES:
        raise WireError("expected raw bytes, received a tensor message")
    return bytes(payload)
