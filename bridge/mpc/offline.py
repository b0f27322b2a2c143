"""The offline phase: the dealer's correlated randomness made before the query, as SPDZ's
preprocessing makes it, so that a run does only the online work.

Slots.  The material of a query is drawn from a *slot*'s streams, not from the run's:
slot (bucket, n) is the n-th query of ``bucket`` rows (the batch actually run) that an
executable, or a serving formation, starts.  Every party fixes the slot before the run
from public facts alone (the batch size and its own count of earlier slots, advanced for
every query whether it succeeds or not), so the parties agree on it without a message.
A slot's stream is 2^63 + bucket * 2^32 + n of every dealer seed: disjoint from the run
streams (the run index, below 2^63) and from every other slot, so no two runs ever draw
the same material, and material made for a slot is consumed by that slot's run only
(``MaterialPool.take`` hands each out once; a pooled slot the count has passed is
dropped, never reused).  A run that fails part-way leaves every count in step: the next
query takes the next slot.

What is made ahead, per party:

* the **dealer** runs its whole part of the query on zero placeholders (as it does online:
  its part depends on no data, only on shapes): triples, truncation and comparison masks,
  bit-decomposition and range-check material, and the correction shares c1 = c - c0 it
  owes P1.  The messages are recorded (``RecordingMessenger``), not sent; online the
  dealer only sends them, under the same traffic labels, and computes nothing.
* a **compute party** draws its seed-derived tensors (r_i, c0, its bit shares) in the
  order the query asks for them.  The order and shapes (the *trace*, public) come from a
  dry run of the dealer's code on placeholders with throwaway seeds, once per bucket.
  Online each request takes the next tensor, checked against the request.  P1's
  corrections still come from the dealer during the run.

Material not made in time is drawn inline from the same slot streams (the same secure
material, only later) and counted as ``inline``; there is no other fallback.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bridge.mpc import wire
from bridge.mpc.comm import CommStats, Messenger, Transport
from bridge.mpc.kernels import RingKernels, Tensor
from bridge.mpc.party import PartyContext, Request
from bridge.mpc.prg import fresh_seed
from bridge.mpc.protocol import Masked, Shared

#: slot streams live above every run stream
SLOT_BASE = 1 << 63
MAX_BUCKET = (1 << 31) - 1
MAX_SLOT = (1 << 32) - 1

#: a region of a run: (context, its inputs' shares) -> result (None in the dealer)
Body = Callable[[PartyContext, Mapping[str, Shared]], Any]


class OfflineError(RuntimeError):
    """The offline phase was asked for something its design rules out."""


@dataclass(frozen=True, order=True)
class SlotKey:
    """The n-th query of ``bucket`` rows."""

    bucket: int
    n: int

    @property
    def stream(self) -> int:
        if not 1 <= self.bucket <= MAX_BUCKET:
            raise OfflineError(f"a material bucket is a batch of 1 to {MAX_BUCKET} rows; received {self.bucket}")
        if not 0 <= self.n <= MAX_SLOT:
            raise OfflineError(f"slot {self.n} of bucket {self.bucket} is past the last ({MAX_SLOT}); prepare again")
        return SLOT_BASE + (self.bucket << 32) + self.n


class SlotCounter:
    """The next slot per bucket: every party advances it for every query it starts."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}
        self._lock = threading.Lock()

    def next(self, bucket: int) -> SlotKey:
        with self._lock:
            n = self._next.get(bucket, 0)
            self._next[bucket] = n + 1
        return SlotKey(int(bucket), n)

    def peek(self, bucket: int) -> int:
        with self._lock:
            return self._next.get(bucket, 0)


# -- the dealer: its part recorded, replayed online ------------------------------------------------

@dataclass(frozen=True)
class Sent:
    """One recorded message: its frame, where it goes, and how ``Messenger`` counts it."""

    peer: str
    frame: bytes
    label: str
    nbytes: int


