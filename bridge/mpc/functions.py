"""Nonlinear functions from comparisons, products and documented approximations.

Each states its rounds and its error on its input range; tests check the errors.
"""

from __future__ import annotations

import math

import numpy as np

from bridge.mpc.compare import Bits, ge_zero, mul_bit
from bridge.mpc.party import PartyContext
from bridge.mpc.protocol import (
    Shared,
    add,
    add_constant,
    add_public,
    beaver,
    mul,
    mul_public,
    mul_public_int,
    neg,
    square,
    sub,
    truncate,
)

#: exp's limit approximation (1 + x/2^n)^(2^n): n squarings.
EXP_ITERATIONS = 8
#: exp clamps its input at -2^n, where (1 + x/2^n) would turn negative.
EXP_FLOOR = -float(2**EXP_ITERATIONS)


def relu_with_bit(ctx: PartyContext, x: Shared) -> tuple[Shared, Shared]:
    """(ReLU(x), [x >= 0]) exactly: a comparison then bit injection.

    Rounds: 1 + ceil(log4(k - 1)) + 1 (5 for k = 64).
    """
    with ctx.messenger.label("relu"):
        return mul_bit(ctx, ge_zero(ctx, x), x)


def relu(ctx: PartyContext, x: Shared) -> Shared:
    return relu_with_bit(ctx, x)[0]


def maximum(ctx: PartyContext, a: Shared, b: Shared) -> tuple[Shared, Shared]:
    """(max(a, b), [a >= b]) = b + [a - b >= 0] * (a - b): exact, 5 rounds."""
    diff = sub(ctx, a, b)
    picked, bit = mul_bit(ctx, ge_zero(ctx, diff), diff)
    return add(ctx, b, picked), bit


def max_axis0(ctx: PartyContext, x: Shared) -> Shared:
    """Maximum over axis 0 by a pairwise tree: ceil(log2 n) comparison levels."""
    k = ctx.kernels
    with ctx.messenger.label("max"):
        while k.shape(x.share)[0] > 1:
            n = k.shape(x.share)[0]
            half = n // 2
            lo = Shared(k.gather(x.share, np.arange(half), axis=0))
            hi = Shared(k.gather(x.share, np.arange(half, 2 * half), axis=0))
            best, _ = maximum(ctx, lo, hi)
            if n % 2:
                best = Shared(k.concat([best.share, k.gather(x.share, np.array([n - 1]), axis=0)], axis=0))
            x = best
        return Shared(k.reshape(x.share, k.shape(x.share)[1:]))


def exp(ctx: PartyContext, x: Shared) -> Shared:
    """e^x for x <= 0 by (1 + x/2^n)^(2^n), n = 8, after clamping x at -256.

    Rounds: 5 (clamp) + 8.  Max abs error on [-256, 0]: below 2e-3 (at x near -2),
    plus fixed-point rounding amplified by 2^n: 256 * 2^-f relative (0.4% at f=16).
    Inputs above 0 are not clamped: exp is only called on x - max(x) or -|x|.
    """
    with ctx.messenger.label("exp"):
        clamped = add_constant(ctx, relu(ctx, add_constant(ctx, x, -EXP_FLOOR)), EXP_FLOOR)
        y = add_constant(ctx, truncate(ctx, clamped, EXP_ITERATIONS), 1.0)
        for _ in range(EXP_ITERATIONS):
            y = square(ctx, y)
        return y


#: fewest units of 2^-f that Newton's first step may leave y at (see ``reciprocal_start``)
RECIPROCAL_MIN_FIRST_STEP_UNITS = 32


def reciprocal_start(lo: float, hi: float, frac_bits: int) -> tuple[float, float]:
    """Newton's starting point y0 for 1/x on [lo, hi] and the bound on |e_0| = |1 - x y0|.

    From the midpoint guess 2/(lo+hi) the first step gives y1 = (1 - e0^2)/x, as small as
    4 lo/(lo+hi)^2 at x = hi: on a wide range (a softmax over 1000 near-equal logits sums
    to ~1000) that is under one unit of 2^-f, y1 truncates to 0 (or below) and Newton never
    recovers, which made every probability 0.  There, start from 1/hi instead: e_0 is in
    [0, 1 - lo/hi], y only grows towards 1/x and never leaves the representable range.
    """
    midpoint = 2.0 / (lo + hi)
    if 4.0 * lo / (lo + hi) ** 2 * 2.0**frac_bits >= RECIPROCAL_MIN_FIRST_STEP_UNITS:
        return midpoint, (hi - lo) / (hi + lo)
    return 1.0 / hi, 1.0 - lo / hi


