"""Secure aggregation: clients secret-share their updates to two aggregators; only the sum is revealed.

Written once against ``RingKernels``: the aggregators add shares with the selected
backend's kernels (``get_backend(name).make_kernels()``), so torch-spdz sums with
PyTorch and tf-pond with TensorFlow.  Parties: every client, the backend's two
compute parties acting as aggregators A0 and A1, and the model owner O.  A sum
needs no correlated randomness, so there is no dealer.

Protocol, per round, for clients i = 1..m with fixed-point vectors x_i of length L
(additive shares in Z_2^64, [x] = (x^0, x^1), x = x^0 + x^1):

1. Client i encodes x_i (refusing NaN/inf, and any |v| >= 2^(63-f) / m so that the
   sum of m vectors cannot wrap), draws r_i from a fresh CSPRNG and sends
   x_i^0 = r_i to A0, then x_i^1 = x_i - r_i to A1.  Each share alone is uniform.
   A client without an update withdraws with an empty share to each; a share of
   any length but L is discarded like a missing one.
2. Each aggregator waits (at most ``share_timeout_s`` per client) for every
   client's share and notes whom it heard from.  Its peer and the owner wait for
   it patiently (up to m + 2 timeouts), since it may be waiting out absent clients.
3. A0 and A1 exchange those bitmaps (one round) and keep I = the clients whose
   *both* shares arrived.  A client that died between its two sends has left a
   share at one aggregator only; that share is discarded, never summed, so a
   partial share can neither corrupt nor reveal anything.
4. If |I| < ``min_clients`` the aggregators stop: nothing is revealed.
   Otherwise A_j computes s^j = sum_{i in I} x_i^j and, with differential privacy
   on, adds its own noise share e^j ~ N(0, sigma^2 / 2) (from the CSPRNG) to the
   noised slice, so that the revealed sum carries N(0, sigma^2) and neither the
   owner nor any single aggregator ever holds the exact sum.
5. A_j sends the bitmap of I and s^j to O (one round); O checks that the bitmaps
   agree and opens s = s^0 + s^1.

Cost: each client sends 8 L bytes to each aggregator (two one-way sends).  Each
aggregator sends ceil(m / 8) bytes to its peer and 8 (m + L) bytes to O: 2 rounds.
Error: each client's rounding adds at most 2^-(f+1) per entry, so the revealed sum
is within m 2^-(f+1) of the exact one (f = ``Numerics.frac_bits``).

With noise on, a corrupted aggregator that colludes with the owner can subtract its
own noise share: against that coalition the noise multiplier is sigma / sqrt(2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

import numpy as np

from bridge.federated.aggregate import Aggregate, FailureInjector, NoiseSpec, TooFewClientsError, dropped_clause
from bridge.federated.dp import csprng_gaussian
from bridge.ir import Numerics
from bridge.mpc import protocol as P
from bridge.mpc.comm import PeerError
from bridge.mpc.fixedpoint import FixedPointError, decode, encode
from bridge.mpc.kernels import RingKernels
from bridge.mpc.party import PartyContext
from bridge.mpc.prg import Prg, fresh_seed
from bridge.mpc.runtime import ThreadedParties

AGGREGATORS = ("aggregator0", "aggregator1")
MODEL_OWNER = "model_owner"
#: a sum needs no correlated randomness: the dealer slot names no party of the network,
#: so any attempt to use a dealer fails loudly (unknown party) instead of silently.
NO_DEALER = "(no dealer)"

SHARE_LABEL = "share:update"
AGREE_LABEL = "agree"
REVEAL_LABEL = "reveal:aggregate"


@dataclass(frozen=True)
class AggregationParties:
    """Who plays which part: the two aggregators, the model owner, and each client's network name.

    In one process (the default) the names are fixed and clients are ``client:NAME``; with one
    process per party (``bridge.federated.distributed``) they are the cluster's party names.
    """

    aggregators: tuple[str, str] = AGGREGATORS
    owner: str = MODEL_OWNER
    client_prefix: str = "client:"

    def client(self, name: str) -> str:
        return f"{self.client_prefix}{name}"


IN_PROCESS = AggregationParties()


def client_party(client: str) -> str:
    """The in-process network name of a client, kept apart from the aggregators' and the owner's names."""
    return IN_PROCESS.client(client)


def encode_update(client: str, vector: np.ndarray, participants: int, numerics: Numerics) -> np.ndarray:
    """Client-side: the fixed-point encoding of ``vector``, refused if a sum of ``participants`` could wrap."""
    array = np.asarray(vector, dtype=np.float64)
    limit = numerics.max_abs_value / max(participants, 1)
    peak = float(np.max(np.abs(array))) if array.size and np.all(np.isfinite(array)) else 0.0
    if peak >= limit:
        raise FixedPointError(
            f"client {client!r}'s weighted update has an entry of magnitude {peak:g}; a sum of "
            f"{participants} such updates must stay below 2^{numerics.ring_bits - 1 - numerics.frac_bits} "
            f"(frac_bits={numerics.frac_bits}), so each entry must be below {limit:g}. "
            "Lower Numerics.frac_bits, clip updates (clip_norm=...), or lower the learning rate."
        )
    return encode(array, numerics, f"client {client!r}'s update")


class SecureAggregator:
    """Secure sum over the selected backend's ring kernels (see the module docstring)."""

    secure = True

    def __init__(
        self,
        kernels: RingKernels,
        clients: Sequence[str],
        numerics: Numerics | None = None,
        *,
        share_timeout_s: float = 30.0,
    ) -> None:
        self.kernels = kernels
        self.numerics = numerics or Numerics()
        self.clients = tuple(clients)
        self.share_timeout_s = float(share_timeout_s)
        names = (*(client_party(c) for c in self.clients), *AGGREGATORS, MODEL_OWNER)
        self.parties = ThreadedParties(names, kernels, self.numerics, AGGREGATORS, NO_DEALER, self.share_timeout_s)

    def aggregate(
        self,
        round_index: int,
        vectors: Mapping[str, np.ndarray],
        *,
        noise: NoiseSpec | None = None,
        min_clients: int = 1,
        failure_injector: FailureInjector | None = None,
    ) -> Aggregate:
        unknown = sorted(set(vectors) - set(self.clients))
        if unknown:
            raise KeyError(f"clients {unknown} are not part of this aggregation; it was set up for {list(self.clients)}")
        dropped: dict[str, str] = {}
        encoded: dict[str, np.ndarray] = {}
        for client, vector in vectors.items():
            try:
                encoded[client] = encode_update(client, vector, len(vectors), self.numerics)
            except FixedPointError as exc:
                dropped[client] = f"update not representable in fixed point: {exc}"
        roster = tuple(encoded)
        if len(roster) < min_clients:
            raise TooFewClientsError(_too_few(round_index, len(roster), min_clients, dropped))
        length = len(next(iter(encoded.values())))

        def body(ctx: PartyContext) -> Any:
            if ctx.name == MODEL_OWNER:
                return owner_part(ctx, len(roster), min_clients, IN_PROCESS)
            if ctx.is_compute:
                return aggregator_part(ctx, roster, length, min_clients, noise, IN_PROCESS)
            client = ctx.name.removeprefix(IN_PROCESS.client_prefix)
            return client_part(ctx, round_index, client, encoded[client], failure_injector, IN_PROCESS)

        before = self.parties.stats.snapshot()
        results = self.parties.run(body, (*(client_party(c) for c in roster), *AGGREGATORS, MODEL_OWNER))
        stats = self.parties.stats.since(before)
        included_mask, total = results[MODEL_OWNER]
        included = tuple(c for c, keep in zip(roster, included_mask, strict=True) if keep)
        for client in roster:
            if client in included:
                continue
            crash = results[client_party(client)]
            heard = [a for a in AGGREGATORS if client in results[a]]
            if crash:
                dropped[client] = f"failed while sharing ({crash}); its partial share was discarded"
            else:
                missing = [a for a in AGGREGATORS if a not in heard]
                dropped[client] = f"its share did not reach {missing} within {self.share_timeout_s:g} s; discarded"
        if total is None:
            raise TooFewClientsError(_too_few(round_index, len(included), min_clients, dropped))
        return Aggregate(
            total=total,
            included=included,
            dropped=dropped,
            bytes_per_aggregator=max(stats.total_bytes(a) for a in AGGREGATORS),
            rounds=max(stats.total_rounds(a) for a in AGGREGATORS),
            upload_bytes=sum(stats.total_bytes(client_party(c)) for c in roster),
        )


