"""The activations of opset v2 on shares, from comparisons, products and ``functions``.

Each states its rounds and its error; ``tests/conformance`` checks every one on both
backends against the float64 reference with the tolerance derived here.  Errors are
absolute, for 16 fractional bits; "rounding" means the SecureML truncation error of
one unit (2^-16 = 1.5e-5) per fixed-point product.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from bridge.mpc import functions
from bridge.mpc.compare import Bits, ge_zero, mul_bit
from bridge.mpc.party import PartyContext
from bridge.mpc.protocol import Shared, add, add_constant, mul, mul_public, neg, square, sub

#: softsign's reciprocal works for |x| below this bound (Newton-Raphson on [1, 1 + bound])
SOFTSIGN_BOUND = 64.0
#: degree of the polynomial that stands for log(1 + u) on [0, 1] in softplus
LOG1P_DEGREE = 8


def clipped_relu(
    ctx: PartyContext, x: Shared, negative_slope: float = 0.0, threshold: float = 0.0,
    max_value: float | None = None,
) -> tuple[Shared, tuple[Shared, Shared | None]]:
    """Keras' relu: a (x - t) below t, x on [t, m), m from m on; exact but for rounding.

    With b1 = [x - t >= 0] and b2 = [x - m >= 0] (m >= t):
        y = a (x - t) + b1 (x - a (x - t)) - b2 (x - m).
    Rounds: 5 per comparison (one or two) + 1 (the bit injections run together).
    Error: exact for a = 0; one truncation (2^-16) per public product otherwise.
    Returns y and the arithmetic bits (b1, b2), which the derivative reads.
    """
    below = add_constant(ctx, x, -threshold) if threshold else x
    sloped = mul_public(ctx, below, negative_slope) if negative_slope else None
    inside = sub(ctx, x, sloped) if sloped is not None else x
    with ctx.messenger.label("relu"):
        y, b1 = mul_bit(ctx, ge_zero(ctx, below), inside)
        b2 = None
        if max_value is not None:
            over = add_constant(ctx, x, -max_value)
            excess, b2 = mul_bit(ctx, ge_zero(ctx, over), over)
            y = sub(ctx, y, excess)
    if sloped is not None:
        y = add(ctx, y, sloped)
    return y, (b1, b2)


def abs_and_relu(ctx: PartyContext, x: Shared) -> tuple[Shared, Shared, Bits]:
    """(|x|, relu(x), [x >= 0]) from one comparison: |x| = 2 relu(x) - x.  Rounds: 6."""
    bit = ge_zero(ctx, x)
    positive, _ = mul_bit(ctx, bit, x)
    return sub(ctx, functions.double(ctx, positive), x), positive, bit


def elu(ctx: PartyContext, x: Shared, alpha: float) -> Shared:
    """x for x > 0, alpha (e^x - 1) below: relu(x) + alpha (e^min(x, 0) - 1).

    Rounds: 6 (relu) + 13 (exp).  Error: alpha times exp's (below 2e-3 on [-256, 0]).
    """
    with ctx.messenger.label("elu"):
        positive = functions.relu(ctx, x)
        negative = sub(ctx, x, positive)  # min(x, 0)
        e = add_constant(ctx, functions.exp(ctx, negative), -1.0)
        tail = mul_public(ctx, e, alpha) if alpha != 1.0 else e
        return add(ctx, positive, tail)


def gelu(ctx: PartyContext, x: Shared) -> Shared:
    """GELU in Keras' tanh form, x sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), for both forms.

    0.5 (1 + tanh z) = sigmoid(2 z).  The tanh form differs from the erf form by at most
    5e-4 (Hendrycks & Gimpel 2016; checked in tests); the secure sigmoid adds at most
    4e-3 |x|.  Rounds: 2 (x^3) + 28 (sigmoid) + 1.
    """
    with ctx.messenger.label("gelu"):
        cube = mul(ctx, square(ctx, x), x)
        inner = add(ctx, x, mul_public(ctx, cube, 0.044715))
        s = functions.sigmoid(ctx, mul_public(ctx, inner, 2.0 * math.sqrt(2.0 / math.pi)))
        return mul(ctx, x, s)


def silu(ctx: PartyContext, x: Shared) -> Shared:
    """x sigmoid(x).  Rounds: 29.  Error: 4e-3 |x| (sigmoid's) plus rounding."""
    with ctx.messenger.label("silu"):
        return mul(ctx, x, functions.sigmoid(ctx, x))


def hard_sigmoid(ctx: PartyContext, x: Shared) -> Shared:
    """clip(x / 6 + 1/2, 0, 1) = relu with max_value 1 of u = x / 6 + 1/2.

    Rounds: 11 (two comparisons, one injection round).  Error: one truncation.
    """
    with ctx.messenger.label("hard_sigmoid"):
        u = add_constant(ctx, mul_public(ctx, x, 1.0 / 6.0), 0.5)
        return clipped_relu(ctx, u, max_value=1.0)[0]


def hard_silu(ctx: PartyContext, x: Shared) -> Shared:
    """x hard_sigmoid(x).  Rounds: 12.  Error: |x| 2^-16 plus rounding."""
    with ctx.messenger.label("hard_silu"):
        return mul(ctx, x, hard_sigmoid(ctx, x))


@lru_cache(maxsize=None)
def log1p_coefficients(degree: int = LOG1P_DEGREE) -> tuple[float, ...]:
    """Power-basis coefficients (constant first) of a least-squares fit of log(1 + u) at
    Chebyshev nodes of [0, 1]: max error 3e-8 for degree 8 (checked in tests)."""
    nodes = 0.5 + 0.5 * np.cos(np.pi * (np.arange(4 * degree) + 0.5) / (4 * degree))
    fit = np.polynomial.Polynomial.fit(nodes, np.log1p(nodes), degree, domain=[0.0, 1.0], window=[0.0, 1.0])
    return tuple(float(c) for c in fit.coef)


def polynomial(ctx: PartyContext, u: Shared, coefficients: tuple[float, ...]) -> Shared:
    """sum c_i u^i by Horner's rule: one product (one round) per degree."""
    y = add_constant(ctx, mul_public(ctx, u, coefficients[-1]), coefficients[-2])
    for c in reversed(coefficients[:-2]):
        y = add_constant(ctx, mul(ctx, y, u), c)
    return y


def softplus(ctx: PartyContext, x: Shared) -> Shared:
    """log(1 + e^x) = relu(x) + log(1 + e^-|x|), the log by a degree-8 polynomial on (0, 1].

    Rounds: 6 (|x|, relu) + 13 (exp) + 7 (Horner).  Error: exp's 2e-3 (the log's slope
    is at most 1) plus the fit's 3e-8 and rounding.
    """
    with ctx.messenger.label("softplus"):
        magnitude, positive, _ = abs_and_relu(ctx, x)
        u = functions.exp(ctx, neg(ctx, magnitude))
        return add(ctx, positive, polynomial(ctx, u, log1p_coefficients()))


def softsign(ctx: PartyContext, x: Shared, bound: float = SOFTSIGN_BOUND) -> Shared:
    """x / (1 + |x|) with 1 / (1 + |x|) by Newton-Raphson on [1, 1 + bound].

    Valid for |x| < bound (64): beyond it the iteration diverges.  Rounds: 6 (|x|) +
    2 t (t = 9 iterations for bound 64 at f = 16) + 1.  Error: 2^-(f+2) relative in the
    reciprocal, so below 1e-5, plus rounding.
    """
    with ctx.messenger.label("softsign"):
        magnitude, _, _ = abs_and_relu(ctx, x)
        inverse = functions.reciprocal(ctx, add_constant(ctx, magnitude, 1.0), 1.0, 1.0 + bound)
        return mul(ctx, x, inverse)


__all__ = [
    "LOG1P_DEGREE",
    "SOFTSIGN_BOUND",
    "abs_and_relu",
    "clipped_relu",
    "elu",
    "gelu",
    "hard_sigmoid",
    "hard_silu",
    "log1p_coefficients",
    "polynomial",
    "silu",
    "softplus",
    "softsign",
]
