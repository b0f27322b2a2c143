"""An authenticated, encrypted channel between two parties, for transports without TLS.

torch-spdz's gloo has no TLS transport in the CPU builds of torch, so its frames are
sealed here, with ``cryptography``'s primitives (no hand-made ciphers):

Handshake (both sides run it at once, two messages each way)::

    1. hello  = MAGIC || X25519 ephemeral public key (32 bytes), fresh per connection
    2. T      = LABEL || name_a || name_b || eph_a || eph_b    (a, b in name order,
                                                               names length-prefixed)
       proof  = ECDSA-P256-SHA256(long-term key, "proof" || own name || T)  (r || s, 64 bytes)

Each side checks the peer's proof against the public key the cluster file pins for
the peer's name, so both prove they hold their pinned key, and the proof covers both
ephemeral keys and both names (no replay of an old handshake, no reflection, no
party answering for another).  The keys are HKDF-SHA256(X25519 secret, salt =
SHA-256(T)), one per direction.

Frames.  ``seal`` encrypts ``kind || payload`` with AES-256-GCM under the sender's
direction key; the nonce is a per-direction frame counter (never sent: both sides
count), and the associated data names the sender and the receiver.  So a frame that
is altered, replayed, dropped, reordered or reflected fails authentication at the
receiver, and the kind (data, goodbye, abort) is as protected as the payload.  Each
frame grows by ``OVERHEAD`` = 17 bytes (the kind byte and the 16-byte tag).
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bridge.security.keys import PartyCredentials

LABEL = b"privacy-bridge channel v1"
MAGIC = b"PBH1"
HELLO_BYTES = len(MAGIC) + 32
PROOF_BYTES = 64
TAG_BYTES = 16
#: bytes a sealed frame adds to its payload: the kind byte and the GCM tag
OVERHEAD = 1 + TAG_BYTES
_MAX_COUNTER = (1 << 64) - 1


class ChannelError(Exception):
    """A handshake or a frame that does not authenticate."""


def _name(name: str) -> bytes:
    raw = name.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


class Handshake:
    """One party's side of the handshake with one peer."""

    def __init__(self, credentials: PartyCredentials, peer: str) -> None:
        if peer not in credentials.pinned_pem:
            raise ChannelError(f"party {peer!r} has no pinned certificate")
        self.credentials = credentials
        self.me = credentials.party
        self.peer = peer
        self._ephemeral = X25519PrivateKey.generate()
        self._hello = MAGIC + self._ephemeral.public_key().public_bytes_raw()
        self._transcript: bytes | None = None
        self._peer_public: X25519PublicKey | None = None

    def hello(self) -> bytes:
        return self._hello

    def proof(self, peer_hello: bytes) -> bytes:
        """Take the peer's hello; our signature over the transcript of both."""
        if len(peer_hello) != HELLO_BYTES or not peer_hello.startswith(MAGIC):
            raise ChannelError(f"party {self.peer!r} sent a malformed handshake hello")
        self._peer_public = X25519PublicKey.from_public_bytes(peer_hello[len(MAGIC):])
        ends = sorted([(self.me, self._hello[len(MAGIC):]), (self.peer, peer_hello[len(MAGIC):])])
        self._transcript = LABEL + b"".join(_name(n) for n, _ in ends) + b"".join(e for _, e in ends)
        der = self.credentials.sign(b"proof" + _name(self.me) + self._transcript)
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def finish(self, peer_proof: bytes) -> "SecureChannel":
        """Check the peer's proof against its pinned key; the channel keys."""
        if self._transcript is None or self._peer_public is None:
            raise ChannelError("proof() must come before finish()")
        if len(peer_proof) != PROOF_BYTES:
            raise ChannelError(f"party {self.peer!r} sent a malformed handshake proof")
        der = encode_dss_signature(int.from_bytes(peer_proof[:32], "big"), int.from_bytes(peer_proof[32:], "big"))
        if not self.credentials.verify(self.peer, der, b"proof" + _name(self.peer) + self._transcript):
            raise ChannelError(
                f"party {self.peer!r} failed the handshake: it did not prove that it holds the key the "
                f"cluster file pins for {self.peer!r}"
            )
        try:
            secret = self._ephemeral.exchange(self._peer_public)
        except ValueError as exc:  # a low-order point gives an all-zero secret
            raise ChannelError(f"party {self.peer!r} sent an invalid ephemeral key") from exc
        keys = HKDF(algorithm=hashes.SHA256(), length=64, salt=hashlib.sha256(self._transcript).digest(),
                    info=LABEL + b" keys").derive(secret)
        first, second = sorted([self.me, self.peer])
        key_from = {first: keys[:32], second: keys[32:]}
        return SecureChannel(self.me, self.peer, send_key=key_from[self.me], recv_key=key_from[self.peer])


class SecureChannel:
    """Sealing and opening of the frames one way each; not thread-safe per direction
    (a transport seals under its per-peer send lock and opens in its one receiving thread)."""

    def __init__(self, me: str, peer: str, *, send_key: bytes, recv_key: bytes) -> None:
        self.me, self.peer = me, peer
        self._send, self._recv = AESGCM(send_key), AESGCM(recv_key)
        self._send_aad = LABEL + _name(me) + _name(peer)
        self._recv_aad = LABEL + _name(peer) + _name(me)
        self._sent = 0
        self._received = 0

    def seal(self, kind: int, payload: bytes) -> bytes:
        if not 0 <= kind < 256:
            raise ValueError(f"frame kind {kind} does not fit a byte")
        if self._sent >= _MAX_COUNTER:
            raise ChannelError(f"the channel to {self.peer!r} has used up its nonces; reconnect")
        nonce = self._sent.to_bytes(12, "big")
        self._sent += 1
        return self._send.encrypt(nonce, bytes((kind,)) + payload, self._send_aad)

    def open(self, frame: bytes) -> tuple[int, bytes]:
        """(kind, payload) of the next frame from the peer; ``ChannelError`` unless it is
        exactly the next frame the peer sealed for us, unaltered."""
        if len(frame) < OVERHEAD:
            raise ChannelError(f"party {self.peer!r} sent a frame too short to be sealed ({len(frame)} bytes)")
        nonce = self._received.to_bytes(12, "big")
        try:
            plain = self._recv.decrypt(nonce, frame, self._recv_aad)
        except InvalidTag:
            raise ChannelError(
                f"a frame from party {self.peer!r} failed authentication (altered, replayed, reordered or "
                "not from that party)"
            ) from None
        self._received += 1
        return plain[0], plain[1:]