def reciprocal(ctx: PartyContext, x: Shared, lo: float, hi: float) -> Shared:
    """1/x for x in [lo, hi] (lo > 0) by Newton-Raphson y <- y (2 - x y) from y0 (``reciprocal_start``).

    The relative error e_t = 1 - x y_t satisfies e_{t+1} = e_t^2 and |e_0| is bounded by
    ``reciprocal_start``, so t = ceil(log2((f+2) ln 2 / -ln e_0)) iterations reach 2^-(f+2)
    (then a result of 1/x carries 2^-f absolute rounding: 1.5% relative at x = 1000).
    Rounds: 2 t.
    """
    if not 0 < lo < hi:
        raise ValueError(f"reciprocal needs 0 < lo < hi, received lo={lo}, hi={hi}")
    frac = ctx.numerics.frac_bits
    y0, e0 = reciprocal_start(lo, hi, frac)
    iterations = max(1, math.ceil(math.log2((frac + 2) * math.log(2) / -math.log(e0))))
    k = ctx.kernels
    with ctx.messenger.label("reciprocal"):
        y = Shared(k.broadcast_to(k.constant(0), k.shape(x.share)))
        y = add_constant(ctx, y, y0)
        for _ in range(iterations):
            xy = mul(ctx, x, y)
            y = mul(ctx, y, add_constant(ctx, neg(ctx, xy), 2.0))
        return y


def sigmoid(ctx: PartyContext, x: Shared) -> Shared:
    """1 / (1 + e^-x) by symmetry: s = 1/(1 + e^-|x|) in [1/2, 1], then pick s or 1 - s.

    Rounds: 5 (sign) + 1 (|x|) + 13 (exp) + 8 (reciprocal on [1, 2]) + 1 (pick) = 28.
    Max abs error over all x: below 4e-3 (see tests).
    """
    with ctx.messenger.label("sigmoid"):
        bit = ge_zero(ctx, x)
        x_if_positive, _ = mul_bit(ctx, bit, x)
        magnitude = sub(ctx, double(ctx, x_if_positive), x)  # |x| = 2 b x - x
        s = reciprocal(ctx, add_constant(ctx, exp(ctx, neg(ctx, magnitude)), 1.0), 1.0, 2.0)
        one_minus_s = add_constant(ctx, neg(ctx, s), 1.0)
        picked, _ = mul_bit(ctx, bit, sub(ctx, s, one_minus_s))
        return add(ctx, one_minus_s, picked)


def double(ctx: PartyContext, x: Shared) -> Shared:
    """[2x], locally."""
    return Shared(ctx.kernels.add(x.share, x.share))


def tanh(ctx: PartyContext, x: Shared) -> Shared:
    """tanh(x) = 2 sigmoid(2x) - 1; error twice sigmoid's."""
    with ctx.messenger.label("tanh"):
        s = sigmoid(ctx, double(ctx, x))
        return add_constant(ctx, double(ctx, s), -1.0)


def softmax(ctx: PartyContext, x: Shared) -> Shared:
    """Softmax over the last axis: e^(x - max) / sum e^(x - max).

    The denominator lies in [1, C] (C classes), so the reciprocal needs no search.
    Rounds: 5 ceil(log2 C) (max) + 13 (exp) + 2 t (reciprocal) + 1.
    """
    k = ctx.kernels
    shape = k.shape(x.share)
    classes = shape[-1]
    perm = (len(shape) - 1,) + tuple(range(len(shape) - 1))
    with ctx.messenger.label("softmax"):
        if classes == 1:
            ones = Shared(k.zeros(shape))
            return add_constant(ctx, ones, 1.0)
        top = max_axis0(ctx, Shared(k.transpose(x.share, perm)))
        shifted = sub(ctx, x, Shared(k.reshape(top.share, shape[:-1] + (1,))))
        e = exp(ctx, shifted)
        total = Shared(k.sum(e.share, axis=len(shape) - 1, keepdims=True))
        inv = reciprocal(ctx, total, 1.0, float(classes))
        return mul(ctx, e, Shared(k.broadcast_to(inv.share, shape)))


