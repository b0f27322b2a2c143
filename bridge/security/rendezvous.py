"""A key-value store for the rendezvous, served over mutually authenticated TLS 1.3.

torch's ``TCPStore`` has no authentication: anyone who reaches its port reads and
writes it.  torch-spdz's parties instead meet at this store: rank 0 serves it at the
rendezvous address (bound to that address only), and a client is served only after
a TLS 1.3 handshake in which it presents one of the certificates the cluster file
pins (and proves it holds the key), while it accepts only rank 0's pinned
certificate.  An outsider can neither read nor write a key.  The backend wraps the
client in a ``torch.distributed.Store`` for gloo.

Wire format (inside TLS), no pickling: a request is ``op`` (1 byte), the argument
count (2 bytes) and each argument as a 4-byte length and its bytes; a reply is a
status byte (0 ok, 1 timeout, 2 error) and arguments the same way.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import tempfile
import threading
import time
from pathlib import Path

from bridge.cluster import join_address
from bridge.security.keys import PartyCredentials

SET, GET, ADD, CHECK, WAIT, DELETE, NUM_KEYS, COMPARE_SET = range(8)
OK, TIMEOUT, ERROR = range(3)
#: the most a request or reply may carry (gloo's values are addresses: a few hundred bytes)
MAX_ARG_BYTES = 1 << 20
MAX_ARGS = 1024


class RendezvousError(Exception):
    """The store refused us, is not served by the pinned party, or was lost."""


class RendezvousUnreachable(RendezvousError):
    """Nobody served the store's address within the timeout."""


