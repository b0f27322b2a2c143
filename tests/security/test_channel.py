"""The sealed channel of torch-spdz's gloo frames, as a unit: handshake, tampering, replay, reordering."""

from __future__ import annotations

import pytest

from bridge.cluster import ClusterConfig, PartyEntry
from bridge.ir import Role
from bridge.security.channel import OVERHEAD, ChannelError, Handshake, SecureChannel
from bridge.security.keys import load_credentials
from tests.distributed.conftest import session_keys


def _cluster(names=("alice", "bob", "carol")) -> ClusterConfig:
    return ClusterConfig(
        parties=tuple(PartyEntry(name=n, roles=frozenset({Role.COMPUTE}), address=f"127.0.0.1:{7000 + i}")
                      for i, n in enumerate(names)),
        keys=str(session_keys(list(names))),
    )


def _pair(config: ClusterConfig, a: str = "alice", b: str = "bob") -> tuple[SecureChannel, SecureChannel]:
    ha, hb = Handshake(load_credentials(config, a), b), Handshake(load_credentials(config, b), a)
    pa, pb = ha.proof(hb.hello()), hb.proof(ha.hello())
    return ha.finish(pb), hb.finish(pa)


def test_frames_round_trip_in_order_with_their_kind_and_a_fixed_overhead():
    alice, bob = _pair(_cluster())
    frames = [(0, b"share" * 1000), (2, b"abort: why"), (0, b""), (1, b"")]
    sealed = [alice.seal(k, p) for k, p in frames]
    assert [len(s) - len(p) for s, (_, p) in zip(sealed, frames)] == [OVERHEAD] * 4 == [17] * 4
    assert b"share" not in sealed[0] and b"abort" not in sealed[1]
    assert [bob.open(s) for s in sealed] == frames
    back = bob.seal(0, b"reply")
    assert alice.open(back) == (0, b"reply")


def test_a_tampered_frame_is_rejected_and_so_is_every_bit_of_it():
    alice, bob = _pair(_cluster())
    sealed = alice.seal(0, bytes(range(40)))
    for position in (0, 1, 20, len(sealed) - 1):  # the kind byte, the payload, the tag
        bad = bytearray(sealed)
        bad[position] ^= 0x01
        with pytest.raises(ChannelError, match="from party 'alice' failed authentication"):
            bob.open(bytes(bad))
    assert bob.open(sealed) == (0, bytes(range(40)))  # the failed attempts consumed nothing


def test_a_replayed_or_reordered_or_reflected_frame_is_rejected():
    alice, bob = _pair(_cluster())
    first, second = alice.seal(0, b"first"), alice.seal(0, b"second")
    with pytest.raises(ChannelError, match="replayed, reordered"):
        bob.open(second)  # reordered: the second frame before the first
    assert bob.open(first) == (0, b"first")
    with pytest.raises(ChannelError):
        bob.open(first)  # replayed
    assert bob.open(second) == (0, b"second")
    with pytest.raises(ChannelError):
        alice.open(alice.seal(0, b"to myself"))  # reflected back to its sender
    with pytest.raises(ChannelError, match="too short"):
        bob.open(b"\x00" * (OVERHEAD - 1))


def test_a_frame_of_another_pair_or_another_session_is_rejected():
    config = _cluster()
    alice, bob = _pair(config)
    alice2, bob2 = _pair(config)  # the same two parties, a fresh handshake
    _, carol_from_alice = _pair(config, "alice", "carol")
    sealed = alice.seal(0, b"for bob, this session")
    for other in (bob2, carol_from_alice):
        with pytest.raises(ChannelError):
            other.open(sealed)
    assert bob.open(sealed) == (0, b"for bob, this session")


def test_the_handshake_refuses_a_party_without_the_pinned_key(tmp_path):
    from bridge.security.keys import keygen

    config = _cluster()
    keygen(["bob"], tmp_path)  # a different key for the name "bob"
    forged = config.model_copy(update={"parties": tuple(
        p.model_copy(update={"key": str(tmp_path / "bob.key"), "certificate": str(tmp_path / "bob.crt")})
        if p.name == "bob" else p for p in config.parties)})
    alice = Handshake(load_credentials(config, "alice"), "bob")
    mallory = Handshake(load_credentials(forged, "bob"), "alice")  # holds its own key, claims bob's name
    alice_proof = alice.proof(mallory.hello())
    mallory_proof = mallory.proof(alice.hello())
    with pytest.raises(ChannelError, match="party 'bob' failed the handshake: it did not prove that it holds the key"):
        alice.finish(mallory_proof)
    # a proof replayed from another handshake of the real bob does not pass either
    real_alice, real_bob = Handshake(load_credentials(config, "alice"), "bob"), Handshake(load_credentials(config, "bob"), "alice")
    real_alice.proof(real_bob.hello())
    old_proof = real_bob.proof(real_alice.hello())
    fresh = Handshake(load_credentials(config, "alice"), "bob")
    fresh.proof(real_bob.hello())  # even with the same hello: alice's fresh ephemeral changes the transcript
    with pytest.raises(ChannelError, match="failed the handshake"):
        fresh.finish(old_proof)
    assert alice_proof  # alice's own proof was made; only bob's failed
    with pytest.raises(ChannelError, match="malformed handshake hello"):
        Handshake(load_credentials(config, "alice"), "bob").proof(b"PBH1" + b"\x00" * 5)
