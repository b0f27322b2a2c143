"""tf-pond between processes: byte frames over gRPC, one server per party.

Each party serves ``privacy_bridge.Party`` at its cluster address with two unary
methods registered through grpcio's generic handlers, with no serializer at all:
requests and responses are the raw bytes (no protobuf code generation, nothing
pickled).

* ``Deliver``: one message.  The sender's name and the message kind travel as call
  metadata (``pb-from``, ``pb-kind``); the handler puts the bytes into the inbox of
  that peer and answers empty.  A party sends with a blocking call, one at a time, so
  messages arrive in order per pair; a call to a dead party fails within a probe
  interval and names it (see Liveness).  A sender the cluster does not know, or an unknown
  kind, is refused with a gRPC error to the sender; a known peer that sends an
  unknown kind is dropped, so the receiver stops with an error too.
* ``Hello``: answers with the party's name.  At startup each party calls it on every
  peer until each has answered or called it (waiting at most ``timeout_s``), which
  names a party that never shows up and catches a cluster file whose address leads
  to the wrong party.

Shutdown.  ``close`` stops the server (in-flight calls get ``STOP_GRACE_S``), waits until
it has stopped, closes the channels and joins the handler threads, so that no gRPC thread
is left running when the interpreter finalizes.  A transport still open when the program
ends is closed at thread shutdown (``threading._register_atexit``), before
``concurrent.futures`` shuts every executor down: closed later (a plain ``atexit``
hook), the server could no longer run a handler for a peer's goodbye (its executor
refuses new work), its serving thread died with ``RuntimeError: cannot schedule new
futures after shutdown``, the stop never completed, and the interpreter finalized with
the gRPC server still live.

Liveness.  Every party sends each peer a heartbeat (a ``Deliver`` of kind
``HEARTBEAT``) every ``heartbeat_s`` (``PeerTransport``).  A peer declared dead is one
whose port, which served it at startup, refuses a TCP connection: its process is gone.
A paused or overloaded peer is not dead (the kernel still accepts connections for a
stopped process): sends wait for it (``wait_for_ready``), and only ``timeout_s`` ends
the wait.

Messages above ``max_message_bytes`` are refused by gRPC itself at the receiver.

Security.  Every channel is TLS 1.3 with mutual authentication, through grpcio's
credentials, on the key pairs the cluster file pins (``bridge/security/keys.py``):
a party's server presents its certificate and requires a client certificate issued
by one of the pinned (self-signed) peer certificates; a party's channel to a peer
trusts that peer's pinned certificate only (its DNS name through
``grpc.ssl_target_name_override``).  Metadata names are not identities: every call
is checked against the TLS peer (``context.auth_context()``): its certificate must be
the one pinned for the party named in ``pb-from``, or the call is refused
(PERMISSION_DENIED) before it touches an inbox; a client without a pinned key fails
the TLS handshake itself.  So no outsider can read a frame, deliver one, abort a
party or say goodbye in its name; TLS's record layer rejects tampered, replayed and
reordered records.  With ``insecure = true`` (warned about at start) the channels
are plain HTTP/2.
"""

from __future__ import annotations

import threading
import time
import weakref
from concurrent import futures

import grpc

from bridge.cluster import ClusterConfig
from bridge.mpc.comm import PeerError
from bridge.mpc.distributed import DATA, HEARTBEAT, KINDS, PeerTransport, port_refuses
from bridge.security.keys import PartyCredentials, load_credentials, san_name

SERVICE = "privacy_bridge.Party"
DELIVER = f"/{SERVICE}/Deliver"
HELLO = f"/{SERVICE}/Hello"
FROM_KEY, KIND_KEY = "pb-from", "pb-kind"
#: the longest a channel waits between connection attempts (a paused peer is reached
#: again this soon after it resumes), and how long a liveness probe waits for a TCP answer
RECONNECT_BACKOFF_MS = 300
RECONNECT_S = 1.0
#: in-flight calls a stopping server lets finish, and the longest ``close`` waits for the stop
STOP_GRACE_S = 0.5
STOP_WAIT_S = 10.0