def _too_few(round_index: int, count: int, min_clients: int, dropped: Mapping[str, str]) -> str:
    return (
        f"round {round_index + 1}: only {count} client update(s) can be aggregated, fewer than "
        f"min_clients={min_clients}; nothing was revealed.{dropped_clause(dropped)} "
        "Fix the failing clients, or lower min_clients."
    )


def client_part(
    ctx: PartyContext,
    round_index: int,
    client: str,
    encoded: np.ndarray | None,
    injector: FailureInjector | None,
    parties: AggregationParties,
) -> str:
    """Step 1: share x_i; returns "" or why the client stopped between its two sends.

    ``encoded=None``: the client has no update this round (its local training failed):
    it withdraws by sending each aggregator an empty share, so that neither waits for it.
    """
    first, second = parties.aggregators
    with ctx.messenger.label(SHARE_LABEL):
        if encoded is None:
            ctx.messenger.send_many([first, second], [np.zeros(0, np.int64)] * 2)
            return ""
        mask = Prg(fresh_seed()).ring(encoded.shape)
        with np.errstate(over="ignore"):
            other = encoded - mask
        ctx.messenger.send_many([first], [mask])
        if injector is not None:
            try:
                injector(round_index, client, "mid_share")
            except Exception as exc:  # noqa: BLE001 - a crashed client must not stop the others
                return f"{type(exc).__name__}: {exc}"
        ctx.messenger.send_many([second], [other])
    return ""


