"""Communicators: how a party talks to its peers, and what it costs.

``Transport`` moves framed bytes between named parties; the in-memory one below
runs every party in one process (threads, one queue per ordered pair), and a
distributed one (torch.distributed, gRPC) plugs into the same interface.
``Messenger`` sits on top of a transport, frames tensors (``bridge.mpc.wire``) and
counts every byte and round per party and per op label.

A round is one step in which a party sends and must wait for its peers'
messages before it can go on (``exchange``).  A send that needs no answer
(sharing an input, sending output shares) is a round for the sender only.
"""

from __future__ import annotations

import queue
import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from bridge.mpc import wire

DEFAULT_TIMEOUT_S = 30.0


class PeerError(RuntimeError):
    """A peer died, timed out or sent garbage: the protocol cannot go on."""


class Transport(ABC):
    """Moves whole messages (bytes) between named parties, in order per pair."""

    party: str

    @abstractmethod
    def send(self, peer: str, message: bytes) -> None: ...

    @abstractmethod
    def recv(self, peer: str) -> bytes: ...

    def close(self) -> None:  # noqa: B027
        """Release sockets or queues."""

    def abort(self, reason: str) -> None:  # noqa: B027
        """Tell the peers this party failed, so that none waits for it (a process
        transport sends a notice; in memory, ``InMemoryNetwork.abort`` does it)."""