class _NoTransport(Transport):
    def __init__(self, party: str) -> None:
        self.party = party

    def send(self, peer: str, message: bytes) -> None:  # pragma: no cover - RecordingMessenger never sends
        raise OfflineError("the offline phase sends nothing")

    def recv(self, peer: str) -> bytes:
        raise OfflineError(
            f"party {self.party!r} would receive from {peer!r} in the offline phase: this region of the run "
            "depends on other parties' messages, so its material cannot be made ahead"
        )


class RecordingMessenger(Messenger):
    """The dealer's messenger offline: one-way sends are written down in order; anything
    that needs an answer is refused (the dealer's part of a query never waits for one)."""

    def __init__(self, party: str) -> None:
        super().__init__(_NoTransport(party), CommStats())
        self.sent: list[Sent] = []

    def send(self, peer: str, array: np.ndarray, bits: int = 64) -> None:
        frame = wire.encode_frame(array, bits)
        self.sent.append(Sent(peer, frame, "/".join(self._labels), len(frame) - self._header(array)))

    def send_many(self, peers: Any, arrays: Any, bits: int = 64) -> None:
        raise OfflineError("the dealer's offline part sends to one party at a time")

    def exchange(self, peer: str, arrays: Any, bits: Any = None) -> list[np.ndarray]:
        raise OfflineError("the dealer opens nothing; an exchange cannot be made ahead")

    def send_bytes(self, peer: str, data: bytes) -> None:
        raise OfflineError("control data is online only")


@dataclass
class DealerMaterial:
    key: SlotKey
    sent: list[Sent]
    seconds: float

    @property
    def nbytes(self) -> int:
        return sum(len(s.frame) for s in self.sent)

    def replay(self, messenger: Messenger) -> None:
        """Send every recorded message, in order, counted as the inline run counts it."""
        prefix = "/".join(messenger._labels)
        for s in self.sent:
            label = "/".join(p for p in (prefix, s.label) if p) or "other"
            messenger._send(s.peer, s.frame)
            messenger.stats.add(messenger.party, label, s.nbytes, 1)


def _clone(ctx: PartyContext, name: str, messenger: Messenger, seeds: dict[str, bytes], stream: int) -> PartyContext:
    clone = PartyContext(name, ctx.kernels, ctx.numerics, messenger, ctx.compute, ctx.dealer)
    clone._seeds = dict(seeds)
    clone._prgs = clone.streams(stream)
    return clone


def placeholder_inputs(k: RingKernels, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Shared]:
    return {name: Shared(k.zeros(tuple(shape))) for name, shape in shapes.items()}


def make_dealer_material(ctx: PartyContext, key: SlotKey, body: Body, shapes: Mapping[str, tuple[int, ...]]) -> DealerMaterial:
    """The dealer's whole part of slot ``key``'s query, its messages recorded."""
    if not ctx.is_dealer:
        raise OfflineError(f"party {ctx.name!r} is not the dealer")
    start = time.perf_counter()
    recorder = RecordingMessenger(ctx.name)
    clone = _clone(ctx, ctx.name, recorder, ctx._seeds, key.stream)
    body(clone, placeholder_inputs(ctx.kernels, shapes))
    return DealerMaterial(key, recorder.sent, time.perf_counter() - start)


# -- the compute parties: their seed-derived tensors, drawn in the run's order ----------------------

def placeholder_params(k: RingKernels, params: Mapping[str, Any]) -> dict[str, Any]:
    """Zero tensors of the parameters' shapes, as the dealer holds them (a dry run sees no share)."""
    out: dict[str, Any] = {}
    for name, p in params.items():
        if isinstance(p, Masked):
            shape = k.shape(p.value.share)
            out[name] = Masked(Shared(k.zeros(shape)), k.zeros(shape), k.zeros(shape))
        elif isinstance(p, Shared):
            out[name] = Shared(k.zeros(k.shape(p.share)))
        else:
            out[name] = p
    return out


