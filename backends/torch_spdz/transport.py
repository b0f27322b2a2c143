"""torch-spdz between processes: byte frames over ``torch.distributed``'s gloo (TCP).

Rendezvous.  Rank 0 (the first party of the cluster file) serves a ``TCPStore`` at
its address, or torchrun's agent does at ``MASTER_ADDR:MASTER_PORT``.  Every party
announces itself there and waits, at most ``timeout_s``, for all the others, so a
party that never shows up is named; then the gloo group connects its full mesh
(one TCP pair per two parties) and a second announcement round makes sure nobody
leaves while another is still reading addresses from the store (rank 0, which serves
it, waits at close until every party is past that round).

Frames.  A message to a peer is two point-to-point gloo sends: an int64 header
tensor ``[kind, length]`` and a uint8 tensor of ``length`` bytes (none when empty).
Nothing is pickled (``send_object_list`` would pickle).  One thread per peer posts
the receives, so a sender never waits on its peer's protocol code; a header with an
unknown kind or a length beyond ``max_message_bytes`` drops that peer with a
``PeerError`` instead of allocating what it asks.  A peer that dies closes its TCP
pair, which gloo reports at once: the receiving thread records it and the party's
next receive from it fails with the peer's name.

Security.  gloo in torch's CPU builds has no TLS transport, so every frame is sealed
(``bridge/security/channel.py``): once the group is connected, each pair runs a
handshake over its gloo link (ephemeral X25519 keys, each side signing the transcript
of both keys and both names with the key the cluster file pins for it), then every
frame is ``[SEALED, length]`` plus AES-256-GCM of ``kind || payload`` under that
direction's key, its nonce the frame counter and the two names its associated data.
A peer that cannot prove its pinned key fails the handshake with a ``PeerError``
naming it; an altered, replayed or reordered frame fails authentication and drops
that peer.  Each frame carries 17 bytes more than its payload (``Messenger``'s counts,
which are of payloads, do not change).  The rendezvous is no open ``TCPStore``: rank
0 serves ``bridge/security/rendezvous.py``'s store over mutually authenticated TLS 1.3
at the rendezvous address only, so an outsider can neither read nor write it.  With
``insecure = true`` (warned about at start) frames are cleartext and rank 0 serves a
``TCPStore`` bound to the rendezvous host only; under torchrun's agent store the
rendezvous is the agent's (unauthenticated: a forged entry can stop a run, never
read or forge a frame, as the handshake still authenticates every pair).

The process group is built directly (``ProcessGroupGloo(store, rank, size, options)``)
rather than through ``init_process_group``: no global default group, so several
transports (e.g. the parties of a test) can live in one process.
"""

from __future__ import annotations

import datetime
import socket
import sys
import threading
import time

import torch
import torch.distributed as dist

from backends.torch_spdz.rendezvous import AuthenticatedStore
from bridge.cluster import ClusterConfig, join_address
from bridge.mpc.comm import PeerError
from bridge.mpc.distributed import KINDS, PeerTransport
from bridge.security.channel import HELLO_BYTES, OVERHEAD, PROOF_BYTES, ChannelError, Handshake, SecureChannel
from bridge.security.keys import PartyCredentials, load_credentials
from bridge.security.rendezvous import RendezvousClient, RendezvousError, RendezvousServer, RendezvousUnreachable

TAG = 0
#: the tag of ``_break_link``'s receive, which no frame ever uses
BREAK_TAG = 1
#: how long a receiving thread may take to end once its link is broken
BREAK_JOIN_S = 5.0
#: how long a receiving thread may wait for its peer's next message: "forever" (the
#: protocol's own timeout, in ``PeerTransport.recv``, decides when a silence is an error)
IDLE_WAIT = datetime.timedelta(days=3650)
STORE_PREFIX = "privacy-bridge/"
#: the header kind of a sealed frame (its real kind travels inside, authenticated)
SEALED = 16