class GrpcTransport(PeerTransport):
    """One party's gRPC server (its inboxes) and a channel to every peer."""

    def __init__(self, cluster: ClusterConfig, party: str) -> None:
        super().__init__(party, cluster.names, cluster.timeout_s, cluster.max_message_bytes)
        self.cluster = cluster
        self.credentials: PartyCredentials | None = load_credentials(cluster, party)
        limit = cluster.max_message_bytes + 1024
        options = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),  # a port taken by another process is an error, not shared
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
        ]
        self._executor = futures.ThreadPoolExecutor(max_workers=len(self.peers) + 2,
                                                    thread_name_prefix=f"grpc-{party}")
        self._server = grpc.server(self._executor, options=options)
        handlers = {
            "Deliver": grpc.unary_unary_rpc_method_handler(self._on_deliver),
            "Hello": grpc.unary_unary_rpc_method_handler(self._on_hello),
        }
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        listen = cluster.party(party).listen_address
        try:
            bound = self._add_port(listen)
        except RuntimeError as exc:
            bound, error = 0, exc
        else:
            error = None
        if not bound:
            raise PeerError(
                f"party {party!r} cannot listen at {listen}: the port is taken or the host is not this "
                f"machine's ({error or 'bind failed'}). Fix its address in the cluster file."
            )
        self._heard_from = {p: False for p in self.peers}
        self._server.start()
        self._channels = {p: self._channel(p, options) for p in self.peers}
        self._deliver_calls = {p: c.unary_unary(DELIVER) for p, c in self._channels.items()}
        self._hello_calls = {p: c.unary_unary(HELLO) for p, c in self._channels.items()}
        try:
            self._wait_for_peers(time.monotonic() + self.timeout_s)
        except BaseException:
            self._shutdown()
            raise
        _close_at_thread_shutdown(self)
        self._start_heartbeats()

    # -- TLS ----------------------------------------------------------------------------------
    def _add_port(self, listen: str) -> int:
        creds = self.credentials
        if creds is None:
            return self._server.add_insecure_port(listen)
        peers_pem = b"".join(creds.pinned_pem[p] for p in self.peers)
        server_credentials = grpc.ssl_server_credentials(
            [(creds.key_pem, creds.certificate_pem)], root_certificates=peers_pem, require_client_auth=True
        )
        return self._server.add_secure_port(listen, server_credentials)

    def _channel(self, peer: str, options: list) -> grpc.Channel:
        address = self.cluster.party(peer).address
        creds = self.credentials
        if creds is None:
            return grpc.insecure_channel(address, options=options)
        channel_credentials = grpc.ssl_channel_credentials(
            root_certificates=creds.pinned_pem[peer], private_key=creds.key_pem,
            certificate_chain=creds.certificate_pem,
        )
        return grpc.secure_channel(
            address, channel_credentials, options=[*options, ("grpc.ssl_target_name_override", san_name(peer))]
        )

    def _authenticated_caller(self, context: grpc.ServicerContext) -> str | None:
        """The party named in ``pb-from``, once the TLS peer is shown to be that party."""
        claimed = dict(context.invocation_metadata()).get(FROM_KEY)
        if claimed not in self._inbox:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"party {self.party!r} takes messages from {list(self.peers)} only, not from {claimed!r}",
            )
        if self.credentials is None:
            return claimed
        auth = context.auth_context()
        version = (auth.get("ssl_tls_version") or [b""])[0]
        pem = (auth.get("x509_pem_cert") or [b""])[0]
        if version != b"TLSv1.3" or not pem:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"party {self.party!r} takes calls over mutually authenticated TLS 1.3 only")
        if pem.strip() != self.credentials.pinned_pem[claimed].strip():
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"party {self.party!r} refused a call that claims to come from {claimed!r}: the caller's "
                f"certificate is not the one the cluster pins for {claimed!r}",
            )
        return claimed

    # -- server side ------------------------------------------------------------------------
    def _on_deliver(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        sender = self._authenticated_caller(context)
        kind_text = dict(context.invocation_metadata()).get(KIND_KEY, "")
        if not kind_text.isdigit() or int(kind_text) not in KINDS:
            self._peer_gone(
                sender, f"party {sender!r} sent a message of unknown kind {kind_text!r}; its connection was dropped"
            )
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown message kind {kind_text!r}")
        if int(kind_text) != HEARTBEAT:  # a heartbeat may come from the peer's previous transport, still closing
            self._heard_from[sender] = True
        self._deliver(sender, int(kind_text), request)
        return b""

    def _on_hello(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        caller = self._authenticated_caller(context)
        if self._closed or self._failed is not None:
            # on its way out (closing waits for heartbeats and goodbyes with the server still up): a peer
            # forming a new cluster must wait for this party's next transport, or it would send into this one
            context.abort(grpc.StatusCode.UNAVAILABLE, f"party {self.party!r} is closing this transport")
        if caller in self._heard_from:
            self._heard_from[caller] = True
        return self.party.encode()

    # -- client side ------------------------------------------------------------------------
    def _address(self, peer: str) -> str:
        return self.cluster.party(peer).address

    def _wait_for_peers(self, deadline: float) -> None:
        """Every peer has answered our hello or called us (a fast peer may have done its
        part and left before we asked: its messages are in our inboxes already)."""
        missing = list(self.peers)
        while missing and time.monotonic() < deadline:
            for peer in list(missing):
                if self._heard_from[peer]:
                    missing.remove(peer)
                    continue
                try:
                    answer = self._hello_calls[peer](
                        b"", timeout=min(0.5, max(deadline - time.monotonic(), 0.01)), wait_for_ready=True,
                        metadata=((FROM_KEY, self.party),),
                    )
                except grpc.RpcError:
                    continue
                if answer != peer.encode():
                    raise PeerError(
                        f"party {self.party!r} reached {self._address(peer)} expecting party {peer!r}, but "
                        f"{answer[:64]!r} answered: two parties share an address in the cluster files in use"
                    )
                missing.remove(peer)
        if missing:
            where = ", ".join(f"{p!r} at {self._address(p)}" for p in missing)
            raise PeerError(
                f"party {self.party!r} waited {self.timeout_s:g} s, but part{'y' if len(missing) == 1 else 'ies'} "
                f"{where} did not show up. Start every party of the cluster (privacy-bridge party --name ...), "
                "or raise timeout_s in the cluster file."
            )

    def _send_frame(self, peer: str, kind: int, payload: bytes, timeout_s: float) -> None:
        metadata = ((FROM_KEY, self.party), (KIND_KEY, str(kind)))
        if kind == HEARTBEAT:
            # best effort and never in the way: a paused or dead peer misses it (a gRPC call
            # that gives up leaves the connection up), and closing never waits for one
            try:
                self._deliver_calls[peer](payload, timeout=min(timeout_s, self.heartbeat_s), metadata=metadata)
            except grpc.RpcError:
                pass
            return
        # wait_for_ready: a channel whose last connection attempt failed (the peer was paused,
        # or not up yet) waits for the next one instead of failing at once, so a message ends
        # only delivered, refused, at timeout_s, or when the peer's process is gone (_probe).
        call = self._deliver_calls[peer].future(payload, timeout=timeout_s, metadata=metadata, wait_for_ready=True)
        try:
            while True:
                try:
                    call.result(timeout=self.probe_every_s)
                    return
                except grpc.FutureTimeoutError:
                    if kind != DATA:
                        continue
                    if self._failed is not None:  # another party failed meanwhile: stop waiting
                        call.cancel()
                        self._check_usable()
                    dead = self._probe(peer) if self.silent_for(peer) >= 2 * self.heartbeat_s else None
                    if dead is not None:
                        call.cancel()
                        self._peer_gone(peer, dead)
                        raise RuntimeError(dead) from None
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise RuntimeError(f"{code.name}: {details}") from exc
            raise PeerError(
                f"party {peer!r} at {self._address(peer)} refused a message from party {self.party!r}: "
                f"{code.name if code else 'error'}: {details}"
            ) from exc

    def _probe(self, peer: str) -> str | None:
        """Dead only if the peer's port, which served it at startup, refuses a connection
        now: its process is gone.  A paused process's port still accepts (the kernel
        answers for it), and a late answer is left to the timeout."""
        entry = self.cluster.party(peer)
        if port_refuses(entry.host, entry.port, RECONNECT_S):
            return (f"party {peer!r} at {self._address(peer)} refuses connections: its process is gone "
                    "(it died or was killed)")
        return None

    def _shutdown(self) -> None:
        """Stop the server and wait until it has (its serving thread then ends), close the
        channels, and join the handler threads: nothing of gRPC's runs on afterwards."""
        stopped = self._server.stop(grace=STOP_GRACE_S).wait(STOP_WAIT_S)
        for channel in self._channels.values() if hasattr(self, "_channels") else ():
            channel.close()
        in_handler = threading.current_thread().name.startswith(f"grpc-{self.party}_")
        # a handler never closes its own transport today; if one did, it must not join itself
        self._executor.shutdown(wait=stopped and not in_handler)


def _close_at_thread_shutdown(transport: GrpcTransport) -> None:
    """Close ``transport`` (if still open) when the main thread ends, before
    ``concurrent.futures`` stops the executors its server runs handlers on: hooks of
    ``threading._register_atexit`` run last-registered first, and concurrent.futures
    registered its own when grpc imported it.  A weak reference: a transport dropped
    unclosed is not kept alive by this hook."""
    ref = weakref.ref(transport)

    def close() -> None:
        still_open = ref()
        if still_open is not None:
            still_open.close()

    try:
        threading._register_atexit(close)  # the hook concurrent.futures itself uses
    except RuntimeError:  # the interpreter is already shutting down: atexit closes it
        pass