def trace_requests(ctx: PartyContext, body: Body, shapes: Mapping[str, tuple[int, ...]]) -> list[Request]:
    """The correlated-randomness requests of a query, in order: a dry run of the dealer's code
    on placeholders with throwaway seeds (the order and shapes are public, its values unused)."""
    throwaway = {party: fresh_seed() for party in ctx.compute}
    clone = _clone(ctx, ctx.dealer, RecordingMessenger(ctx.dealer), throwaway, 0)
    clone._trace = []
    body(clone, placeholder_inputs(ctx.kernels, shapes))
    return clone._trace


@dataclass
class PartyMaterial:
    """A compute party's seed-derived tensors of one slot (None where P1 receives instead)."""

    key: SlotKey
    requests: list[Request]
    tensors: list[Tensor | None]
    seconds: float

    def cursor(self) -> "MaterialCursor":
        return MaterialCursor(self)


def make_party_material(ctx: PartyContext, key: SlotKey, requests: list[Request]) -> PartyMaterial:
    if not ctx.is_compute:
        raise OfflineError(f"party {ctx.name!r} is not a compute party")
    start = time.perf_counter()
    clone = _clone(ctx, ctx.name, RecordingMessenger(ctx.name), ctx._seeds, key.stream)
    tensors = [clone.draw_own(r) for r in requests]
    return PartyMaterial(key, list(requests), tensors, time.perf_counter() - start)


class MaterialCursor:
    """Hands out one slot's tensors in order, each for the request it was drawn for."""

    def __init__(self, material: PartyMaterial) -> None:
        self.material = material
        self.at = 0

    def take(self, request: Request) -> Tensor | None:
        m = self.material
        if self.at >= len(m.requests) or m.requests[self.at] != request:
            expected = m.requests[self.at] if self.at < len(m.requests) else "nothing more"
            raise OfflineError(
                f"the query asked for correlated randomness {request} at step {self.at}, but the material of "
                f"slot {m.key} was made for {expected}: the program is not the one traced"
            )
        tensor = m.tensors[self.at]
        m.tensors[self.at] = None  # used once: drop it
        self.at += 1
        return tensor

    def finish(self) -> None:
        if self.at != len(self.material.requests):
            raise OfflineError(f"the query used {self.at} of the {len(self.material.requests)} requests traced "
                               f"for slot {self.material.key}: the program is not the one traced")


Material = DealerMaterial | PartyMaterial


# -- the pool ----------------------------------------------------------------------------------

@dataclass
class PoolCounts:
    """What happened to the material of the queries a pool served."""

    #: queries whose material was ready
    precomputed: int = 0
    #: queries that waited for the material being made for them
    waited: int = 0
    #: queries whose material was drawn inline (none made in time)
    inline: int = 0
    #: slots made
    made: int = 0
    #: made slots dropped unused (their count was passed: never used, never reused)
    dropped: int = 0
    #: seconds spent making material
    offline_s: float = 0.0