class GlooTransport(PeerTransport):
    """One party's transport over a gloo process group of every party in the cluster."""

    goodbye_to_finished = True  # its receiving thread for us waits for our goodbye

    def __init__(self, cluster: ClusterConfig, party: str) -> None:
        super().__init__(party, cluster.names, cluster.timeout_s, cluster.max_message_bytes)
        self.cluster = cluster
        self.rank = cluster.rank(party)
        self._ranks = {p: cluster.rank(p) for p in self.peers}
        self._send_locks = {p: threading.Lock() for p in self.peers}
        self.credentials: PartyCredentials | None = load_credentials(cluster, party)
        self._channels: dict[str, SecureChannel] = {}
        self._rendezvous_server: RendezvousServer | None = None
        self._rendezvous_client: RendezvousClient | None = None
        deadline = time.monotonic() + self.timeout_s
        store = self._rendezvous_store()
        try:
            self._announce(store, "up", deadline, "did not show up")
        except BaseException as exc:
            self._give_up(store, exc)
            raise
        options = dist.ProcessGroupGloo._Options()
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=cluster.party(party).host)]
        options._timeout = datetime.timedelta(seconds=max(deadline - time.monotonic(), 1.0))
        try:
            self._group = dist.ProcessGroupGloo(store, self.rank, len(cluster.parties), options)
        except RuntimeError as exc:
            self._give_up(store, exc)
            raise PeerError(
                f"party {party!r} could not connect its gloo links to every party: {exc}. "
                "A party died during setup, or a host/firewall blocks the connection."
            ) from exc
        try:
            if self.credentials is not None:
                self._handshake(self.credentials, max(deadline - time.monotonic(), 1.0))
            self._announce(store, "connected", time.monotonic() + self.timeout_s, "died while connecting")
        except BaseException as exc:
            self._group.shutdown()
            self._give_up(store, exc)
            raise
        store.set(f"passed/{party}", "1")
        self._store: dist.Store | None = store
        self._threads = [
            threading.Thread(target=self._receive, args=(p,), name=f"gloo-recv-{party}<-{p}", daemon=True)
            for p in self.peers
        ]
        for t in self._threads:
            t.start()
        self._start_heartbeats()

    # -- setup ------------------------------------------------------------------------------
    def _rendezvous_store(self) -> dist.Store:
        host, port = self.cluster.rendezvous_address
        is_server = self.rank == 0 and not self.cluster.external_rendezvous
        if self.credentials is not None and not self.cluster.external_rendezvous:
            # this store serves this cluster alone: no prefix (and PrefixStore cannot wrap a Python Store)
            return self._authenticated_store(self.credentials, host, port, is_server)
        if self.credentials is not None:
            print(f"privacy-bridge party {self.party!r}: the rendezvous is torchrun's agent store, which has no "
                  "authentication; the party channels are still authenticated and encrypted", file=sys.stderr)
        try:
            store = dist.TCPStore(
                host,
                port,
                len(self.cluster.parties),
                is_server,
                timeout=datetime.timedelta(seconds=self.timeout_s),
                wait_for_workers=False,
                # bound to the rendezvous host only (TCPStore alone listens on every interface)
                master_listen_fd=_listening_socket(host, port).detach() if is_server else None,
            )
        except Exception as exc:  # noqa: BLE001 - torch raises several types here
            where = join_address(host, port)
            if is_server:
                raise PeerError(
                    f"party {self.party!r} (rank 0) could not serve the rendezvous at {where}: "
                    f"{_first_line(exc)}. Is the port taken, or the host not this machine's?"
                ) from exc
            server = "torchrun's agent" if self.cluster.external_rendezvous else f"party {self.cluster.names[0]!r} (rank 0)"
            raise PeerError(
                f"party {self.party!r} could not reach the rendezvous at {where} within {self.timeout_s:g} s: "
                f"{server}, which serves it, did not show up ({_first_line(exc)})"
            ) from exc
        return dist.PrefixStore(STORE_PREFIX, store)

    def _authenticated_store(self, credentials: PartyCredentials, host: str, port: int, is_server: bool) -> dist.Store:
        where = join_address(host, port)
        server = self.cluster.names[0]
        if is_server:
            try:
                self._rendezvous_server = RendezvousServer(host, port, credentials, list(self.cluster.names))
            except OSError as exc:
                raise PeerError(
                    f"party {self.party!r} (rank 0) could not serve the rendezvous at {where}: "
                    f"{_first_line(exc)}. Is the port taken, or the host not this machine's?"
                ) from exc
        try:
            self._rendezvous_client = RendezvousClient(host, port, credentials, server, self.timeout_s)
        except RendezvousUnreachable as exc:
            self._close_rendezvous()
            raise PeerError(
                f"party {self.party!r} could not reach the rendezvous at {where} within {self.timeout_s:g} s: "
                f"party {server!r} (rank 0), which serves it, did not show up ({exc})"
            ) from exc
        except RendezvousError as exc:
            self._close_rendezvous()
            raise PeerError(
                f"party {self.party!r} could not join the rendezvous at {where}, served by party {server!r} "
                f"(rank 0), within {self.timeout_s:g} s: {exc}"
            ) from exc
        return AuthenticatedStore(self._rendezvous_client)

    def _close_rendezvous(self) -> None:
        if self._rendezvous_client is not None:
            self._rendezvous_client.close()
        if self._rendezvous_server is not None:
            self._rendezvous_server.close()

    def _serves_rendezvous(self) -> bool:
        return self.rank == 0 and not self.cluster.external_rendezvous

    def _give_up(self, store: dist.Store, exc: BaseException) -> None:
        """Setup failed here.  Rank 0 serves the store: it leaves its reason there for the
        others (so they name the party that is really missing) and stops serving a second
        later, when they have read it."""
        if not self._serves_rendezvous():
            self._close_rendezvous()
            return
        try:
            store.set(f"failed/{self.party}", str(exc)[:2000])
        except Exception:  # noqa: BLE001 - the others will find the store gone instead
            pass

        def stop(keep: dist.Store = store) -> None:  # holds an insecure TCPStore open until then
            self._close_rendezvous()
            del keep

        threading.Timer(1.0, stop).start()

    def _handshake(self, credentials: PartyCredentials, timeout_s: float) -> None:
        """Authenticate every peer and key a sealed channel with it (two exchanges)."""
        shakes = {p: Handshake(credentials, p) for p in self.peers}
        hellos = self._exchange({p: s.hello() for p, s in shakes.items()}, HELLO_BYTES, timeout_s)
        try:
            proofs = {p: shakes[p].proof(hellos[p]) for p in self.peers}
        except ChannelError as exc:
            raise PeerError(f"party {self.party!r} refused a peer at the handshake: {exc}") from exc
        answers = self._exchange(proofs, PROOF_BYTES, timeout_s)
        for peer in self.peers:
            try:
                self._channels[peer] = shakes[peer].finish(answers[peer])
            except ChannelError as exc:
                raise PeerError(
                    f"party {self.party!r} refused party {peer!r} at the handshake: {exc}. Someone else runs "
                    f"as {peer!r}, or its key is not the one this cluster file pins (rerun keygen and copy "
                    "the certificates to every host)."
                ) from exc

    def _exchange(self, outgoing: dict[str, bytes], size: int, timeout_s: float) -> dict[str, bytes]:
        """Send each peer its bytes and receive ``size`` bytes from each, all at once."""
        wait = datetime.timedelta(seconds=timeout_s)
        incoming = {p: torch.empty(size, dtype=torch.uint8) for p in self.peers}
        sends = {p: self._group.send([torch.frombuffer(bytearray(outgoing[p]), dtype=torch.uint8)], self._ranks[p], TAG)
                 for p in self.peers}
        receives = {p: self._group.recv([incoming[p]], self._ranks[p], TAG) for p in self.peers}
        for peer in self.peers:
            for work in (sends[peer], receives[peer]):
                try:
                    work.wait(wait)
                except Exception as exc:  # noqa: BLE001 - gloo raises RuntimeError
                    raise PeerError(
                        f"party {self.party!r} could not run the handshake with party {peer!r}: {_first_line(exc)}"
                    ) from exc
        return {p: incoming[p].numpy().tobytes() for p in self.peers}

    def _announce(self, store: dist.Store, stage: str, deadline: float, missing_means: str) -> None:
        """Write ``stage/<me>`` and wait until every party has; name whoever has not."""
        store.set(f"{stage}/{self.party}", "1")
        pending = [p for p in self.cluster.names if p != self.party]
        server = self.cluster.names[0]
        while pending:
            try:
                if not self._serves_rendezvous() and not self.cluster.external_rendezvous \
                        and store.check([f"failed/{server}"]):
                    reason = store.get(f"failed/{server}").decode("utf-8", "replace")
                    raise PeerError(f"party {self.party!r} stopped: party {server!r}, which serves the "
                                    f"rendezvous, gave up: {reason}")
                pending = [p for p in pending if not store.check([f"{stage}/{p}"])]
            except PeerError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store's server (rank 0) went away
                raise PeerError(
                    f"party {self.party!r} lost the rendezvous served by party {self.cluster.names[0]!r}: "
                    f"it died ({_first_line(exc)})"
                ) from exc
            if not pending:
                return
            if time.monotonic() > deadline:
                where = ", ".join(f"{p!r} at {self.cluster.party(p).address}" for p in pending)
                raise PeerError(
                    f"party {self.party!r} waited {self.timeout_s:g} s, but part{'y' if len(pending) == 1 else 'ies'} "
                    f"{where} {missing_means}. Start every party of the cluster (privacy-bridge party "
                    "--name ...), or raise timeout_s in the cluster file."
                )
            time.sleep(0.05)

    # -- frames -------------------------------------------------------------------------------
    def _address(self, peer: str) -> str:
        return self.cluster.party(peer).address

    def _send_frame(self, peer: str, kind: int, payload: bytes, timeout_s: float) -> None:
        rank = self._ranks[peer]
        wait = datetime.timedelta(seconds=timeout_s)
        channel = self._channels.get(peer)
        with self._send_locks[peer]:
            if channel is not None:
                payload = channel.seal(kind, payload)
                kind = SEALED
            header = torch.tensor([kind, len(payload)], dtype=torch.int64)
            self._group.send([header], rank, TAG).wait(wait)
            if payload:
                body = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
                self._group.send([body], rank, TAG).wait(wait)

    def _receive(self, peer: str) -> None:
        """Post receives from ``peer`` until it says goodbye, dies or misbehaves."""
        rank = self._ranks[peer]
        header = torch.empty(2, dtype=torch.int64)
        channel = self._channels.get(peer)
        overhead = OVERHEAD if channel is not None else 0
        while True:
            try:
                self._group.recv([header], rank, TAG).wait(IDLE_WAIT)
            except Exception as exc:  # noqa: BLE001 - gloo reports a dropped pair as RuntimeError
                # gloo also drops a pair whose send waited timeout_s: a stalled peer, not a dead one
                self._peer_gone(peer, self._link_closed(peer, _first_line(exc)))
                break
            kind, length = (int(v) for v in header.tolist())
            expected = kind == SEALED and length >= overhead if channel is not None else kind in KINDS
            if not expected or not 0 <= length <= self.max_message_bytes + overhead:
                self._peer_gone(
                    peer,
                    f"party {peer!r} sent a malformed frame header (kind {kind}, length {length}; "
                    f"at most {self.max_message_bytes} bytes accepted); its connection was dropped",
                )
                break
            payload = b""
            if length:
                body = torch.empty(length, dtype=torch.uint8)
                try:
                    self._group.recv([body], rank, TAG).wait(IDLE_WAIT)
                except Exception as exc:  # noqa: BLE001
                    # as for the header: a pair dropped by a send that waited timeout_s is a stall
                    self._peer_gone(peer, self._link_closed(peer, _first_line(exc)))
                    break
                payload = body.numpy().tobytes()
            if channel is not None:
                try:
                    kind, payload = channel.open(payload)
                except ChannelError as exc:
                    self._peer_gone(peer, f"{exc}; its connection was dropped")
                    break
            self._deliver(peer, kind, payload)
            if self._inbox[peer].gone is not None:
                break

    def _shutdown(self) -> None:
        """Wait (at most ``timeout_s``) until every peer has said goodbye or dropped, break
        the links of any peer still silent, then shut the gloo group down.

        No receiving thread may still be blocked in gloo when the interpreter exits: if a
        frame or a closed link wakes it while the interpreter finalizes, the thread cannot
        take the GIL back, CPython ends it with ``pthread_exit``, and unwinding through
        gloo's C++ wait calls ``std::terminate``: the process aborts (SIGABRT) after its
        error was already reported.  A peer that stalls (stopped, or stuck) would do that
        when it resumes.  So a peer this party already gave up on has its link broken at
        once, any other one after ``timeout_s`` without a goodbye, and every thread ends here.
        """
        deadline = time.monotonic() + self.timeout_s
        for peer, thread in zip(self.peers, self._threads, strict=True):
            if thread.is_alive() and self._inbox[peer].gone is not None:
                self._break_link(peer)
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0.0))
        for peer, thread in zip(self.peers, self._threads, strict=True):
            if thread.is_alive():
                self._break_link(peer)
        for t in self._threads:
            t.join(BREAK_JOIN_S)
        if self._store is not None and self.rank == 0 and not self.cluster.external_rendezvous:
            self._await_passed(deadline)
        if not any(t.is_alive() for t in self._threads):
            self._group.shutdown()
            self._store = None  # rank 0 stops serving the rendezvous
            self._close_rendezvous()

    def _break_link(self, peer: str) -> None:
        """Close the gloo pair to ``peer``, so that a receive blocked on it fails now.

        ``ProcessGroupGloo.abort()`` and ``shutdown()`` leave a posted receive waiting
        (checked against torch 2.13), but gloo closes a pair whose wait times out: a
        receive on a tag no frame uses, waited for a millisecond, does exactly that.
        """
        probe = torch.empty(1, dtype=torch.uint8)
        try:
            self._group.recv([probe], self._ranks[peer], BREAK_TAG).wait(datetime.timedelta(milliseconds=1))
        except Exception:  # noqa: BLE001, S110 - the timeout closing the pair is the point
            pass

    def _await_passed(self, deadline: float) -> None:
        """Rank 0 serves the store: it stays until every party has read it for the last time."""
        assert self._store is not None
        pending = list(self.peers)
        while pending and time.monotonic() < deadline:
            try:
                pending = [p for p in pending if not self._store.check([f"passed/{p}"])]
            except Exception:  # noqa: BLE001 - nothing more to wait for
                return
            time.sleep(0.02)


def _listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening at ``host:port`` only, for ``TCPStore(master_listen_fd=...)``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, reuse_port=False, backlog=128)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