#: 1/sqrt(m) on [1, 16] as a cubic in m (relative-error minimax by reweighted least squares,
#: max relative error 0.0826): Newton's relative error e -> (3 e^2 - e^3) / 2 then gives
#: 0.0105, 1.7e-4, 4.2e-8 after 1, 2, 3 iterations
INV_SQRT_CUBIC = (-5.93719443e-04, 1.96895413e-02, -2.18506809e-01, 1.11680994e00)
INV_SQRT_NEWTON = 3
#: the bracket width of inv_sqrt: x = 16^j m with m in [1, 16)
INV_SQRT_BRACKET_BITS = 4


def inv_sqrt(ctx: PartyContext, x: Shared, lo_exp: int, hi_exp: int, x_frac_bits: int | None = None) -> Shared:
    """1/sqrt(x) (f fractional bits) for x given at ``x_frac_bits`` (default f), clamped to
    [2^lo_exp, 2^hi_exp]: see ``div_sqrt``, which this is with no numerator."""
    return _inv_sqrt(ctx, x, lo_exp, hi_exp, x_frac_bits, None, 0)[0]


def div_sqrt(
    ctx: PartyContext, numerator: Shared, numerator_bits: int, x: Shared, lo_exp: int, hi_exp: int,
    x_frac_bits: int | None = None,
) -> tuple[Shared, Shared]:
    """(z / sqrt(x), 1 / sqrt(x)), both at f fractional bits, for z at ``numerator_bits``
    and x at ``x_frac_bits`` (default f), x clamped to [2^lo_exp, 2^hi_exp]: an input below
    2^lo_exp (zero and negatives included) is read as 2^lo_exp, one above 2^hi_exp as 2^hi_exp.

    1. One comparison call on (J + 2) values per element: [x >= lo], [hi >= x] and
       c_j = [x >= 2^(lo_exp + 4 j)] for j = 1..J, J = (hi_exp - lo_exp) / 4 - 1.
    2. Clamp (one bit injection): x' = lo + [x >= lo](x - lo) - (x - hi) + [hi >= x](x - hi).
    3. With e_K = lo_exp + 4K the bracket of x' (the c_j are monotone, so K = sum c_j),
       m = x' 2^-e_K in [1, 16) is selected without any secret product:
       m = m_0 + sum_j c_j (m_j - m_{j-1}), m_j = x' 2^-e_j by a local shift (one bit
       injection for all j; the sum telescopes exactly in Z_2^64, overflowing m_j included).
    4. r = 1/sqrt(m): a cubic (INV_SQRT_CUBIC, max relative error 0.083, 2 rounds), then
       INV_SQRT_NEWTON = 3 Newton steps r <- r (3 - m r^2) / 2 (3 rounds each): 4e-8.
    5. z r (one product, kept at numerator_bits + f bits), then 1/sqrt(x') = 2^(-e_K/2) r
       and z/sqrt(x') = 2^(-e_K/2) z r selected from their shifts as in 3 (one bit
       injection).  z r stays small (|z r| <= |z|) where 1/sqrt(x) is huge, so z may carry
       many fractional bits without the product leaving the ring.
    Rounds: 4 (compare) + 1 + 1 + 2 + 9 + 1 (+ 1 for z r) = 18 (19).  Error (f = 16):
    relative 2^-12 over the whole range (Newton's 4e-8 plus a few units of rounding of r at
    f bits, r in (1/4, 1]; measured 1.4e-4 at most, near m = 16), plus one unit 2^-f
    absolute from the final shift.  Local truncations of x' fail with probability about
    |x'| 2^(x_frac_bits - 63), of z r about |z| 2^(numerator_bits + f - 63) (``truncate``).
    Needs lo_exp even, hi_exp - lo_exp a positive multiple of 4, lo_exp >= -x_frac_bits and
    2^(hi_exp + x_frac_bits + 1) below 2^(compare_bits - 1) (comparison range).
    """
    return _inv_sqrt(ctx, x, lo_exp, hi_exp, x_frac_bits, numerator, numerator_bits)  # type: ignore[return-value]