class MaterialPool:
    """A bounded store of one party's precomputed material, keyed by slot.

    ``want(bucket, depth)`` asks for ``depth`` slots of a bucket ahead of its count;
    ``fill()`` makes them now, ``start()`` keeps them made in a background thread.
    At most ``capacity`` slots are held, buckets filled fewest-ready first.  ``take(key)``
    hands a slot's material out once (or None: draw inline), waiting if it is being made.
    ``auto_depth`` > 0: every bucket a query takes is wanted that deep (serving).
    """

    def __init__(self, make: Callable[[SlotKey], Material], capacity: int = 8, auto_depth: int = 0,
                 name: str = "") -> None:
        if capacity < 0 or auto_depth < 0:
            raise ValueError(f"a pool's capacity and depth are 0 or more; received {capacity} and {auto_depth}")
        self.make, self.capacity, self.auto_depth, self.name = make, int(capacity), int(auto_depth), name
        self.counts = PoolCounts()
        self.error: str | None = None
        self._ready: dict[SlotKey, Material] = {}
        self._want: dict[int, int] = {}
        self._next: dict[int, int] = {}  # next slot to make, per bucket
        self._passed: dict[int, int] = {}  # slots below this were taken (or run inline)
        self._busy: SlotKey | None = None
        self._recent: deque[int] = deque(maxlen=64)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False

    # -- what to make -----------------------------------------------------------------------
    def want(self, bucket: int, depth: int) -> None:
        with self._cond:
            self._want[int(bucket)] = max(0, int(depth))
            self._cond.notify_all()

    def _first_free(self, bucket: int) -> int:
        return max(self._next.get(bucket, 0), self._passed.get(bucket, 0))

    def _choose(self) -> SlotKey | None:
        """The next slot to make: the wanted bucket with the fewest ready, recent ones first."""
        if self.error is not None or len(self._ready) + (self._busy is not None) >= self.capacity:
            return None
        ready = {b: 0 for b in self._want}
        for key in self._ready:
            if key.bucket in ready:
                ready[key.bucket] += 1
        short = [b for b, depth in self._want.items() if ready[b] < depth]
        if not short:
            return None
        recency = {b: i for i, b in enumerate(self._recent)}
        bucket = min(short, key=lambda b: (ready[b], -recency.get(b, -1)))
        key = SlotKey(bucket, self._first_free(bucket))
        self._next[bucket] = key.n + 1
        return key

    def _make_one(self, key: SlotKey) -> None:
        """Make ``key`` (``_busy`` is set, the lock is not held)."""
        try:
            material = self.make(key)
        except Exception as exc:  # noqa: BLE001 - the queries go on inline; the error is reported
            with self._cond:
                self.error = f"{type(exc).__name__}: {exc}"
                self._busy = None
                self._cond.notify_all()
            traceback.print_exc()
            return
        with self._cond:
            self._busy = None
            self.counts.made += 1
            self.counts.offline_s += material.seconds
            if key.n < self._passed.get(key.bucket, 0) or self._stop:
                self.counts.dropped += 1
            else:
                self._ready[key] = material
            self._cond.notify_all()

    def fill(self) -> float:
        """Make every wanted slot now, in this thread; returns the seconds it took."""
        start = time.perf_counter()
        while True:
            with self._cond:
                while self._busy is not None:  # the background thread is making one: let it finish
                    self._cond.wait()
                key = self._choose()
                if key is None:
                    break
                self._busy = key
            self._make_one(key)
        if self.error is not None:
            raise OfflineError(f"making material failed: {self.error}")
        return time.perf_counter() - start

    def start(self) -> None:
        """Keep the wanted slots made in a background thread (until ``stop``)."""
        with self._cond:
            if self._thread is not None:
                return
            self._stop = False
            self._thread = threading.Thread(target=self._work, name=f"offline-{self.name}", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                key = None
                while not self._stop and (self._busy is not None or (key := self._choose()) is None):
                    self._cond.wait(1.0)
                if self._stop:
                    return
                self._busy = key
            assert key is not None
            self._make_one(key)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._ready.clear()
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30.0)

    # -- the online side ----------------------------------------------------------------------
    def take(self, key: SlotKey) -> Material | None:
        """Slot ``key``'s material, once; None if it was not made in time (draw inline)."""
        with self._cond:
            self._recent.append(key.bucket)
            if self.auto_depth and self._want.get(key.bucket, 0) < self.auto_depth:
                self._want[key.bucket] = self.auto_depth
            waited = False
            while self._busy == key:
                waited = True
                self._cond.wait()
            material = self._ready.pop(key, None)
            self._passed[key.bucket] = max(self._passed.get(key.bucket, 0), key.n + 1)
            for stale in [k for k in self._ready if k.bucket == key.bucket and k.n < key.n]:
                del self._ready[stale]
                self.counts.dropped += 1
            if material is None:
                self.counts.inline += 1
            elif waited:
                self.counts.waited += 1
            else:
                self.counts.precomputed += 1
            self._cond.notify_all()
            return material

    def level(self) -> dict[int, int]:
        with self._cond:
            out: dict[int, int] = {}
            for key in self._ready:
                out[key.bucket] = out.get(key.bucket, 0) + 1
            return dict(sorted(out.items()))

    def snapshot(self) -> dict[str, Any]:
        """For an operator: the level (slots ready, per bucket), the capacity, the counts."""
        with self._cond:
            c = self.counts
            level: dict[str, int] = {}
            for key in sorted(self._ready):
                level[str(key.bucket)] = level.get(str(key.bucket), 0) + 1
            return {"ready": len(self._ready), "capacity": self.capacity, "by_batch": level,
                    "precomputed": c.precomputed, "waited": c.waited, "inline": c.inline, "made": c.made,
                    "dropped": c.dropped, "offline_s": c.offline_s, "error": self.error}


