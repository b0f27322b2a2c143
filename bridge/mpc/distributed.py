"""One party per process: the runner, and what every process transport shares.

The protocol code is the one the embedded mode runs (``ThreadedParties``); only the
transport differs.  ``DistributedParty`` is a ``PartyRunner`` that hosts the single
party of this process: ``run(fn)`` calls ``fn`` on that party's context, so a
session, a training loop or any other SPMD protocol written against a
``PartyRunner`` runs unchanged, each process computing its own party's part.

``PeerTransport`` is the engine-independent half of a process transport: one inbox
per peer, filled by the engine's receiving side (gloo threads for torch-spdz, gRPC
handlers for tf-pond), and the fault rules, which are the embedded mode's:

* a message that does not arrive within ``timeout_s`` is an error naming the party
  that stalled: the awaited peer if it fell silent, or the silent party it is itself
  waiting for (see heartbeats below);
* a peer whose connection drops without a goodbye (it died, was killed, or its host
  went away) is named as soon as the engine notices, not after the timeout; nothing
  else declares a peer dead before ``timeout_s`` (a paused or slow peer is waited for);
* a party that fails tells every peer that it failed (an abort notice), and every
  peer then stops with an error that names it, as ``InMemoryNetwork.abort`` does;
* a malformed message is rejected with a ``PeerError`` at the receiver.

Abort notices carry no secrets.  An error's message may quote private values (an
input check says what magnitude it refused), so a notice says only the error's
kind, its exception class name, and which parties the failing one found dead or
stalled (``abort_notice``); the message stays with the failing party, which raises
it.  A receiver reads a notice through the same filter, so a peer cannot make it
print arbitrary text either.

Heartbeats.  A background thread per peer sends it an empty ``HEARTBEAT`` every
``heartbeat_s``, and every frame received (of any kind) stamps its sender as alive.
So a waiting party knows which peers still run: when ``timeout_s`` passes, the error
names the peer(s) whose heartbeats stopped, not a live peer that merely waits for
them too.  A party that was itself paused does not count the pause against its
peers (its deadline moves by the time it did not run).

Slow is not silent.  A heartbeat says whether its sender is working (inside a protocol
run and not waiting in a receive: computing a long kernel, say) or waiting (or idle).  A receive that has waited
``timeout_s`` keeps waiting while every peer is heard (none silent for ``stall_s``)
and some peer reported working, or sent data, within the last ``stall_s``: so a
legitimate forward pass longer than ``timeout_s`` never times out in a party that only
waits (a client, a model owner, the dealer), while a stalled peer (its heartbeats stop)
is still named ``stall_s`` (at most ``timeout_s``) after it fell silent, and parties
that all wait for one another (different programs) still stop at ``timeout_s``.

Control notices and heartbeats ride in the transport's own header, never in
protocol frames, so the byte and round counts of ``Messenger`` are those of the
embedded mode exactly.
"""

from __future__ import annotations

import atexit
import contextlib
import queue
import re
import socket
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
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
DATA, GOODBYE, ABORT, HEARTBEAT = 0, 1, 2, 3
KINDS = (DATA, GOODBYE, ABORT, HEARTBEAT)
#: how long a control notice (goodbye, abort) may take to deliver before it is given up
CONTROL_TIMEOUT_S = 1.0
#: a gap this long between two looks at an inbox means this process itself was not
#: running (paused, suspended): that time is not counted against the peers
PAUSED_S = 1.0
#: a heartbeat's payload: its sender is waiting in a receive, or working (computing, sending)
WAITING, WORKING = b"w", b"b"
#: what an abort notice may name as the error's kind: an identifier (an exception class name)
_KIND = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,79}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,199}")


def peer_fault(message: str, culprits: tuple[str, ...]) -> PeerError:
    """A ``PeerError`` that knows which parties are to blame (stalled or gone), in its
    ``culprits``: an abort notice passes their names on, so that every party names the
    one that stalled, not only the one that gave up first."""
    error = PeerError(message)
    error.culprits = culprits  # type: ignore[attr-defined]
    return error


def abort_notice(error: BaseException | str) -> str:
    """What a failure may tell the peers: ``Kind`` or ``Kind|party,party`` (the parties it
    found dead or stalled), never the error's message, which may quote private values.

    ``error`` is the exception, or a text that starts with its kind (``"ValueError: ..."``):
    only that kind is kept, and a text that does not start with one becomes ``Error``.
    """
    if isinstance(error, BaseException):
        kind, culprits = type(error).__name__, _culprits(error)
    else:
        head, _, rest = str(error).partition(":")
        kind, _, names = head.strip().partition("|")
        culprits = tuple(names.split(",")) if names and not rest else ()
    if not _KIND.fullmatch(kind):
        kind = "Error"
    culprits = tuple(dict.fromkeys(c for c in culprits if _NAME.fullmatch(c)))
    return f"{kind}|{','.join(culprits)}" if culprits else kind


