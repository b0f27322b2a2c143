"""One party per process: the runner, and what every process transport shares.

The protocol code is the one the embedded mode runs (``ThreadedParties``); only the
transport differs.  ``DistributedParty`` is a ``PartyRunner`` that hosts the single
party of this process: ``run(fn)`` calls ``fn`` on that party's context, so a
session, a training loop or any other SPMD protocol written against a
``PartyRunner`` runs unchanged, each process computing its own party's part.

``PeerTransport`` is the engine-independent half of a process transport: one inbox
per peer, filled by the engine's receiving side (gloo threads for torch-spdz, gRPC
handlers for tf-pond), and the fault rules, which are the embedded mode's:

* a message that does not arrive within ``timeout_s`` is an error naming the peer;
* a peer whose connection drops without a goodbye (it died, was killed, or its host
  went away) is named as soon as the engine notices, not after the timeout;
* a party that fails tells every peer why (an abort notice), and every peer then
  stops with an error that names it, as ``InMemoryNetwork.abort`` does;
* a malformed message is rejected with a ``PeerError`` at the receiver.

Control notices ride in the transport's own header, never in protocol frames, so the
byte and round counts of ``Messenger`` are those of the embedded mode exactly.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bridge.cluster import ClusterConfig, ClusterError, load_cluster
from bridge.ir import Numerics, Program
from bridge.mpc.comm import CommStats, PeerError, Transport
from bridge.mpc.kernels import RingKernels
from bridge.mpc.party import PartyContext
from bridge.mpc.runtime import PartyFailure, make_contexts

if TYPE_CHECKING:
    from bridge.mpc.backend import SecureBackend

R = TypeVar("R")

#: message kinds in a transport header
DATA, GOODBYE, ABORT = 0, 1, 2
KINDS = (DATA, GOODBYE, ABORT)
#: how long a control notice (goodbye, abort) may take to deliver before it is given up
CONTROL_TIMEOUT_S = 1.0


@dataclass
class Inbox:
    """What one peer sent this party, in order, and why nothing more will come."""

    messages: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    gone: str | None = None
    #: the peer said goodbye (rather than dying or being dropped)
    finished: bool = False


class PeerTransport(Transport):
    """Inboxes per peer, timeouts, goodbyes and abort notices; the engine moves the bytes.

    A subclass sends with ``_send_frame`` and calls ``_deliver`` from its receiving
    side; it may implement ``_probe`` to tell a dead peer from a slow one while a
    receive waits (checked every ``probe_every_s``).
    """

    poll_s = 0.05
    probe_every_s = 1.0
    #: whether a peer that said goodbye still listens for ours (it does when its
    #: receiving side waits for our goodbye to end)
    goodbye_to_finished = False

    def __init__(self, party: str, parties: tuple[str, ...], timeout_s: float, max_message_bytes: int) -> None:
        if party not in parties:
            raise ClusterError(f"party {party!r} is not in the cluster {list(parties)}")
        self.party = party
        self.peers = tuple(p for p in parties if p != party)
        self.timeout_s = float(timeout_s)
        self.max_message_bytes = int(max_message_bytes)
        self._inbox = {p: Inbox() for p in self.peers}
        self._failed: str | None = None
        self._closed = False
        self._state = threading.Lock()

    # -- the engine's side -----------------------------------------------------------------
    @abstractmethod
    def _send_frame(self, peer: str, kind: int, payload: bytes, timeout_s: float) -> None:
        """Deliver one message to ``peer``, in order; raise if it cannot be delivered."""

    def _probe(self, peer: str) -> str | None:
        """Why ``peer`` is known to be dead, or None if it may still answer."""
        return None

    def _shutdown(self) -> None:
        """Release the engine (sockets, servers) after the goodbyes."""

    def _address(self, peer: str) -> str:
        return repr(peer)

    def _deliver(self, peer: str, kind: int, payload: bytes) -> None:
        """Called by the receiving side for each message from ``peer``."""
        if kind == DATA:
            self._inbox[peer].messages.put(payload)
        elif kind == GOODBYE:
            self._inbox[peer].finished = True
            self._peer_gone(peer, f"party {peer!r} has finished and closed its connection")
        elif kind == ABORT:
            self._fail(f"party {peer!r} failed: {payload.decode('utf-8', 'replace')}")
        else:
            self._peer_gone(peer, f"party {peer!r} sent a message of unknown kind {kind}; its connection was dropped")

    def _peer_gone(self, peer: str, reason: str) -> None:
        with self._state:
            inbox = self._inbox[peer]
            if inbox.gone is None:
                inbox.gone = reason

    def _fail(self, reason: str) -> None:
        with self._state:
            if self._failed is None:
                self._failed = reason

    # -- Transport ---------------------------------------------------------------------------
    def _check_peer(self, peer: str) -> Inbox:
        try:
            return self._inbox[peer]
        except KeyError:
            raise PeerError(
                f"party {self.party!r} addressed unknown party {peer!r}; the cluster has "
                f"{sorted((self.party, *self.peers))}"
            ) from None

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise PeerError(f"party {self.party!r} stopped: {self._failed}")
        if self._closed:
            raise PeerError(f"party {self.party!r} has closed its transport; connect again to run more")

    def send(self, peer: str, message: bytes) -> None:
        inbox = self._check_peer(peer)
        self._check_usable()
        if len(message) > self.max_message_bytes:
            raise PeerError(
                f"party {self.party!r} would send {len(message)} bytes to {peer!r}; the cluster accepts at most "
                f"{self.max_message_bytes} (max_message_bytes in the cluster file)"
            )
        if inbox.gone is not None:
            raise PeerError(f"party {self.party!r} cannot send to {peer!r}: {inbox.gone}")
        try:
            self._send_frame(peer, DATA, message, self.timeout_s)
        except PeerError:
            raise
        except Exception as exc:  # noqa: BLE001 - engine errors become one clear PeerError
            reason = f"party {self.party!r} could not deliver a message to party {peer!r} at " \
                     f"{self._address(peer)}: it died or is unreachable ({_first_line(exc)})"
            self._peer_gone(peer, reason)
            raise PeerError(reason) from exc

    def recv(self, peer: str) -> bytes:
        inbox = self._check_peer(peer)
        start = time.monotonic()
        deadline = start + self.timeout_s
        next_probe = start + self.probe_every_s
        while True:
            self._check_usable()
            try:
                return inbox.messages.get(timeout=self.poll_s)
            except queue.Empty:
                pass
            self._check_usable()  # a peer's abort notice explains more than its goodbye after it
            if inbox.gone is not None:
                try:
                    return inbox.messages.get_nowait()  # arrived just before the peer left
                except queue.Empty:
                    raise PeerError(
                        f"party {self.party!r} expected a message from party {peer!r}, but {inbox.gone}"
                    ) from None
            now = time.monotonic()
            if now >= next_probe:
                reason = self._probe(peer)
                if reason is not None:
                    self._peer_gone(peer, reason)
                next_probe = time.monotonic() + self.probe_every_s
            if now >= deadline:
                raise PeerError(
                    f"party {self.party!r} waited {self.timeout_s:g} s for party {peer!r} at "
                    f"{self._address(peer)}, which sent nothing: it is dead or stuck"
                )

    def abort(self, reason: str) -> None:
        """Tell every peer that this party failed, and why; later sends and receives refuse."""
        with self._state:
            if self._closed or self._failed is not None:
                return
            self._failed = f"it failed itself: {reason}"
        notice = f"{reason}"[:4000].encode("utf-8")
        for peer in self.peers:
            if self._inbox[peer].gone is None:
                try:
                    self._send_frame(peer, ABORT, notice, CONTROL_TIMEOUT_S)
                except Exception:  # noqa: BLE001, S112 - best effort: the peer may be the one that died
                    continue

    def close(self) -> None:
        """Say goodbye (nothing more will come from here, also after a failure) to every
        peer still there, then release the engine."""
        with self._state:
            if self._closed:
                return
            self._closed = True
        for peer in self.peers:
            inbox = self._inbox[peer]
            if inbox.gone is not None and not (inbox.finished and self.goodbye_to_finished):
                continue
            try:
                self._send_frame(peer, GOODBYE, b"", CONTROL_TIMEOUT_S)
            except Exception:  # noqa: BLE001, S112 - a dead peer needs no goodbye
                continue
        self._shutdown()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# -- the runner ----------------------------------------------------------------------------------

class DistributedParty:
    """``PartyRunner`` for the one party this process hosts, over any ``Transport``.

    ``run`` returns ``{party: result}`` (or ``{}`` when the party is not asked to
    run), and ``stats`` counts this party's traffic only: the same per-party counts
    the embedded mode records for it.  A failure is announced to the peers
    (``Transport.abort``) before it is raised here, so that none waits for this party.
    The transport is shared by every executable of the process (``connect``) and
    closed at exit (``disconnect_all``).
    """

    def __init__(
        self,
        transport: Transport,
        kernels: RingKernels,
        numerics: Numerics,
        compute: tuple[str, str],
        dealer: str,
    ) -> None:
        self.transport = transport
        self.party = transport.party
        self.stats = CommStats()
        self.contexts: dict[str, PartyContext] = make_contexts(
            {self.party: transport}, kernels, numerics, compute, dealer, self.stats
        )

    def run(self, fn: Callable[[PartyContext], R], parties: tuple[str, ...] | None = None) -> dict[str, R]:
        self.contexts[self.party].begin_run()
        if parties is not None and self.party not in parties:
            return {}
        try:
            return {self.party: fn(self.contexts[self.party])}
        except BaseException as exc:
            self.transport.abort(f"{type(exc).__name__}: {exc}")
            if isinstance(exc, PeerError) or not isinstance(exc, Exception):
                raise
            if isinstance(exc, (ValueError, TypeError, KeyError)):
                raise
            raise PartyFailure(self.party, exc) from exc


# -- connections ---------------------------------------------------------------------------------

#: open transports of this process, by (backend, cluster, party).  A process opens its
#: party's connections once and reuses them for every executable it prepares: opening
#: them again would race with peers that still hold the old ones.
_connections: dict[tuple[str, str, str], Transport] = {}
_connections_lock = threading.Lock()
_atexit_registered = False


def as_cluster(cluster: ClusterConfig | str | Path) -> ClusterConfig:
    return cluster if isinstance(cluster, ClusterConfig) else load_cluster(cluster)


def connect(backend: "SecureBackend", cluster: ClusterConfig, party: str) -> Transport:
    """This process's transport for ``party`` on ``backend``: opened once, closed at exit."""
    global _atexit_registered
    key = (backend.name, cluster.model_dump_json(), party)
    with _connections_lock:
        if key not in _connections:
            _connections[key] = backend.make_transport(cluster, party)
            if not _atexit_registered:
                atexit.register(disconnect_all)
                _atexit_registered = True
        return _connections[key]


def disconnect_all() -> None:
    """Say goodbye on every open transport of this process and close it."""
    with _connections_lock:
        transports = list(_connections.values())
        _connections.clear()
    for transport in transports:
        transport.close()


def distributed_runner(
    backend: "SecureBackend",
    program: Program,
    kernels: RingKernels,
    cluster: ClusterConfig | str | Path,
    party: str | None,
) -> DistributedParty:
    """The runner for ``party`` of ``cluster``, checked against ``program``'s placement."""
    from bridge.mpc.session import compute_and_dealer

    config = as_cluster(cluster)
    if party is None:
        raise ClusterError(
            f"a cluster was given but no party: pass party= one of {list(config.names)} "
            "(privacy-bridge party --name sets it)"
        )
    config.party(party)
    config.check_placement(program.placement)
    if party not in program.placement.names:
        raise ClusterError(
            f"party {party!r} is in the cluster but not in the model's placement {list(program.placement.names)}"
        )
    compute, dealer = compute_and_dealer(program)
    return DistributedParty(connect(backend, config, party), kernels, program.numerics, compute, dealer)
