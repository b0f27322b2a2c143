"""Client <-> party connections of a service: TLS 1.3 with mutual authentication, and
length-prefixed messages inside it.  Nothing is pickled.

Identities reuse the cluster's key format (``bridge.security.keys``: an ECDSA P-256 key
and a self-signed certificate naming its holder, made by the same ``keygen``).  A
party serves only the certificates the deployment admits (``clients/<name>.crt``) and
a client trusts only the certificates the cluster file pins for the parties, so an
unknown client is refused at the handshake and a client cannot be fooled by a
stand-in server.

A message is ``u32 length || u32 header length || header (JSON, UTF-8) || frames``,
each frame ``u32 length || bridge.mpc.wire frame`` (raw int64 tensors or bytes).
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bridge.cluster import ClusterError
from bridge.mpc import wire
from bridge.security.keys import PartyCredentials, _private_key, _read_certificate, load_credentials
from bridge.security.rendezvous import _context
from bridge.serving.config import NAME_PATTERN, Service

MAX_HEADER_BYTES = 1 << 16
HANDSHAKE_TIMEOUT_S = 10.0


class ServingError(RuntimeError):
    """The service could not answer: a party is down, stalled, or refused the request."""


class ServiceUnavailableError(ServingError):
    """A party of the service is down, stalled, or lost a peer while serving."""


class OperatorOnlyError(ServingError, PermissionError):
    """An admitted client asked for what only the deployment's operators may read (the counters)."""


class ConnectionLost(ServingError):
    """The connection to a party closed or sent something that is not a message."""


@dataclass(frozen=True)
class Message:
    header: dict[str, Any]
    frames: list[bytes]

    def arrays(self) -> list[np.ndarray]:
        return [wire.decode_frame(f) for f in self.frames]