# -- a region of a run that uses a slot ---------------------------------------------------------------

@dataclass
class RegionOutcome:
    """How one party ran a slot: from precomputed material or inline."""

    key: SlotKey
    precomputed: bool
    extra: dict[str, Any] = field(default_factory=dict)


def run_slot(ctx: PartyContext, key: SlotKey, body: Body, inputs: Mapping[str, Shared],
             pool: MaterialPool | None) -> tuple[Any, RegionOutcome]:
    """``body(ctx, inputs)`` drawing slot ``key``'s material: precomputed if ``pool`` has it,
    inline otherwise.  The dealer's result is None (it holds placeholders only)."""
    material = pool.take(key) if pool is not None else None
    if ctx.is_dealer:
        if isinstance(material, DealerMaterial):
            material.replay(ctx.messenger)
            return None, RegionOutcome(key, True)
        with ctx.use_streams(ctx.streams(key.stream)):
            body(ctx, inputs)
        return None, RegionOutcome(key, False)
    cursor = material.cursor() if isinstance(material, PartyMaterial) else None
    with ctx.use_streams(ctx.streams(key.stream), cursor):
        result = body(ctx, inputs)
    if cursor is not None:
        cursor.finish()
    return result, RegionOutcome(key, cursor is not None)


class PartyOffline:
    """One party's offline phase for one prepared query ``body``: what it makes per slot
    (the dealer's recording, a compute party's tensors after a trace per bucket) and its pool."""

    def __init__(self, ctx: PartyContext, body: Body, dry_body: Body, input_shapes: Callable[[int], dict[str, tuple[int, ...]]],
                 capacity: int = 8, auto_depth: int = 0) -> None:
        """``body`` runs the query with this party's parameters; ``dry_body`` the same with
        placeholder parameters as the dealer holds them (for a compute party's trace);
        ``input_shapes(rows)`` the inputs' shapes for a batch of ``rows``."""
        self.ctx, self.body, self.dry_body, self.input_shapes = ctx, body, dry_body, input_shapes
        self._traces: dict[int, list[Request]] = {}
        self._trace_lock = threading.Lock()
        self.pool = MaterialPool(self._make, capacity=capacity, auto_depth=auto_depth, name=ctx.name)

    def _trace(self, bucket: int) -> list[Request]:
        with self._trace_lock:
            if bucket not in self._traces:
                self._traces[bucket] = trace_requests(self.ctx, self.dry_body, self.input_shapes(bucket))
            return self._traces[bucket]

    def _make(self, key: SlotKey) -> Material:
        if self.ctx.is_dealer:
            return make_dealer_material(self.ctx, key, self.body, self.input_shapes(key.bucket))
        start = time.perf_counter()
        requests = self._trace(key.bucket)
        material = make_party_material(self.ctx, key, requests)
        material.seconds = time.perf_counter() - start
        return material

    def run(self, key: SlotKey, inputs: Mapping[str, Shared]) -> tuple[Any, RegionOutcome]:
        return run_slot(self.ctx, key, self.body, inputs, self.pool)