def _inv_sqrt(
    ctx: PartyContext, x: Shared, lo_exp: int, hi_exp: int, x_frac_bits: int | None,
    numerator: Shared | None, numerator_bits: int,
) -> tuple[Shared, ...]:
    k = ctx.kernels
    f = ctx.numerics.frac_bits
    fx = f if x_frac_bits is None else x_frac_bits
    width = INV_SQRT_BRACKET_BITS
    span = hi_exp - lo_exp
    if lo_exp % 2 or span <= 0 or span % width or lo_exp < -fx:
        raise ValueError(
            f"inv_sqrt needs an even lo_exp >= -x_frac_bits ({-fx}) and hi_exp - lo_exp a positive multiple "
            f"of {width}; received lo_exp={lo_exp}, hi_exp={hi_exp}"
        )
    if hi_exp + fx + 2 > ctx.numerics.compare_bits - 1:
        raise ValueError(
            f"inv_sqrt on [2^{lo_exp}, 2^{hi_exp}] at {fx} fractional bits compares values up to "
            f"2^{hi_exp + fx + 1} (ring units), beyond compare_bits={ctx.numerics.compare_bits}; raise "
            "Numerics.compare_bits or lower hi_exp"
        )
    shape = k.shape(x.share)
    exps = [lo_exp + width * j for j in range(span // width)]  # bracket lower ends e_0..e_J

    def pub(value: int) -> object:
        return ctx.public(np.array(value, dtype=np.int64))

    def shifted(v: Shared, bits: int) -> Shared:
        """v * 2^bits: exact left shift, or local truncation."""
        if bits >= 0:
            return mul_public_int(ctx, v, pub(1 << bits))
        return truncate(ctx, v, -bits)

    def select(bits: Bits, candidates: list[Shared]) -> Shared:
        """candidates[K] for K = sum of the (monotone) bits: telescoping bit injections."""
        if len(candidates) == 1:
            return candidates[0]
        diffs = Shared(k.stack([k.sub(b.share, a.share) for a, b in zip(candidates, candidates[1:])], axis=0))
        picked, _ = mul_bit(ctx, bits, diffs)
        return Shared(k.add(candidates[0].share, k.sum(picked.share, axis=0)))

    with ctx.messenger.label("inv_sqrt"):
        lo, hi = pub(1 << (lo_exp + fx)), pub(1 << (hi_exp + fx))
        tests = [add_public(ctx, x, k.neg(lo)), add_public(ctx, neg(ctx, x), hi)]
        tests += [add_public(ctx, x, k.neg(pub(1 << (e + fx)))) for e in exps[1:]]
        bits = ge_zero(ctx, Shared(k.stack([t.share for t in tests], axis=0))).share
        planes = k.unstack(bits)
        below_hi = add_public(ctx, x, k.neg(hi))
        clamp, _ = mul_bit(ctx, Bits(k.stack(planes[:2], axis=0)), Shared(k.stack([tests[0].share, below_hi.share], axis=0)))
        above_lo_part, below_hi_part = k.unstack(clamp.share)
        clamped = add_public(ctx, Shared(k.add(k.sub(above_lo_part, below_hi.share), below_hi_part)), lo)
        count = len(exps) - 1
        m = select(Bits(k.stack(planes[2:], axis=0)) if count else Bits(k.zeros((0,) + shape)),
                   [shifted(clamped, f - fx - e) for e in exps])
        r = add_constant(ctx, mul_public(ctx, m, INV_SQRT_CUBIC[0]), INV_SQRT_CUBIC[1])
        for c in INV_SQRT_CUBIC[2:]:
            r = add_constant(ctx, mul(ctx, r, m), c)
        for _ in range(INV_SQRT_NEWTON):
            m_r2 = mul(ctx, m, square(ctx, r))
            r = mul(ctx, r, add_constant(ctx, mul_public(ctx, m_r2, -0.5), 1.5))
        # candidates of every output stacked on a new axis 1, so one bit injection selects all
        outputs = [(r, 0)]
        if numerator is not None:
            outputs.append((beaver(ctx, numerator, r, k.mul, shape), numerator_bits))  # at numerator_bits + f
        stacked = [Shared(k.stack([shifted(v, -(e // 2) - extra).share for v, extra in outputs], axis=0))
                   for e in exps]
        n_out = len(outputs)
        brackets = (Bits(k.stack([k.stack([p] * n_out, axis=0) for p in planes[2:]], axis=0))
                    if count else Bits(k.zeros((0, n_out) + shape)))
        chosen = k.unstack(select(brackets, stacked).share)
        return tuple(Shared(c) for c in chosen[::-1])  # (z / sqrt(x), 1 / sqrt(x)) or (1 / sqrt(x),)


__all__ = [
    "EXP_FLOOR",
    "exp",
    "div_sqrt",
    "inv_sqrt",
    "max_axis0",
    "maximum",
    "reciprocal",
    "relu",
    "relu_with_bit",
    "sigmoid",
    "softmax",
    "tanh",
]