def _context(credentials: PartyCredentials, server: bool, trusted: list[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = False  # identity is the pinned certificate itself, checked below
    context.load_verify_locations(cadata="".join(credentials.pinned_pem[p].decode() for p in trusted))
    # ssl loads a key pair from files only: a private temporary directory, removed at once
    with tempfile.TemporaryDirectory(prefix="privacy-bridge-tls-") as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert.write_bytes(credentials.certificate_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(credentials.key_pem)
        context.load_cert_chain(cert, key)
    return context


def _send(sock: ssl.SSLSocket, head: int, args: tuple[bytes, ...]) -> None:
    parts = [struct.pack(">BH", head, len(args))]
    for a in args:
        parts += [struct.pack(">I", len(a)), a]
    sock.sendall(b"".join(parts))


def _read_exact(sock: ssl.SSLSocket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise ConnectionError("the connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv(sock: ssl.SSLSocket) -> tuple[int, list[bytes]]:
    head, count = struct.unpack(">BH", _read_exact(sock, 3))
    if count > MAX_ARGS:
        raise ConnectionError(f"{count} arguments (at most {MAX_ARGS})")
    args = []
    for _ in range(count):
        (length,) = struct.unpack(">I", _read_exact(sock, 4))
        if length > MAX_ARG_BYTES:
            raise ConnectionError(f"an argument of {length} bytes (at most {MAX_ARG_BYTES})")
        args.append(_read_exact(sock, length))
    return head, args


class RendezvousServer:
    """Rank 0's store: served to the cluster's parties only, at ``host:port`` only."""

    def __init__(self, host: str, port: int, credentials: PartyCredentials, peers: list[str]) -> None:
        self.credentials = credentials
        self._context = _context(credentials, server=True, trusted=peers)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, reuse_port=False)
        self._data: dict[bytes, bytes] = {}
        self._changed = threading.Condition()
        self._closed = False
        self._connections: set[socket.socket] = set()
        self.refused: list[str] = []  # why connections were refused (for the log and the tests)
        self._thread = threading.Thread(target=self._accept, name=f"rendezvous-{credentials.party}", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self._listener.getsockname()[:2]

    def close(self) -> None:
        self._closed = True
        with self._changed:
            self._changed.notify_all()
        for sock in [self._listener, *list(self._connections)]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, where = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, where), daemon=True).start()

    def _serve(self, conn: socket.socket, where: tuple) -> None:
        conn.settimeout(10.0)  # the handshake; then requests may wait as long as they like
        try:
            tls = self._context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.refused.append(f"{where[0]}:{where[1]}: {exc}")
            conn.close()
            return
        self._connections.add(tls)
        try:
            der = tls.getpeercert(binary_form=True)
            if der is None or self.credentials.party_of_certificate(der) is None:
                self.refused.append(f"{where[0]}:{where[1]}: a certificate the cluster does not pin")
                return
            tls.settimeout(None)
            while not self._closed:
                try:
                    op, args = _recv(tls)
                except (ConnectionError, OSError, struct.error):
                    return
                try:
                    status, reply = self._handle(op, args)
                except Exception as exc:  # noqa: BLE001 - a bad request gets an error reply
                    status, reply = ERROR, (str(exc).encode()[:1000],)
                try:
                    _send(tls, status, reply)
                except OSError:
                    return
        finally:
            self._connections.discard(tls)
            tls.close()

    def _handle(self, op: int, args: list[bytes]) -> tuple[int, tuple[bytes, ...]]:
        with self._changed:
            if op == SET:
                self._data[args[0]] = args[1]
                self._changed.notify_all()
                return OK, ()
            if op == GET:
                timeout_s = float(args[1])
                if not self._changed.wait_for(lambda: args[0] in self._data or self._closed, timeout_s):
                    return TIMEOUT, ()
                return (OK, (self._data[args[0]],)) if args[0] in self._data else (ERROR, (b"store closed",))
            if op == ADD:
                value = int(self._data.get(args[0], b"0")) + int(args[1])
                self._data[args[0]] = str(value).encode()
                self._changed.notify_all()
                return OK, (str(value).encode(),)
            if op == CHECK:
                return OK, (b"1" if all(k in self._data for k in args) else b"0",)
            if op == WAIT:
                timeout_s, keys = float(args[0]), args[1:]
                done = self._changed.wait_for(lambda: all(k in self._data for k in keys) or self._closed, timeout_s)
                return (OK, ()) if done and not self._closed else (TIMEOUT, ())
            if op == DELETE:
                existed = self._data.pop(args[0], None) is not None
                return OK, (b"1" if existed else b"0",)
            if op == NUM_KEYS:
                return OK, (str(len(self._data)).encode(),)
            if op == COMPARE_SET:
                key, expected, desired = args
                current = self._data.get(key)
                if (current is None and expected == b"") or current == expected:
                    self._data[key] = desired
                    self._changed.notify_all()
                    return OK, (desired,)
                return OK, (current if current is not None else expected,)
        return ERROR, (f"unknown operation {op}".encode(),)


class RendezvousClient:
    """One party's connection to the store; requests are serialized over one TLS stream."""

    def __init__(self, host: str, port: int, credentials: PartyCredentials, server_party: str,
                 timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.where = join_address(host, port)
        self.server_party = server_party
        context = _context(credentials, server=False, trusted=[server_party])
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while True:
            try:
                raw = socket.create_connection((host, port), timeout=max(min(deadline - time.monotonic(), 5.0), 0.1))
                break
            except OSError as exc:
                last = exc
                if time.monotonic() > deadline:
                    raise RendezvousUnreachable(str(exc)) from exc
                time.sleep(0.05)
        del last
        try:
            self._sock = context.wrap_socket(raw)
            der = self._sock.getpeercert(binary_form=True)
            if der is None or credentials.party_of_certificate(der) != server_party:
                raise ssl.SSLError("the server's certificate is not the pinned one")
            # TLS 1.3 sends the server's verdict on our certificate after the handshake:
            # a round trip makes a refusal show here, not at the first real request
            self._sock.settimeout(timeout_s)
            self._call(CHECK, (b"\x00ping",))
        except (ssl.SSLError, OSError, ConnectionError) as exc:
            raw.close()
            raise RendezvousError(
                f"the TLS handshake failed: the store is not served by {server_party!r}'s pinned key, or it "
                f"refused ours ({exc})"
            ) from exc
        self._sock.settimeout(None)
        self._lock = threading.Lock()

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    def _call(self, op: int, args: tuple[bytes, ...]) -> list[bytes]:
        _send(self._sock, op, args)
        status, reply = _recv(self._sock)
        if status == TIMEOUT:
            raise TimeoutError(f"the rendezvous at {self.where} timed out")
        if status != OK:
            raise RendezvousError(b"".join(reply).decode("utf-8", "replace"))
        return reply

    def call(self, op: int, *args: bytes) -> list[bytes]:
        with self._lock:
            try:
                return self._call(op, args)
            except (OSError, ConnectionError, struct.error) as exc:
                raise RendezvousError(f"lost the rendezvous at {self.where} ({exc})") from exc
