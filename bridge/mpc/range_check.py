"""Secure range checks: no fixed-point overflow or truncation failure goes unnoticed.

Fixed point in Z_2^64 fails silently in two ways.  A product whose magnitude passes
2^(63 - 2f) wraps the ring (a large input, or a diverging model), and SecureML's local
truncation is wrong by about 2^(64 - 2f) = 2^32 (real units, f = 16) with probability
about |v| / 2^63 per truncated value v (ring units).  Both leave values far outside any
sensible range, so a comparison against a bound B well below 2^31 sees them:

  1. [B - |x| >= 0] per element where x feeds a ReLU (|x| = 2 ReLU(x) - x, exact and
     local), [x + B >= 0] and [B - x >= 0] elsewhere: all in one comparison call, always
     on the full 64 bits (a wrapped value can lie anywhere in the ring, so a comparison
     modulo 2^k with k < 64 would miss it);
  2. the bits become arithmetic (one round, 1 bit per element) and are summed per
     checked tensor into its count of violations v_l, locally;
  3. [v_l >= 1] is compared (4 rounds) and revealed: one bit per checked tensor.
Serving (``overflow_tests``/``reveal_flags``) replaces 2 and 3 by a zero test of v_l in
one round: the bits become shares modulo a prime p of r_l v_l (r_l the dealer's random
non-zero multiplier), the compute parties multiply by t_l (non-zero, from a seed the
dealer does not hold), and t_l r_l v_l mod p is revealed: 0 if v_l = 0, else uniform over
the non-zero residues.  Step 1 (4 rounds) + 1 round + the reveal: 6 rounds, was 11.
Past ``CHECK_CHUNK`` comparisons, step 1 and 2 run chunk by chunk (5 more rounds per chunk
after the first; the same bytes but for rounding each chunk to whole 64-bit words).
A value below B is never flagged; a truncation failure always is (2^32 - B > B); a
wrapped value escapes with probability 2 B 2^f / 2^64 per element.  Who learns the
bits learns that an overflow happened, in which layer, and nothing else.

Grouped check (serving, ``group`` > 1).  Where a value is known to be non-negative when
nothing failed — |x| of a ReLU-fed x, the average pool of a ReLU output — step 1 compares
the sums S of ``group`` consecutive elements instead of the elements: [S >= 0] and
[B - S >= 0], two comparisons per group.  Every term is >= 0, so S <= B still
guarantees |x| <= B for each element; a truncation failure moves S by about 2^32 and a
wrapped element makes S pseudo-random, both flagged (two failures cancelling in one
group has probability about p^2).  The price: honest activations must keep their sums
over ``group`` elements below B (a mean |x| below 2^16 for B = 2^20, group = 16).

Training (``bridge.mpc.training``) runs the check after every forward pass and stops;
serving (``bridge.mpc.session``) runs it on every query, reruns a flagged query once
with fresh randomness (a truncation failure does not repeat) and refuses the input
when the flag comes back (an overflow does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from bridge.ir import Program
from bridge.mpc.compare import Bits, ge_zero
from bridge.mpc.party import PartyContext, uniform_mod
from bridge.mpc.protocol import Shared, add_public

#: op kinds whose output never leaves the range of their input and needs no truncation:
#: re-arrangements, selections and ReLU.  Every other op's output is checked in serving.
RANGE_PRESERVING_KINDS = frozenset({"flatten", "reshape", "identity", "relu", "max_pool2d"})
#: serving's default bound on |activation|: far above what trained networks produce, far
#: below the 2^32 of a truncation failure
DEFAULT_SERVING_BOUND = float(2**20)


class FixedPointOverflowError(ArithmeticError):
    """A value left the fixed-point range: the answer would have been wrong."""


def max_bound(frac_bits: int) -> float:
    """The largest bound for which a flagged value cannot have wrapped the ring already."""
    return 2.0 ** (62 - 2 * frac_bits)


def check_bound(bound: float, frac_bits: int) -> float:
    limit = max_bound(frac_bits)
    if not 0 < bound < limit:
        raise ValueError(
            f"overflow_bound must be in (0, 2^{62 - 2 * frac_bits}) so that a flagged value cannot have "
            f"wrapped the ring; received {bound}"
        )
    return float(bound)


def bits_to_arith(ctx: PartyContext, b: Bits) -> Shared:
    """[b] in Z_2^64 (integer 0/1) from XOR-shared bits, in one round (the second half of
    ``mul_bit``): the dealer gives a random bit s as XOR and arithmetic shares; open
    d = b xor s (1 bit per element); [b] = d + (1 - 2d) [s].  Dealer -> P1: 8 bytes per element."""
    k = ctx.kernels
    shape = k.shape(b.share)
    with ctx.messenger.label("b2a"):
        s_bits = ctx.corr_random_bits(shape)
        s_arith = ctx.corr_derived(lambda: s_bits, shape)
        if ctx.is_dealer:
            return Shared(k.zeros(shape))
        (d,) = ctx.open([k.bit_xor(b.share, s_bits)], bits=[1])
        out = k.mul(k.sub(k.constant(1), k.mul(d, k.constant(2))), s_arith)
        return Shared(k.add(out, d) if ctx.index == 0 else out)


#: comparisons per call in step 1: up to this many, one call (the rounds above); more run as
#: consecutive calls of this many (5 rounds each), so that a large model's check (ResNet-50 at
#: 224x224: 38M comparisons) keeps the comparison's temporaries to a few hundred MB per party
#: (at 2^22 its peak RSS was 11.4 GB, of which 5 GB came in the check)
CHECK_CHUNK = 1 << 20


def _chunks(k: Any, values: Any) -> Iterator[tuple[slice, Any]]:
    """The 1-D ``values`` in consecutive pieces of at most ``CHECK_CHUNK`` elements (itself when
    it fits), each with the slice of ``values`` it is: one comparison call per piece."""
    n = k.shape(values)[0]
    if n <= CHECK_CHUNK:
        yield slice(0, n), values
        return
    for start in range(0, n, CHECK_CHUNK):
        stop = min(n, start + CHECK_CHUNK)
        yield slice(start, stop), k.gather(values, np.arange(start, stop), axis=0)


def _inside_bits(ctx: PartyContext, full: PartyContext, values: Any) -> Shared:
    """[v >= 0] as integer 0/1 for every element of ``values``, in chunks of ``CHECK_CHUNK``."""
    k = ctx.kernels
    pieces = [bits_to_arith(ctx, ge_zero(full, Shared(piece))).share for _, piece in _chunks(k, values)]
    return Shared(pieces[0] if len(pieces) == 1 else k.concat(pieces, axis=0))


def _full_width(ctx: PartyContext) -> PartyContext:
    """The same party (same streams, messenger and store) comparing on all 64 bits."""
    if ctx.numerics.compare_bits == 64:
        return ctx
    return dataclasses.replace(ctx, numerics=ctx.numerics.model_copy(update={"compare_bits": 64}))


def _comparisons(
    ctx: PartyContext,
    checked: list[Shared],
    bound: float,
    rectified: list[Shared | None] | None,
    group: int,
    nonnegative: list[bool] | None,
) -> tuple[Any, list[int]]:
    """Step 1's values, one flat vector (v >= 0: inside the bound), and how many belong to
    each checked tensor, in order."""
    k = ctx.kernels
    rectified = rectified or [None] * len(checked)
    nonnegative = nonnegative or [False] * len(checked)
    limit = ctx.public(np.array(int(round(bound * ctx.numerics.scale))))
    parts, sizes = [], []

    def two_sided(values) -> None:
        parts.append(add_public(ctx, Shared(values), limit).share)
        parts.append(add_public(ctx, Shared(k.neg(values)), limit).share)

    for x, y, positive in zip(checked, rectified, nonnegative, strict=True):
        flat = k.reshape(x.share, (-1,))
        magnitude = None
        if y is not None:
            magnitude = k.sub(k.add(k.reshape(y.share, (-1,)), k.reshape(y.share, (-1,))), flat)
        elif positive:
            magnitude = flat
        before = len(parts)
        if group > 1 and magnitude is not None:
            n = int(np.prod(k.shape(magnitude)))
            padded = k.concat([magnitude, k.zeros(((-n) % group,))], axis=0) if n % group else magnitude
            sums = k.sum(k.reshape(padded, (-1, group)), axis=1)
            # [S >= 0] and [B - S >= 0]: S = (S - B) + B and B - S, both against the same limit
            two_sided(add_public(ctx, Shared(sums), k.neg(limit)).share)
        elif magnitude is not None:
            parts.append(add_public(ctx, Shared(k.neg(magnitude)), limit).share)
        else:
            two_sided(flat)
        sizes.append(sum(int(np.prod(k.shape(t))) for t in parts[before:]))
    return (k.concat(parts, axis=0) if len(parts) > 1 else parts[0]), sizes


def overflow_flags(
    ctx: PartyContext,
    checked: list[Shared],
    bound: float,
    rectified: list[Shared | None] | None = None,
    group: int = 1,
    nonnegative: list[bool] | None = None,
) -> Shared:
    """[v_l >= 1] per checked tensor x_l (integer 0/1): does any |x| exceed ``bound``?

    Where ``rectified[l]`` holds ReLU(x_l) (the layer feeds a ReLU), |x| = 2 ReLU(x) - x
    exactly and one comparison [B - |x| >= 0] per element suffices; elsewhere two,
    [x + B >= 0] and [B - x >= 0].  With ``group`` > 1, |x| (or x itself where
    ``nonnegative[l]``) is summed over groups of that many elements and each sum checked
    with two comparisons (module docstring).  All comparisons run in one call.
    Serving reveals its flags by ``overflow_tests``/``reveal_flags`` instead (4 rounds fewer).
    """
    k = ctx.kernels
    values, sizes = _comparisons(ctx, checked, bound, rectified, group, nonnegative)
    full = _full_width(ctx)
    with ctx.messenger.label("overflow_check"):
        inside = _inside_bits(ctx, full, values)
        counts, start = [], 0
        for size in sizes:
            counts.append(k.sum(k.gather(inside.share, np.arange(start, start + size), axis=0), axis=0))
            start += size
        # violations v_l = comparisons_l - sum(inside); flag = [v_l - 1 >= 0]
        totals = ctx.public(np.array([size - 1 for size in sizes], dtype=np.int64))
        violations = add_public(ctx, Shared(k.neg(k.stack(counts, axis=0))), totals)
        return bits_to_arith(ctx, ge_zero(full, violations))


# -- serving's zero test: the flags with no second comparison --------------------------------------

#: the prime of the zero test (the largest below 2^32): a tensor's count of violations must stay below it
ZERO_TEST_PRIME = (1 << 32) - 5
#: comparisons per checked tensor the zero test takes (its sums stay below 2^63, its counts below p)
MAX_TESTED = 1 << 30


@dataclasses.dataclass(frozen=True)
class ZeroTests:
    """This compute party's shares (mod ``ZERO_TEST_PRIME``) of t_l r_l v_l per checked
    tensor: v_l its count of violations, r_l the dealer's and t_l the compute parties'
    random non-zero multipliers.  Zero exactly when nothing in tensor l failed."""

    share: np.ndarray


def _masked_outside(ctx: PartyContext, inside: Bits, segment: np.ndarray, r: np.ndarray) -> np.ndarray | None:
    """Per element, shares mod p of r_l [not inside] (l = ``segment``, r = this party's shares
    of r_l; the dealer's r itself), in one round of 1 bit per element.

    The dealer gives a random bit s as XOR shares and r_l s as shares mod p; open d = w xor s
    (w = not inside); then r_l w = d r_l + (1 - 2d) r_l s, locally.  Dealer -> P1: 4 bytes per element.
    """
    k = ctx.kernels
    p = ZERO_TEST_PRIME
    shape = k.shape(inside.share)
    with ctx.messenger.label("b2a"):
        s_bits = ctx.corr_random_bits(shape)
        rs = ctx.corr_derived_mod(lambda: r[segment] * k.to_numpy(s_bits), shape, p)
        if ctx.is_dealer:
            return None
        w = k.bit_xor(inside.share, k.constant(1)) if ctx.index == 0 else inside.share
        (d,) = ctx.open([k.bit_xor(w, s_bits)], bits=[1])
        d = k.to_numpy(d) & 1
        return np.where(d == 1, r[segment] - rs + p, rs)  # (1 - 2d) rs + d r, each term in [0, 2p)


def overflow_tests(
    ctx: PartyContext,
    checked: list[Shared],
    bound: float,
    rectified: list[Shared | None] | None = None,
    group: int = 1,
    nonnegative: list[bool] | None = None,
) -> ZeroTests | None:
    """Serving's range check: step 1 as in ``overflow_flags`` (the same comparisons), then,
    instead of counting the violations arithmetically and comparing the count (5 rounds),
    a zero test of the count (one round, plus the reveal ``reveal_flags``):

      the bits w = [not inside] become shares mod p of r_l w (``_masked_outside``), summed
      per tensor into r_l v_l; the compute parties multiply by t_l, random non-zero from
      their own seed (``PartyContext.pair_random_mod``).  Revealed, t_l r_l v_l mod p is 0 if
      v_l = 0 and uniform over the non-zero residues otherwise (p prime, v_l < p): whoever
      learns it learns the flag and nothing else, the dealer (who knows r_l) included, since
      it does not know t_l.

    Rounds: the comparison's 4 (more past ``CHECK_CHUNK``) + 1.  None in the dealer."""
    k = ctx.kernels
    p = ZERO_TEST_PRIME
    values, sizes = _comparisons(ctx, checked, bound, rectified, group, nonnegative)
    if max(sizes) >= MAX_TESTED:
        raise ValueError(f"a checked tensor has {max(sizes)} comparisons, more than the zero test takes "
                         f"({MAX_TESTED - 1}); check fewer values at once")
    segment = np.repeat(np.arange(len(sizes)), sizes)
    full = _full_width(ctx)
    with ctx.messenger.label("overflow_check"):
        # r_l uniform non-zero mod p: the sum of two halves the compute parties draw (each
        # knows one), so neither knows it
        halves = ctx.corr_random((len(sizes), 2))
        r = 1 + uniform_mod(k.to_numpy(halves), p - 1) if ctx.is_dealer else None
        r_share = ctx.corr_derived_mod(lambda: r, (len(sizes),), p)
        pieces = [_masked_outside(ctx, ge_zero(full, Shared(piece)), segment[where], r if ctx.is_dealer else r_share)
                  for where, piece in _chunks(k, values)]
        if ctx.is_dealer:
            return None
        terms = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        masked = np.add.reduceat(terms, starts) % p  # each term < 2^33, fewer than 2^30 per sum
        masked[np.asarray(sizes) == 0] = 0
        t = ctx.pair_random_mod((len(sizes),), p)
        return ZeroTests((masked.astype(np.uint64) * t.astype(np.uint64) % np.uint64(p)).astype(np.int64))


def reveal_flags(ctx: PartyContext, tests: ZeroTests | None, receivers: tuple[str, ...]) -> np.ndarray | None:
    """Reveal the zero tests to ``receivers`` (one round, 4 bytes per checked tensor to each):
    True where a tensor had a violation.  None where this party is no receiver."""
    p = ZERO_TEST_PRIME
    with ctx.messenger.label("reveal:overflow"):
        if ctx.is_compute:
            assert tests is not None
            peers = [r for r in receivers if r != ctx.name]
            if peers:
                ctx.messenger.send_many(peers, [tests.share] * len(peers), bits=32)
        if ctx.name not in receivers:
            return None
        total = np.zeros((), dtype=np.int64)
        for party in ctx.compute:
            part = tests.share if party == ctx.name else ctx.messenger.recv(party)  # type: ignore[union-attr]
            total = (total + np.asarray(part, dtype=np.int64) % p) % p
        return total != 0


#: op kinds whose output is >= 0 when their input is (and nothing failed)
SIGN_PRESERVING_KINDS = frozenset({"flatten", "reshape", "identity", "max_pool2d", "avg_pool2d", "global_avg_pool2d"})
#: elements summed per comparison pair where a value is known non-negative (serving)
SERVING_GROUP = 16


@dataclasses.dataclass(frozen=True)
class CheckEntry:
    value: str
    #: the ReLU output of ``value``, if a ReLU reads it (|x| = 2 ReLU(x) - x for free)
    rectified: str | None
    #: ``value`` is >= 0 unless something failed (e.g. the average pool of a ReLU output)
    nonnegative: bool
    #: the layer named in errors
    layer: str


@dataclasses.dataclass(frozen=True)
class CheckPlan:
    """Which values a serving query checks, and what is known of their sign."""

    entries: tuple[CheckEntry, ...]

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(e.layer for e in self.entries)


def serving_check_plan(program: Program) -> CheckPlan:
    """Every node output that may grow a value or went through a truncation, and every
    graph output (a failure inside a nonlinearity shows there)."""
    graph = program.graph
    exact_relu = program.numerics.compare_bits == 64  # else a wrapped x may get a wrong ReLU bit
    # |x| = 2 ReLU(x) - x holds for max(x, 0) only: with max_value (relu6) it is 2 max_value - x
    # above max_value, negative past 2 max_value (an honest query flagged), and a leaky slope
    # under-reads |x|; such a ReLU's input is checked as any other value
    relu_of = {n.inputs[0]: n.output for n in graph.nodes
               if n.op.kind == "relu" and n.op.plain and len(n.inputs) == 1}
    producer = {n.output: n.name for n in graph.nodes}
    nonnegative: set[str] = set()
    for n in graph.nodes:
        if (n.op.kind == "relu" and n.op.negative_slope == 0.0 and n.op.threshold >= 0.0) or (
            n.op.kind in SIGN_PRESERVING_KINDS and all(v in nonnegative for v in n.inputs)
        ):
            nonnegative.add(n.output)
    values = [n.output for n in graph.nodes if n.op.kind not in RANGE_PRESERVING_KINDS]
    values += [v for v in graph.outputs if v in producer and v not in values]
    return CheckPlan(tuple(
        CheckEntry(v, relu_of.get(v) if exact_relu else None, exact_relu and v in nonnegative, producer[v])
        for v in values
    ))
