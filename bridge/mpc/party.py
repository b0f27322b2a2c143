"""One party's view of a protocol run: who it is, its kernels, its seeds, its messenger.

Protocols are written SPMD-style: every party runs the same function on its own
state.  The two compute parties hold shares; the dealer runs the same code on
zero placeholders (so every shape works out for free) and, at each step that
needs correlated randomness, produces it.  Input owners and output receivers
only take part in sharing and revealing.

Correlated randomness (the seeded dealer): at setup the dealer sends a fresh
32-byte seed to each compute party.  Every protocol run (``PartyRunner.run``) draws
from its own stream of each seed, numbered by the run (``begin_run``): a run that
fails part-way (a refused input, a dead peer) leaves the parties at different points
of that run's streams, and the next run starts every party at the same place.  A *random* correlated value r = r0 + r1
costs nothing: each compute party expands r_i from its seed and the dealer
expands both.  A *derived* value v = f(r, ...) costs one tensor, dealer -> party 1:
party 0 expands v0 from its seed and the dealer sends v1 = v - v0.

The offline phase (``bridge.mpc.offline``) makes this material before the query: a
region of a run may draw from a *material slot*'s streams instead of the run's
(``use_streams``), and a compute party may take its seed-derived tensors, drawn ahead
in the order the run asks for them, from a ``MaterialCursor`` (``_material``) instead
of drawing them on the spot.  Either way the values are the same CSPRNG output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from bridge.ir import Numerics
from bridge.mpc.comm import Messenger
from bridge.mpc.kernels import RingKernels, Tensor
from bridge.mpc.prg import Prg, fresh_seed

#: ``open`` mode for XOR-shared int64 words (64 bit-sliced bits each)
XOR_WORDS = 0

#: kinds of correlated-randomness requests, as a run's trace records them
RANDOM, RANDOM_BITS, DERIVED, DERIVED_BITS = "random", "random_bits", "derived", "derived_bits"
#: one request: (kind, shape, packed)
Request = tuple[str, tuple[int, ...], bool]
#: the key of the seed the two compute parties share (the dealer never sees it); no party
#: name can be empty, so it cannot collide with one
PAIR = ""


class MaterialSource(Protocol):
    """Precomputed seed-derived tensors of one run, taken in order (``bridge.mpc.offline``)."""

    def take(self, request: Request) -> Tensor | None: ...


@dataclass
class PartyContext:
    name: str
    kernels: RingKernels
    numerics: Numerics
    messenger: Messenger
    compute: tuple[str, str]
    dealer: str
    #: per-party long-lived protocol state (cached weight masks, ...), keyed by the caller
    store: dict[str, Any] = field(default_factory=dict)
    _prgs: dict[str, Prg] = field(default_factory=dict)
    _seeds: dict[str, bytes] = field(default_factory=dict)
    #: how many protocol runs this party has begun; every party counts every run
    run_index: int = 0
    #: precomputed material this region of a run takes its tensors from (None: draw now)
    _material: MaterialSource | None = None
    #: where the requests of a run are written down, if anywhere (the offline phase's trace)
    _trace: list[Request] | None = None

    # -- identity ---------------------------------------------------------------------
    @property
    def is_dealer(self) -> bool:
        return self.name == self.dealer

    @property
    def is_compute(self) -> bool:
        return self.name in self.compute

    @property
    def index(self) -> int:
        """0 or 1 for the compute parties."""
        return self.compute.index(self.name)

    @property
    def in_protocol(self) -> bool:
        """Compute parties and the dealer run the secure computation itself."""
        return self.is_compute or self.is_dealer

    @property
    def peer(self) -> str:
        return self.compute[1 - self.index]

    # -- setup ---------------------------------------------------------------------------
    def begin_run(self) -> None:
        """Start the next protocol run: every seed's stream for this run, from its start.

        The runners call it on every context they host before every run, also for the
        parties a run leaves out, so that all parties agree on the run index.
        """
        self.run_index += 1
        self._prgs = self.streams(self.run_index)

    def streams(self, stream: int) -> dict[str, Prg]:
        """This party's view of stream ``stream`` of every seed it holds."""
        return {party: Prg(seed, stream) for party, seed in self._seeds.items()}

    @contextmanager
    def use_streams(self, prgs: dict[str, Prg], material: MaterialSource | None = None) -> Iterator[None]:
        """Draw from ``prgs`` (a material slot's streams) and take precomputed tensors from
        ``material`` inside the block; the run's own streams afterwards."""
        saved, saved_material = self._prgs, self._material
        self._prgs, self._material = prgs, material
        try:
            yield
        finally:
            self._prgs, self._material = saved, saved_material

    def setup_seeds(self) -> None:
        """Dealer sends each compute party a fresh seed, and P0 sends P1 a fresh seed of
        theirs (``PAIR``, randomness the dealer must not know: the range check's zero test);
        others do nothing."""
        with self.messenger.label("setup"):
            if self.is_dealer:
                for party in self.compute:
                    seed = fresh_seed()
                    self.messenger.send_bytes(party, seed)
                    self._seeds[party] = seed
            elif self.is_compute:
                self._seeds[self.dealer] = self.messenger.recv_bytes(self.dealer)
                if self.index == 0:
                    self._seeds[PAIR] = fresh_seed()
                    self.messenger.send_bytes(self.peer, self._seeds[PAIR])
                else:
                    self._seeds[PAIR] = self.messenger.recv_bytes(self.peer)
        self._prgs = {party: Prg(seed, self.run_index) for party, seed in self._seeds.items()}

    # -- correlated randomness ---------------------------------------------------------------
    def _stream(self, party: str) -> Prg:
        return self._prgs[party if self.is_dealer else self.dealer]

    def draw_own(self, request: Request) -> Tensor | None:
        """A compute party's seed-derived part of ``request`` (None: P1's share of a derived
        value, which the dealer sends).  The offline phase calls it ahead of the run."""
        kind, shape, packed = request
        if kind in (DERIVED, DERIVED_BITS) and self.index == 1:
            return None
        stream = self._stream(self.name)
        if kind in (RANDOM, DERIVED) or packed:
            return self.kernels.from_numpy(stream.ring(shape))
        return self.kernels.from_numpy(stream.bits(shape))

    def _own(self, request: Request) -> Tensor | None:
        """``draw_own`` now, or the precomputed tensor for it (checked to be for this request)."""
        if self._trace is not None:
            self._trace.append(request)
        if self._material is not None:
            return self._material.take(request)
        return self.draw_own(request)

    def corr_random(self, shape: tuple[int, ...]) -> Tensor:
        """Random r in Z_2^64: compute party i gets r_i, the dealer gets r."""
        k = self.kernels
        shape = tuple(shape)
        if self.is_dealer:
            if self._trace is not None:
                self._trace.append((RANDOM, shape, False))
            return k.add(k.from_numpy(self._stream(self.compute[0]).ring(shape)),
                         k.from_numpy(self._stream(self.compute[1]).ring(shape)))
        return self._own((RANDOM, shape, False))  # type: ignore[return-value]

    def corr_random_bits(self, shape: tuple[int, ...], packed: bool = False) -> Tensor:
        """Random bits b = b0 xor b1: compute party i gets b_i, the dealer gets b.

        ``packed``: int64 words holding 64 random bits each (bit-sliced tensors).
        """
        k = self.kernels
        shape = tuple(shape)

        def draw(party: str) -> Tensor:
            stream = self._stream(party)
            return k.from_numpy(stream.ring(shape) if packed else stream.bits(shape))

        if self.is_dealer:
            if self._trace is not None:
                self._trace.append((RANDOM_BITS, shape, packed))
            return k.bit_xor(draw(self.compute[0]), draw(self.compute[1]))
        return self._own((RANDOM_BITS, shape, packed))  # type: ignore[return-value]

    def corr_derived(self, plain: Callable[[], Tensor], shape: tuple[int, ...]) -> Tensor:
        """Arithmetic shares of a value only the dealer can compute (e.g. c = a*b)."""
        k = self.kernels
        shape = tuple(shape)
        if self.is_dealer:
            if self._trace is not None:
                self._trace.append((DERIVED, shape, False))
            value = plain()
            share0 = k.from_numpy(self._stream(self.compute[0]).ring(shape))
            self.messenger.send(self.compute[1], k.to_numpy(k.sub(value, share0)))
            return value
        mine = self._own((DERIVED, shape, False))
        if mine is not None:
            return mine
        return k.from_numpy(self.messenger.recv(self.dealer))

    def corr_derived_mod(self, plain: Callable[[], np.ndarray], shape: tuple[int, ...], modulus: int) -> np.ndarray:
        """Shares modulo ``modulus`` (< 2^32) of dealer-computed values in [0, modulus), as
        numpy int64.  P0's share is ``uniform_mod`` of two of its seed's words per element
        (drawn as a derived request of shape + (2,), so the offline phase makes it ahead);
        the dealer sends P1 value - share0 mod ``modulus`` in 32-bit words."""
        shape, wide = tuple(shape), tuple(shape) + (2,)
        if self.is_dealer:
            if self._trace is not None:
                self._trace.append((DERIVED, wide, False))
            value = np.asarray(plain(), dtype=np.int64)
            share0 = uniform_mod(self._stream(self.compute[0]).ring(wide), modulus)
            self.messenger.send(self.compute[1], (value - share0) % modulus, bits=32)
            return value
        mine = self._own((DERIVED, wide, False))
        if mine is not None:
            return uniform_mod(self.kernels.to_numpy(mine), modulus)
        return np.asarray(self.messenger.recv(self.dealer), dtype=np.int64) % modulus

    def pair_random_mod(self, shape: tuple[int, ...], modulus: int) -> np.ndarray:
        """Values uniform in [1, modulus) that both compute parties draw alike from their
        ``PAIR`` seed's stream of this run (or slot); the dealer holds none."""
        if not self.is_compute:
            raise RuntimeError(f"party {self.name!r} holds no compute-pair seed")
        return 1 + uniform_mod(self._prgs[PAIR].ring(tuple(shape) + (2,)), modulus - 1)

    def corr_derived_bits(self, plain: Callable[[], Tensor], shape: tuple[int, ...], packed: bool = False) -> Tensor:
        """XOR shares of dealer-computed bits (0/1 values, or 64 per word if ``packed``)."""
        k = self.kernels
        shape = tuple(shape)
        if self.is_dealer:
            if self._trace is not None:
                self._trace.append((DERIVED_BITS, shape, packed))
            value = plain()
            stream = self._stream(self.compute[0])
            share0 = k.from_numpy(stream.ring(shape) if packed else stream.bits(shape))
            self.messenger.send(self.compute[1], k.to_numpy(k.bit_xor(value, share0)), bits=64 if packed else 1)
            return value
        mine = self._own((DERIVED_BITS, shape, packed))
        if mine is not None:
            return mine
        return k.from_numpy(self.messenger.recv(self.dealer))

    # -- opening between the compute parties --------------------------------------------
    def open(self, shares: list[Tensor], bits: list[int] | None = None) -> list[Tensor]:
        """Reveal values to both compute parties (one round).  The dealer gets zeros.

        ``bits`` gives each value's ring: 64 for Z_2^64, k for Z_2^k (sent in k bits,
        result reduced mod 2^k), 1 for XOR-shared 0/1 bits (sent packed), and
        ``XOR_WORDS`` (0) for XOR-shared int64 words of 64 packed bits.
        """
        k = self.kernels
        bits = bits or [64] * len(shares)
        if self.is_dealer:
            return [k.zeros(k.shape(s)) for s in shares]
        wire_bits = [64 if b == XOR_WORDS else b for b in bits]
        theirs = self.messenger.exchange(self.peer, [k.to_numpy(s) for s in shares], wire_bits)
        out = []
        for mine, other, b in zip(shares, theirs, bits, strict=True):
            other_t = k.from_numpy(other)
            if b in (1, XOR_WORDS):
                out.append(k.bit_xor(mine, other_t))
            elif b == 64:
                out.append(k.add(mine, other_t))
            else:
                out.append(k.bit_and(k.add(mine, other_t), k.constant((1 << b) - 1)))
        return out

    def public(self, array: np.ndarray) -> Tensor:
        return self.kernels.from_numpy(np.asarray(array, dtype=np.int64))


def uniform_mod(words: np.ndarray, modulus: int) -> np.ndarray:
    """Elements uniform in [0, modulus) (modulus < 2^32) from pairs of uniform 64-bit words on
    the last axis: (w0 * 2^64 + w1) mod modulus, within modulus / 2^128 of uniform."""
    if not 1 < modulus < 1 << 32:
        raise ValueError(f"modulus must be in (1, 2^32); received {modulus}")
    w = np.asarray(words).view(np.uint64)
    m = np.uint64(modulus)
    high, low = w[..., 0] % m, w[..., 1] % m
    wrap = np.uint64((1 << 64) % modulus)
    return ((high * wrap % m + low) % m).astype(np.int64)
