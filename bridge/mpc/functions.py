"""Nonlinear functions from comparisons, products and documented approximations.

Each states its rounds and its error on its input range; tests check the errors.
"""

from __future__ import annotations

import math

import numpy as np

from bridge.mpc.compare import ge_zero, mul_bit
from bridge.mpc.party import PartyContext
from bridge.mpc.protocol import Shared, add, add_constant, mul, neg, square, sub, truncate

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


def reciprocal(ctx: PartyContext, x: Shared, lo: float, hi: float) -> Shared:
    """1/x for x in [lo, hi] (lo > 0) by Newton-Raphson y <- y (2 - x y) from y0 = 2/(lo+hi).

    The relative error e_t = 1 - x y_t satisfies e_{t+1} = e_t^2 and |e_0| <= (hi-lo)/(hi+lo),
    so t = ceil(log2((f+2) ln 2 / -ln e_0)) iterations reach 2^-(f+2).  Rounds: 2 t.
    """
    if not 0 < lo < hi:
        raise ValueError(f"reciprocal needs 0 < lo < hi, received lo={lo}, hi={hi}")
    e0 = (hi - lo) / (hi + lo)
    frac = ctx.numerics.frac_bits
    iterations = max(1, math.ceil(math.log2((frac + 2) * math.log(2) / -math.log(e0))))
    k = ctx.kernels
    with ctx.messenger.label("reciprocal"):
        y0 = 2.0 / (lo + hi)
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


__all__ = [
    "EXP_FLOOR",
    "exp",
    "max_axis0",
    "maximum",
    "reciprocal",
    "relu",
    "relu_with_bit",
    "sigmoid",
    "softmax",
    "tanh",
]