def _culprits(error: BaseException) -> tuple[str, ...]:
    """The parties a ``peer_fault`` in ``error``'s chain (cause or context) blames."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        culprits = getattr(current, "culprits", ())
        if isinstance(current, PeerError) and culprits:
            return tuple(culprits)
        current = current.__cause__ or current.__context__
    return ()


def read_notice(payload: bytes, parties: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """A received abort notice as (kind, culprits): anything else a peer put there is dropped."""
    kind, culprits = abort_notice(payload[:4096].decode("ascii", "replace")).partition("|")[::2]
    return kind, tuple(c for c in culprits.split(",") if c in parties)


def port_refuses(host: str, port: int, timeout_s: float) -> bool:
    """Whether ``host:port`` refuses a TCP connection: nothing listens there any more.

    A paused process's listening socket still accepts (the kernel answers for it) and a
    busy or far host answers late, so only a refusal, on a port that served the peer
    before, says that its process is gone.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


@dataclass
class Inbox:
    """What one peer sent this party, in order, and why nothing more will come."""

    messages: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    gone: str | None = None
    #: the peer said goodbye (rather than dying or being dropped)
    finished: bool = False


class PeerTransport(Transport):
    """Inboxes per peer, timeouts, goodbyes, abort notices and heartbeats; the engine moves the bytes.

    A subclass sends with ``_send_frame`` and calls ``_deliver`` from its receiving
    side, and calls ``_start_heartbeats`` once its links are up.  It may implement
    ``_probe`` to tell a dead peer from a silent one while a receive waits (asked every
    ``probe_every_s`` once the peer's heartbeats have stopped); a probe must answer
    "dead" only when the peer's process is known to be gone, never for a slow one.
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
        #: the parties the abort notice that stopped this one blames
        self._failed_blame: tuple[str, ...] = ()
        self._closed = False
        self._state = threading.Lock()
        #: a heartbeat to every peer this often; a peer silent for ``stall_s`` is stalled
        self.heartbeat_s = min(1.0, self.timeout_s / 10)
        self.stall_s = max(3 * self.heartbeat_s, self.timeout_s / 2)
        now = time.monotonic()
        self._last_heard = dict.fromkeys(self.peers, now)
        #: when a peer last reported working (a heartbeat saying so) or sent data
        self._last_progress = now
        #: receives in progress here, and protocol runs (``working``): a heartbeat says
        #: "working" only inside a run and outside every receive
        self._receiving = 0
        self._running = 0
        self._beating = threading.Event()
        self._beats: list[threading.Thread] = []

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
        self._last_heard[peer] = time.monotonic()
        if kind == DATA:
            self._last_progress = self._last_heard[peer]
            self._inbox[peer].messages.put(payload)
        elif kind == HEARTBEAT:
            if payload != WAITING:  # working (an empty heartbeat, from an older party, counts as working)
                self._last_progress = self._last_heard[peer]
        elif kind == GOODBYE:
            self._inbox[peer].finished = True
            self._peer_gone(peer, f"party {peer!r} has finished and closed its connection")
        elif kind == ABORT:
            error_kind, blame = read_notice(payload, (self.party, *self.peers))
            found = ""
            if blame:
                names = ", ".join("this party" if b == self.party else f"party {b!r}" for b in blame)
                found = f"; it found {names} stalled or gone"
            self._fail(f"party {peer!r} failed: {error_kind}{found} (the error's message stays with "
                       f"party {peer!r}: see its own output)", blame or (peer,))
        else:
            self._peer_gone(peer, f"party {peer!r} sent a message of unknown kind {kind}; its connection was dropped")

    def _peer_gone(self, peer: str, reason: str) -> None:
        with self._state:
            inbox = self._inbox[peer]
            if inbox.gone is None:
                inbox.gone = reason

    def _fail(self, reason: str, blame: tuple[str, ...] = ()) -> None:
        with self._state:
            if self._failed is None:
                self._failed = reason
                self._failed_blame = blame

    # -- liveness ------------------------------------------------------------------------------
    def _start_heartbeats(self) -> None:
        """Send every peer a heartbeat every ``heartbeat_s`` until ``close`` (one thread per
        peer, so that a peer that takes nothing in delays no other peer's heartbeats)."""
        now = time.monotonic()
        for peer in self.peers:
            self._last_heard[peer] = max(self._last_heard[peer], now)
        self._beats = [
            threading.Thread(target=self._beat, args=(p,), name=f"heartbeat-{self.party}->{p}", daemon=True)
            for p in self.peers
        ]
        for t in self._beats:
            t.start()

    def _beat(self, peer: str) -> None:
        while not self._beating.wait(self.heartbeat_s):
            if self._inbox[peer].gone is not None:
                return
            try:
                # as patient as a message: an engine may drop a link whose send gave up (gloo
                # does), and a paused peer must not lose its link before timeout_s
                busy = self._running and not self._receiving
                self._send_frame(peer, HEARTBEAT, WORKING if busy else WAITING, self.timeout_s)
            except Exception:  # noqa: BLE001, S112 - a missed heartbeat is the peer's silence to judge
                continue

    def _stop_heartbeats(self) -> None:
        """Stop the heartbeat threads and wait for them: a send still blocked in the engine
        when the interpreter exits can abort the process (gloo's does), and each gives up
        within ``timeout_s`` (a heartbeat to a stalled peer waits as long as a message)."""
        self._beating.set()
        deadline = time.monotonic() + self.timeout_s + CONTROL_TIMEOUT_S
        for t in self._beats:
            t.join(max(deadline - time.monotonic(), 0.0))

    def _link_closed(self, peer: str, detail: str) -> str:
        """Why the engine's link to ``peer`` closed without a goodbye: it died, unless it had
        been silent for ``stall_s`` (an engine may drop the link of a send that waited
        ``timeout_s``: then the peer stalled)."""
        silent = self.silent_for(peer)
        if silent >= self.stall_s:
            return f"{_stall(peer, silent, 'and its link timed out')} ({detail})"
        return f"party {peer!r}'s connection closed without a goodbye: it died or was killed ({detail})"

    def silent_for(self, peer: str) -> float:
        """Seconds since anything, a heartbeat included, arrived from ``peer``."""
        return time.monotonic() - self._last_heard[peer]

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """Mark a protocol run (``DistributedParty.run``): outside its receives, this party
        tells its peers that it works, so that their receives wait for it past ``timeout_s``."""
        with self._state:
            self._running += 1
        try:
            yield
        finally:
            with self._state:
                self._running -= 1

    def healthy(self) -> bool:
        """Open, not failed, sending heartbeats, and hearing every connected peer (none
        silent for ``stall_s``): what a serving node checks before it tells clients it works."""
        return not (self._closed or self._failed is not None or self._beating.is_set() or self._stalled())

    def _cluster_working(self) -> bool:
        """Whether a receive past ``timeout_s`` may keep waiting: every connected peer is
        heard (none silent for ``stall_s``) and one of them worked within ``stall_s``."""
        if self._stalled():
            return False
        return time.monotonic() - self._last_progress < self.stall_s

    def _stalled(self) -> dict[str, float]:
        """Peers still connected whose heartbeats stopped ``stall_s`` ago or more, with their silence."""
        silent = {p: self.silent_for(p) for p in self.peers if self._inbox[p].gone is None}
        return {p: s for p, s in silent.items() if s >= self.stall_s}

    def _silence_reason(self, peer: str) -> tuple[str, tuple[str, ...]]:
        """Why ``peer`` sent nothing in ``timeout_s``, and whom to blame: ``peer`` if its
        heartbeats stopped (or it is gone); else the stalled parties it is likely waiting for."""
        stalled = self._stalled()
        for other in list(stalled):  # a stalled peer may be a dead one: say so if the engine can tell
            dead = self._probe(other)
            if dead is not None:
                self._peer_gone(other, dead)
        if self._inbox[peer].gone is not None:
            return f"; {self._inbox[peer].gone}", (peer,)
        if peer in stalled:
            return f": {_stall(peer, stalled[peer])}", (peer,)
        others = {p: s for p, s in stalled.items() if p != peer and self._inbox[p].gone is None}
        gone = [p for p in self.peers if p != peer and self._inbox[p].gone is not None
                and not self._inbox[p].finished]
        if others or gone:
            blamed = (*others, *gone)
            what = [_stall(p, s) for p, s in others.items()]
            what += [str(self._inbox[p].gone) for p in gone]
            return (f"; it is alive (its heartbeats arrive), so it is likely waiting itself: {'; '.join(what)}",
                    blamed)
        return ("; it is alive (its heartbeats arrive) but busy or stuck, or the parties run different "
                "programs", (peer,))

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
            raise peer_fault(f"party {self.party!r} stopped: {self._failed}", self._failed_blame)
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
            raise peer_fault(f"party {self.party!r} cannot send to {peer!r}: {inbox.gone}", (peer,))
        try:
            self._send_frame(peer, DATA, message, self.timeout_s)
        except PeerError:
            raise
        except Exception as exc:  # noqa: BLE001 - engine errors become one clear PeerError
            where = f"party {self.party!r} could not deliver a message to party {peer!r} at {self._address(peer)}"
            if inbox.gone is not None:
                reason = f"{where}: {inbox.gone}"
            elif self.silent_for(peer) >= self.stall_s:
                stall = _stall(peer, self.silent_for(peer), "nor taken anything in")
                reason = f"{where} within {self.timeout_s:g} s: {stall} ({_first_line(exc)})"
            else:
                reason = f"{where}: it died or is unreachable ({_first_line(exc)})"
            self._peer_gone(peer, reason)
            raise peer_fault(reason, (peer,)) from exc

    def recv(self, peer: str) -> bytes:
        inbox = self._check_peer(peer)
        with self._state:
            self._receiving += 1
        try:
            return self._recv(peer, inbox)
        finally:
            with self._state:
                self._receiving -= 1

    def _recv(self, peer: str, inbox: Inbox) -> bytes:
        start = last = time.monotonic()
        deadline = start + self.timeout_s
        next_probe = start
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
                    raise peer_fault(
                        f"party {self.party!r} expected a message from party {peer!r}, but {inbox.gone}", (peer,)
                    ) from None
            now = time.monotonic()
            if now - last >= PAUSED_S:
                deadline += now - last  # this process did not run: its peers had no chance to be heard
            last = now
            if now >= next_probe and self.silent_for(peer) >= 2 * self.heartbeat_s:
                reason = self._probe(peer)
                if reason is not None:
                    self._peer_gone(peer, reason)
                    continue
                next_probe = time.monotonic() + self.probe_every_s
            if now >= deadline and not (self._cluster_working() and self.silent_for(peer) < self.stall_s):
                why, culprits = self._silence_reason(peer)
                raise peer_fault(
                    f"party {self.party!r} waited {self.timeout_s:g} s for party {peer!r} at "
                    f"{self._address(peer)}, which sent nothing{why}", culprits
                )

    def abort(self, reason: str) -> None:
        """Tell every peer that this party failed; later sends and receives refuse.

        The peers learn only ``abort_notice(reason)``: the error's kind and the parties
        it blames, never the rest of ``reason`` (the message, which may quote private
        values); that stays here.
        """
        with self._state:
            if self._closed or self._failed is not None:
                return
            self._failed = f"it failed itself: {reason}"
        notice = abort_notice(reason).encode("ascii")
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
        self._stop_heartbeats()  # none may follow a goodbye
        for peer in self.peers:
            inbox = self._inbox[peer]
            if inbox.gone is not None and not (inbox.finished and self.goodbye_to_finished):
                continue
            try:
                self._send_frame(peer, GOODBYE, b"", CONTROL_TIMEOUT_S)
            except Exception:  # noqa: BLE001, S112 - a dead peer needs no goodbye
                continue
        self._shutdown()


def _stall(peer: str, silent: float, more: str = "") -> str:
    """The one wording of a stall, so that every party's error names the stalled party alike."""
    return (f"party {peer!r} stalled: it has sent nothing, not even a heartbeat, for {silent:.1f} s"
            f"{' ' + more if more else ''} (it is paused, hung or overloaded, or cut off)")


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
            with getattr(self.transport, "working", contextlib.nullcontext)():
                return {self.party: fn(self.contexts[self.party])}
        except BaseException as exc:
            self.transport.abort(abort_notice(exc))  # its kind, never its message: that is raised here only
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
#: one lock per key: opening a transport waits for every peer, so it must not hold the
#: lock of the whole table (the parties of a test, in threads of one process, open theirs together)
_opening: dict[tuple[str, str, str], threading.Lock] = {}
_atexit_registered = False


def as_cluster(cluster: ClusterConfig | str | Path) -> ClusterConfig:
    return cluster if isinstance(cluster, ClusterConfig) else load_cluster(cluster)


def connect(backend: "SecureBackend", cluster: ClusterConfig, party: str) -> Transport:
    """This process's transport for ``party`` on ``backend``: opened once, closed at exit."""
    global _atexit_registered
    key = (backend.name, cluster.model_dump_json(), party)
    with _connections_lock:
        opening = _opening.setdefault(key, threading.Lock())
    with opening:
        with _connections_lock:
            if key in _connections:
                return _connections[key]
        transport = backend.make_transport(cluster, party)
        with _connections_lock:
            _connections[key] = transport
            if not _atexit_registered:
                atexit.register(disconnect_all)
                _atexit_registered = True
        return transport


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
