"""The wire decoder refuses every malformed frame with a WireError, and a Messenger turns
that into a PeerError naming the sender; nothing a frame claims is allocated before checked.

Finding 6 of issue 12: shape products wrapped in int64, an empty (2^32, 2^32) frame passed
the length check, frames declaring (256, 0, 8, 2^40) were accepted, and the resulting
ValueError escaped ``Messenger.recv`` unwrapped.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.mpc import wire
from bridge.mpc.comm import CommStats, InMemoryNetwork, Messenger, PeerError
from tests.security.fuzzing import run_guarded


def header(kind: int, shape: tuple[int, ...]) -> bytes:
    return wire.MAGIC + struct.pack("<BB", kind, len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)


def pair() -> tuple:
    network = InMemoryNetwork(["server0", "server1"], timeout_s=2.0)
    return network.transport("server0"), Messenger(network.transport("server1"), CommStats())


# -- each finding -------------------------------------------------------------------------------

def test_an_empty_frame_may_not_declare_huge_axes():
    # np.prod((2^32, 2^32)) wraps to 0 in int64, so this passed the length check.
    with pytest.raises(wire.WireError, match=r"shape \(4294967296, 4294967296\) has an axis longer than 2147483647"):
        wire.decode_frame(header(wire.KIND_I64, (2**32, 2**32)))


def test_a_zero_axis_does_not_excuse_a_2_to_the_40_axis():
    with pytest.raises(wire.WireError, match=r"\(256, 0, 8, 1099511627776\) has an axis longer than"):
        wire.decode_frame(header(wire.KIND_I64, (256, 0, 8, 2**40)))


def test_an_empty_frame_may_not_declare_too_many_elements_either():
    shape = (2**20, 2**20, 0, 2**20)  # every axis allowed, 2^60 elements in the non-zero ones
    with pytest.raises(wire.WireError, match=r"declares more than 2147483648 elements"):
        wire.decode_frame(header(wire.KIND_BITS, shape))


def test_a_shape_product_that_wraps_int64_is_refused_not_reshaped():
    # (2^62 + 1) * 4 wraps to 4 in int64: 32 payload bytes "matched", then reshape raised ValueError.
    frame = header(wire.KIND_I64, (2**62 + 1, 4)) + bytes(32)
    with pytest.raises(wire.WireError, match=r"has an axis longer than"):
        wire.decode_frame(frame)
    assert wire.payload_size(wire.KIND_I64, (2**62 + 1, 4)) == (2**62 + 1) * 32  # exact, no wrap


def test_a_bad_frame_reaches_the_caller_as_a_peer_error_naming_the_sender():
    sender, receiver = pair()
    sender.send("server1", header(wire.KIND_I64, (2**62 + 1, 4)) + bytes(32))
    with pytest.raises(PeerError, match=r"party 'server1' rejected a message from 'server0': .*axis longer"):
        receiver.recv("server0")
    sender.send("server1", header(wire.KIND_BYTES, (2**63,)))
    with pytest.raises(PeerError, match=r"party 'server1' rejected a message from 'server0'"):
        receiver.recv_bytes("server0")


def test_a_message_that_is_not_bytes_is_a_peer_error():
    sender, receiver = pair()
    sender.send("server1", "PB1 not bytes")  # type: ignore[arg-type]
    with pytest.raises(PeerError, match=r"from 'server0': message is a str, not bytes"):
        receiver.recv("server0")


def test_raw_bytes_frames_have_rank_one_and_bit_frames_zero_padding():
    with pytest.raises(wire.WireError, match=r"raw-bytes message has rank 1, this one declares rank 2"):
        wire.decode_bytes(header(wire.KIND_BYTES, (2, 2)) + bytes(4))
    good = wire.encode_frame(np.array([1, 0, 1]), bits=1)
    assert wire.decode_frame(good).tolist() == [1, 0, 1]
    with pytest.raises(wire.WireError, match=r"non-zero padding bits"):
        wire.decode_frame(good[:-1] + bytes([good[-1] | 1]))


def test_valid_frames_still_round_trip_at_every_width():
    rng = np.random.default_rng(0)
    for bits in (1, 8, 16, 32, 64):
        values = rng.integers(0, 2 if bits == 1 else 2**min(bits, 63), size=(3, 0, 2) if bits == 8 else (4, 5))
        decoded = wire.decode_frame(wire.encode_frame(values, bits))
        assert decoded.shape == values.shape and np.array_equal(decoded, values)
    assert wire.decode_bytes(wire.encode_bytes(b"seed" * 8)) == b"seed" * 8
    assert wire.decode_frame(header(wire.KIND_I64, (2**31 - 1, 0))).shape == (2**31 - 1, 0)


def test_the_sender_refuses_what_the_receiver_would():
    with pytest.raises(wire.WireError, match=r"rank 17 cannot be framed"):
        wire.encode_frame(np.zeros((1,) * 17, dtype=np.int64))


# -- fuzzing ------------------------------------------------------------------------------------

@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    kind=st.integers(0, 255),
    shape=st.lists(st.one_of(st.integers(0, 9), st.sampled_from([2**31 - 1, 2**31, 2**32, 2**40, 2**63, 2**64 - 1])),
                   max_size=18),
    payload=st.binary(max_size=80),
    declared_ndim=st.one_of(st.none(), st.integers(0, 255)),
)
def test_structured_frames_decode_or_raise_wire_error(kind, shape, payload, declared_ndim):
    ndim = len(shape) if declared_ndim is None else declared_ndim
    frame = wire.MAGIC + bytes([kind, ndim]) + b"".join(struct.pack("<Q", d) for d in shape) + payload
    for decode in (wire.decode_frame, wire.decode_bytes):
        try:
            value = decode(frame)
        except wire.WireError as exc:
            assert str(exc)
            continue
        size = value.nbytes if isinstance(value, np.ndarray) else len(value)
        assert size <= 64 * len(frame)


def _check(summary: dict, count: int) -> None:
    assert summary["count"] == count
    assert summary["bad"] == [], summary["bad"]
    assert summary["errors"] == {}, summary
    decoded = summary["decoded"]
    # not vacuous: the mutator reaches both verdicts of both decoders
    assert all(decoded.get(f"{d} {v}", 0) > 0 for d in ("decode_frame", "decode_bytes") for v in ("accepted", "refused"))


def test_random_and_mutated_frames_short_deterministic_slice():
    _check(run_guarded("wire", count=300, seed=0), 300)


@pytest.mark.slow
def test_random_and_mutated_frames_20000():
    _check(run_guarded("wire", count=20_000, seed=12), 20_000)