def encode_message(header: dict[str, Any], frames: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    head = json.dumps(header, separators=(",", ":")).encode()
    parts = [struct.pack(">I", len(head)), head]
    for frame in frames:
        parts += [struct.pack(">I", len(frame)), frame]
    body = b"".join(parts)
    return struct.pack(">I", len(body)) + body


def _read_exact(recv, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionLost("the connection closed")
        buf += chunk
    return bytes(buf)


def read_message(sock_or_recv, max_bytes: int) -> Message:
    """The next message; ``ConnectionLost`` if the peer left or sent something malformed."""
    recv = sock_or_recv.recv if isinstance(sock_or_recv, socket.socket) else sock_or_recv
    (size,) = struct.unpack(">I", _read_exact(recv, 4))
    if size > max_bytes:
        raise ConnectionLost(f"a message of {size} bytes (at most {max_bytes})")
    body = memoryview(_read_exact(recv, size))
    try:
        (head_len,) = struct.unpack_from(">I", body, 0)
        if head_len > MAX_HEADER_BYTES or 4 + head_len > size:
            raise ValueError(f"a header of {head_len} bytes")
        header = json.loads(bytes(body[4:4 + head_len]))
        if not isinstance(header, dict):
            raise ValueError("the header is not an object")
        frames, at = [], 4 + head_len
        while at < size:
            (n,) = struct.unpack_from(">I", body, at)
            if at + 4 + n > size:
                raise ValueError("a frame runs past the message")
            frames.append(bytes(body[at + 4:at + 4 + n]))
            at += 4 + n
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ConnectionLost(f"a malformed message ({exc})") from exc
    return Message(header, frames)


#: how long a read holds the connection's lock when data is announced but not all there
POLL_S = 0.05
#: how long one send may wait for the peer to take the bytes in
SEND_TIMEOUT_S = 30.0


class Connection:
    """One TLS stream, read by one thread and written by many.

    OpenSSL does not allow a read and a write on one TLS connection at the same time
    from two threads, so both happen under one lock; the reader waits for data with
    ``select`` outside the lock, so that a send never waits for a read to time out.
    """

    def __init__(self, sock: ssl.SSLSocket, peer: str, max_bytes: int) -> None:
        self.sock, self.peer, self.max_bytes = sock, peer, max_bytes
        self._lock = threading.Lock()
        self.closed = False
        sock.settimeout(POLL_S)

    def send(self, header: dict[str, Any], frames: list[bytes] = ()) -> None:  # type: ignore[assignment]
        data = encode_message(header, list(frames))
        with self._lock:
            try:
                self.sock.settimeout(SEND_TIMEOUT_S)
                self.sock.sendall(data)
                self.sock.settimeout(POLL_S)
            except (OSError, ValueError) as exc:
                self.closed = True
                raise ConnectionLost(f"could not send to {self.peer!r} ({exc})") from exc

    def _recv(self, n: int) -> bytes:
        while True:
            if self.closed:
                return b""
            if not self.sock.pending():
                try:
                    readable, _, _ = select.select([self.sock], [], [], POLL_S)
                except (OSError, ValueError):
                    return b""
                if not readable:
                    continue
            with self._lock:
                try:
                    return self.sock.recv(n)
                except (TimeoutError, ssl.SSLWantReadError):
                    continue

    def read(self) -> Message:
        try:
            return read_message(self._recv, self.max_bytes)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.closed = True
            raise ConnectionLost(f"the connection to {self.peer!r} closed ({exc})") from exc
        except ConnectionLost:
            self.closed = True
            raise

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# -- identities ---------------------------------------------------------------------------------

def admitted_certificates(service: Service) -> dict[str, bytes]:
    """name -> certificate PEM of every identity the deployment admits (``clients/<name>.crt``)."""
    import re

    out: dict[str, bytes] = {}
    if service.clients_dir.is_dir():
        for path in sorted(service.clients_dir.glob("*.crt")):
            if re.fullmatch(NAME_PATTERN, path.stem) and path.stem not in service.cluster.names:
                pem = _read_certificate(path.stem, str(path))
                if pem is not None:
                    out[path.stem] = pem
    return out


def party_credentials(service: Service, party: str) -> PartyCredentials:
    """A party's own key, the cluster's pins, and the admitted clients' certificates."""
    own = load_credentials(service.cluster, party)
    if own is None:  # load_service refuses insecure clusters; keep the guard where it matters
        raise ClusterError("a service needs keys; run privacy-bridge keygen")
    return PartyCredentials(party=party, key_pem=own.key_pem, certificate_pem=own.certificate_pem,
                            pinned_pem={**admitted_certificates(service), **own.pinned_pem})


def client_credentials(service: Service, identity: str | Path) -> PartyCredentials:
    """A client's key (``identity``: a name in the clients directory, or the path of its
    ``.key`` with the ``.crt`` beside it) and the parties' pinned certificates."""
    text = str(identity)
    key_path = Path(text) if text.endswith(".key") or "/" in text else service.clients_dir / f"{text}.key"
    cert_path = key_path.with_suffix(".crt")
    name = key_path.stem
    if not key_path.is_file() or not cert_path.is_file():
        raise ClusterError(
            f"identity {text!r}: expected its private key at {key_path} and its certificate at {cert_path}. "
            f"Make them with `privacy-bridge admit --cluster {service.path} --name {name}` (the deployment "
            "then admits it), and keep the .key on the client's host only."
        )
    key_pem = key_path.read_bytes()
    cert_pem = _read_certificate(name, str(cert_path))
    assert cert_pem is not None
    try:
        _private_key(key_pem)
    except ValueError as exc:
        raise ClusterError(f"{key_path} is not an EC P-256 private key made by privacy-bridge admit ({exc})") \
            from exc
    pinned: dict[str, bytes] = {name: cert_pem}
    for party in service.serving.listen:
        source = service.cluster.certificate_source(party)
        pem = _read_certificate(party, source) if source else None
        if pem is None:
            raise ClusterError(f"the cluster file pins no readable certificate for party {party!r} ({source}); "
                               "a client needs every serving party's certificate")
        pinned[party] = pem
    return PartyCredentials(party=name, key_pem=key_pem, certificate_pem=cert_pem, pinned_pem=pinned)


def server_context(credentials: PartyCredentials) -> ssl.SSLContext:
    return _context(credentials, server=True, trusted=[p for p in credentials.pinned_pem if p != credentials.party])


def open_connection(service: Service, credentials: PartyCredentials, party: str, timeout_s: float) -> Connection:
    """A TLS connection to ``party``'s service endpoint, checked against its pinned
    certificate; a refusal of ours shows at the first reply (``hello``)."""
    host, port = service.listen_address(party)
    context = _context(credentials, server=False, trusted=[party])
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        raise ServiceUnavailableError(f"party {party!r} does not answer at {host}:{port} ({exc}): is its "
                           "`privacy-bridge serve` running?") from exc
    try:
        sock = context.wrap_socket(raw)
        der = sock.getpeercert(binary_form=True)
        if der is None or credentials.party_of_certificate(der) != party:
            raise ssl.SSLError(f"the server at {host}:{port} does not hold the certificate pinned for {party!r}")
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        if isinstance(exc, TimeoutError):  # the port is open, nobody answers: a stalled process
            raise ServiceUnavailableError(
                f"party {party!r} at {host}:{port} accepted the connection but did not finish the TLS handshake "
                f"within {timeout_s:g} s: it is stalled or overloaded. Retry later.") from exc
        raise ServingError(f"the TLS handshake with {party!r} at {host}:{port} failed: {exc}") from exc
    sock.settimeout(None)
    return Connection(sock, party, service.cluster.max_message_bytes)