def aggregator_part(
    ctx: PartyContext,
    roster: tuple[str, ...],
    length: int,
    min_clients: int,
    noise: NoiseSpec | None,
    parties: AggregationParties,
) -> dict[str, None]:
    """Steps 2-5 at aggregator A_j; returns the clients it heard from.

    ``noise`` is the noise the revealed sum must carry; each aggregator adds half its variance.

    A share that is not a vector of ``length`` ring elements (a withdrawal, or a
    malformed message) counts as not heard: it is discarded, never summed.
    """
    k = ctx.kernels
    received: dict[str, P.Shared] = {}
    with ctx.messenger.label(SHARE_LABEL):
        for client in roster:
            try:
                share = ctx.messenger.recv(parties.client(client))
            except PeerError:
                continue
            if share.shape == (length,):
                received[client] = P.Shared(k.from_numpy(share))
    heard = np.array([c in received for c in roster], dtype=np.int64)
    with ctx.messenger.label(AGREE_LABEL):
        ctx.messenger.send(ctx.peer, heard, bits=1)
        theirs = recv_patiently(ctx, ctx.peer, len(roster) + 1)
    if theirs.shape != heard.shape:
        raise PeerError(f"aggregator {ctx.peer!r} sent a bitmap of {theirs.shape} for {len(roster)} clients")
    both = heard & theirs
    with ctx.messenger.label(REVEAL_LABEL):
        if int(both.sum()) < min_clients:
            ctx.messenger.send(parties.owner, both)
            return dict.fromkeys(received)
        parts = [received[c] for c, keep in zip(roster, both, strict=True) if keep]
        total = reduce(lambda a, b: P.add(ctx, a, b), parts)
        if noise is not None and noise.std > 0 and noise.length > 0:
            mine = np.zeros(length)
            mine[: noise.length] = csprng_gaussian((noise.length,), noise.std / np.sqrt(2.0))
            total = P.add(ctx, total, P.Shared(k.from_numpy(encode(mine, ctx.numerics, "aggregation noise"))))
        ctx.messenger.send_many([parties.owner, parties.owner], [both, k.to_numpy(total.share)])
    return dict.fromkeys(received)


def recv_patiently(ctx: PartyContext, peer: str, timeouts: int) -> np.ndarray:
    """Receive from ``peer``, which may itself be waiting out up to ``timeouts - 1`` share timeouts.

    An aborted network raises at once on every attempt, so this only ever waits
    longer for a peer that is legitimately waiting on absent clients.
    """
    for _ in range(timeouts - 1):
        try:
            return ctx.messenger.recv(peer)
        except PeerError:
            continue
    return ctx.messenger.recv(peer)


def owner_part(
    ctx: PartyContext, roster_size: int, min_clients: int, parties: AggregationParties
) -> tuple[np.ndarray, np.ndarray | None]:
    """Step 5 at the model owner: the included bitmap, and the opened sum (None if too few)."""
    masks = [recv_patiently(ctx, a, roster_size + 2) for a in parties.aggregators]
    if masks[0].shape != (roster_size,) or not np.array_equal(masks[0], masks[1]):
        raise PeerError(
            f"the aggregators disagree on which clients are included ({masks[0].tolist()} vs "
            f"{masks[1].tolist()}); refusing to open the sum"
        )
    if int(masks[0].sum()) < min_clients:
        return masks[0], None
    shares = [ctx.messenger.recv(a) for a in parties.aggregators]
    if shares[0].shape != shares[1].shape:
        raise PeerError(f"the aggregators' shares of the sum differ in shape ({shares[0].shape} vs {shares[1].shape})")
    with np.errstate(over="ignore"):
        total = shares[0] + shares[1]
    return masks[0], decode(total, ctx.numerics)