class InMemoryNetwork:
    """All parties in one process; each sees only its own queues.

    ``abort`` wakes every waiting party with an error naming who failed, so that one
    party's exception never leaves the others hanging.  Slow is not dead: a receive that
    waited ``timeout_s`` keeps waiting while another party is working (its thread alive
    and not itself waiting in a receive) or while messages still move between the others
    (the last send or delivery within ``timeout_s``), so a forward pass longer than
    ``timeout_s`` never fails a party that only waits; parties that all wait for one another
    (or for a party whose thread ended) still stop ``timeout_s`` after the last message moved.

    Progress, not only the snapshot of who is receiving: a party that has just been handed
    its message still counts as receiving until its ``recv`` returns, so on a loaded host
    every other party could look as if waiting for an instant while the run moves on (a
    wait past ``timeout_s`` failed that way once in make test).
    """

    def __init__(self, parties: list[str] | tuple[str, ...], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.parties = tuple(parties)
        self.timeout_s = timeout_s
        self._queues = {(a, b): queue.SimpleQueue() for a in parties for b in parties if a != b}
        self._abort = threading.Event()
        self.abort_reason = ""
        #: each party's thread in this run, and how many receives it has in progress
        self._threads: dict[str, threading.Thread] = {}
        self._receiving = dict.fromkeys(self.parties, 0)
        self._lock = threading.Lock()
        #: when a message was last sent or delivered between any two parties (monotonic seconds)
        self.last_progress = time.monotonic()

    def bind(self, party: str) -> None:
        """Record the calling thread as ``party``'s for this run (its liveness)."""
        self._threads[party] = threading.current_thread()

    def working(self, but: str) -> bool:
        """Whether a party other than ``but`` is working: its thread alive, not waiting in a receive."""
        return any(p != but and t.is_alive() and not self._receiving.get(p, 0) for p, t in list(self._threads.items()))

    def transport(self, party: str) -> "InMemoryTransport":
        if party not in self.parties:
            raise KeyError(f"unknown party {party!r}; the network has {list(self.parties)}")
        return InMemoryTransport(self, party)

    def abort(self, reason: str) -> None:
        if not self._abort.is_set():
            self.abort_reason = reason
            self._abort.set()

    def reset(self) -> None:
        """Clear an abort and any stale messages before the next run."""
        self._abort.clear()
        self.abort_reason = ""
        self._threads = {}
        for q in self._queues.values():
            while not q.empty():
                q.get_nowait()


class InMemoryTransport(Transport):
    def __init__(self, network: InMemoryNetwork, party: str) -> None:
        self.network = network
        self.party = party

    def _queue(self, src: str, dst: str) -> queue.SimpleQueue:
        try:
            return self.network._queues[(src, dst)]
        except KeyError:
            raise PeerError(
                f"party {self.party!r} addressed unknown party {dst if src == self.party else src!r}; "
                f"the network has {list(self.network.parties)}"
            ) from None

    def send(self, peer: str, message: bytes) -> None:
        self._queue(self.party, peer).put(message)
        self.network.last_progress = time.monotonic()

    def recv(self, peer: str) -> bytes:
        q = self._queue(peer, self.party)
        network = self.network
        with network._lock:
            network._receiving[self.party] += 1
        try:
            return self._recv(peer, q)
        finally:
            with network._lock:
                network._receiving[self.party] -= 1

    def _recv(self, peer: str, q: queue.SimpleQueue) -> bytes:
        network = self.network
        start = time.monotonic()
        while True:
            if network._abort.is_set():
                raise PeerError(f"party {self.party!r} stopped: {network.abort_reason}")
            try:
                message = q.get(timeout=0.05)
            except queue.Empty:
                quiet_s = time.monotonic() - max(start, network.last_progress)
                if quiet_s > network.timeout_s and not network.working(but=self.party):
                    raise PeerError(
                        f"party {self.party!r} waited {network.timeout_s:g} s for party "
                        f"{peer!r}, which sent nothing: it is dead or stuck"
                    ) from None
            else:
                network.last_progress = time.monotonic()
                return message


@dataclass
class CommStats:
    """Bytes sent and rounds, per party and per op label."""

    bytes_sent: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    rounds: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, party: str, label: str, nbytes: int, rounds: int) -> None:
        with self.lock:
            self.bytes_sent[party][label] += nbytes
            self.rounds[party][label] += rounds

    def total_bytes(self, party: str, exclude: tuple[str, ...] = ()) -> int:
        return sum(v for k, v in self.bytes_sent.get(party, {}).items() if not k.startswith(exclude))

    def total_rounds(self, party: str, exclude: tuple[str, ...] = ()) -> int:
        return sum(v for k, v in self.rounds.get(party, {}).items() if not k.startswith(exclude))

    def snapshot(self) -> dict[str, dict[str, tuple[int, int]]]:
        """party -> label -> (bytes, rounds), as plain dicts."""
        with self.lock:
            out: dict[str, dict[str, tuple[int, int]]] = {}
            for party in set(self.bytes_sent) | set(self.rounds):
                labels = set(self.bytes_sent.get(party, {})) | set(self.rounds.get(party, {}))
                out[party] = {
                    lb: (self.bytes_sent[party][lb], self.rounds[party][lb]) for lb in sorted(labels)
                }
            return out

    def groups(self, party: str) -> dict[str, tuple[int, int]]:
        """label group -> (bytes, rounds) for ``party``; a group is a label's first part (the
        node, or ``share``/``reveal``/``setup``: ``dense_1/relu/compare`` -> ``dense_1``,
        ``share:x`` -> ``share``), most bytes first."""
        out: dict[str, list[int]] = {}
        for label, (nbytes, rounds) in self.snapshot().get(party, {}).items():
            total = out.setdefault(label.split("/", 1)[0].split(":", 1)[0], [0, 0])
            total[0] += nbytes
            total[1] += rounds
        return {g: (b, r) for g, (b, r) in sorted(out.items(), key=lambda item: (-item[1][0], item[0]))}

    def summary(self) -> str:
        """A small table per party: bytes and rounds in total and by label group."""
        parties = sorted(self.snapshot())
        if not parties:
            return "CommStats: no traffic"
        lines = [f"CommStats: {len(parties)} part{'y' if len(parties) == 1 else 'ies'}"]
        for party in parties:
            groups = self.groups(party)
            rows = [(g, f"{b:,}", f"{r:,}") for g, (b, r) in groups.items()]
            rows.append(("total", f"{sum(b for b, _ in groups.values()):,}", f"{sum(r for _, r in groups.values()):,}"))
            widths = [max(len(row[i]) for row in [("group", "bytes", "rounds"), *rows]) for i in range(3)]
            lines.append(f"{party}:")
            for i, (group, nbytes, rounds) in enumerate([("group", "bytes", "rounds"), *rows]):
                if i == len(rows):
                    lines.append("  " + "  ".join("-" * w for w in widths))
                lines.append(f"  {group:<{widths[0]}}  {nbytes:>{widths[1]}}  {rounds:>{widths[2]}}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def since(self, before: dict[str, dict[str, tuple[int, int]]]) -> "CommStats":
        """A new CommStats holding what happened after ``before`` was taken."""
        delta = CommStats()
        for party, labels in self.snapshot().items():
            for label, (nb, nr) in labels.items():
                b0, r0 = before.get(party, {}).get(label, (0, 0))
                if nb - b0 or nr - r0:
                    delta.add(party, label, nb - b0, nr - r0)
        return delta


class Messenger:
    """A party's framed, counted view of its transport."""

    def __init__(self, transport: Transport, stats: CommStats) -> None:
        self.transport = transport
        self.party = transport.party
        self.stats = stats
        self._labels: list[str] = []

    @contextmanager
    def label(self, name: str) -> Iterator[None]:
        """Attribute the traffic inside to ``name`` (nested labels join with '/')."""
        self._labels.append(name)
        try:
            yield
        finally:
            self._labels.pop()

    @property
    def current_label(self) -> str:
        return "/".join(self._labels) or "other"

    def _send(self, peer: str, frame: bytes) -> None:
        self.transport.send(peer, frame)

    def _recv_frame(self, peer: str) -> bytes:
        return self.transport.recv(peer)

    def send(self, peer: str, array: np.ndarray, bits: int = 64) -> None:
        """One-way send; counts a round for the sender."""
        frame = wire.encode_frame(array, bits)
        self._send(peer, frame)
        self.stats.add(self.party, self.current_label, len(frame) - self._header(array), 1)

    def send_many(self, peers: list[str] | tuple[str, ...], arrays: list[np.ndarray], bits: int = 64) -> None:
        """Different tensors to several peers in one round."""
        nbytes = 0
        for peer, array in zip(peers, arrays, strict=True):
            frame = wire.encode_frame(array, bits)
            self._send(peer, frame)
            nbytes += len(frame) - self._header(array)
        self.stats.add(self.party, self.current_label, nbytes, 1)

    def recv(self, peer: str) -> np.ndarray:
        frame = self._recv_frame(peer)
        try:
            return wire.decode_frame(frame)
        except Exception as exc:  # whatever a peer's bytes trip, it is that peer's fault: say so
            raise PeerError(f"party {self.party!r} rejected a message from {peer!r}: {exc}") from exc

    def exchange(self, peer: str, arrays: list[np.ndarray], bits: list[int] | None = None) -> list[np.ndarray]:
        """Send tensors to ``peer`` and receive as many back: one round for both sides."""
        bits = bits or [64] * len(arrays)
        nbytes = 0
        for array, b in zip(arrays, bits, strict=True):
            frame = wire.encode_frame(array, b)
            self._send(peer, frame)
            nbytes += len(frame) - self._header(array)
        self.stats.add(self.party, self.current_label, nbytes, 1)
        return [self.recv(peer) for _ in arrays]

    def send_bytes(self, peer: str, data: bytes) -> None:
        """Setup/control data (seeds); counted under its label but not as a protocol round."""
        self._send(peer, wire.encode_bytes(data))
        self.stats.add(self.party, self.current_label, len(data), 0)

    def recv_bytes(self, peer: str) -> bytes:
        frame = self._recv_frame(peer)
        try:
            return wire.decode_bytes(frame)
        except Exception as exc:  # whatever a peer's bytes trip, it is that peer's fault: say so
            raise PeerError(f"party {self.party!r} rejected a message from {peer!r}: {exc}") from exc

    @staticmethod
    def _header(array: np.ndarray) -> int:
        """Frame overhead, not counted: bytes are the payload, as CrypTen counts them."""
        return 5 + 8 * np.ndim(array)
