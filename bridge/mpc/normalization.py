"""Secure forward rules of LayerNormalization, LayerScale, keras.ops sum/mean and the
'exponential' activation, written once against the ring-kernel interface.

Registered in ``bridge.mpc.layers.SECURE_FORWARD``.  Errors are stated for f = 16 fractional
bits; ``tests/conformance`` checks them on both backends with tolerances derived here.

LayerNormalization, per row r of the normalized axes (N values):
  1. mean = sum(x) / N: the sum is exact; the division multiplies by round(2^(f+8) / N) and
     truncates f + 8 bits (``div_public``): relative error N 2^-(f+9) of the mean.
  2. d = x - mean (local); V = sum(d * d) from one Beaver square, *untruncated*: 2f = 32
     fractional bits, so a row of small variance keeps its digits.
  3. W = V + N eps = N (var + eps) at 2f bits (eps added exactly); no division of V, whose
     2f-bit products would leave the ring.
  4. s = 2^R sqrt(N) / sqrt(W) = 2^R / sqrt(var + eps) by ``functions.div_sqrt`` on
     [2^LN_LO_EXP, 2^LN_HI_EXP] with the public numerator 2^R sqrt(N): 1 / sqrt(var + eps) at
     f + R bits (R = LN_EXTRA_BITS = 6), so a row of large variance (small 1/sqrt) keeps 22 bits.
     Relative error 2^-12 (measured 1.4e-4 at most, ``div_sqrt``), one comparison call per row
     (not per element).
  5. y = d * s (one product, truncated f + R bits), then y * gamma (masked once) + beta.
  Rounds: 1 (square) + 19 (div_sqrt) + 1 + 1 (gamma) = 22.
  Error bound: |y_hat - y| <= 1.5e-4 |y| + 3 2^-16 + (1.5 2^-16 + N 2^-25 |mean|) / sqrt(var + eps),
  y the normalized value before gamma (|y| <= sqrt(N - 1)), then times |gamma| (plus 2^-16).  The
  third term is the inputs' encoding (2^-17) and the mean's truncation (2^-16) relative to the
  row's spread: a row of standard deviation 1e-2 has only ~650 levels at f = 16 (1e-3 measured).
  Rows with N (var + eps) outside [2^-20, 2^28] are clamped into it (eps >= 1e-6 keeps the floor;
  the ceiling is a variance of 2^28 / N, 3.5e5 for N = 768).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bridge.ir import Node
from bridge.ir.shapes_attention import layer_norm_axes, reduced_axes
from bridge.mpc import functions
from bridge.mpc.compare import ge_zero, mul_bit
from bridge.mpc.party import PartyContext
from bridge.mpc.protocol import (
    Masked,
    Shared,
    add,
    add_constant,
    add_public,
    beaver,
    mul,
    mul_public,
    mul_public_int,
    square,
    sub,
    truncate,
)

#: range of layer_norm's inverse square root of N (var + eps): [2^-20 (~9.5e-7), 2^28]
LN_LO_EXP, LN_HI_EXP = -20, 28
#: extra fractional bits of layer_norm's 1/sqrt(var + eps)
LN_EXTRA_BITS = 6
#: extra bits of the public reciprocal in ``div_public``
DIV_EXTRA_BITS = 8
#: exponential saturates at e^EXP_CEIL: e^x = e^min(x, 0) * (T(t))^(2^EXP_SQUARINGS), t = clamp(x, 0, CEIL) / CEIL
EXP_CEIL = 8.0
EXP_SQUARINGS = 3
#: degree of the Taylor polynomial of e^t on [0, 1] (remainder e / 9! = 7.5e-6 relative)
EXP_TAYLOR_DEGREE = 8


def _value(p: Shared | Masked) -> Shared:
    return p.value if isinstance(p, Masked) else p


def div_public(ctx: PartyContext, x: Shared, divisor: int, extra_bits: int = DIV_EXTRA_BITS) -> Shared:
    """[x / divisor] for a public positive integer: times round(2^(f + extra) / divisor), then
    truncation by f + extra bits.  Relative error divisor 2^-(f + extra + 1), plus one unit;
    the truncation sees |x| 2^(f + extra) / divisor ring units (failure probability that over 2^63)."""
    bits = ctx.numerics.frac_bits + extra_bits
    factor = int(round((1 << bits) / divisor))
    return truncate(ctx, mul_public_int(ctx, x, ctx.public(np.array(factor, dtype=np.int64))), bits)


def _full_axes(axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(a + 1 for a in axes)


def _broadcast_param(ctx: PartyContext, p: Shared | Masked, shape: tuple[int, ...]) -> Shared | Masked:
    from bridge.mpc.layers import reshape_param

    return reshape_param(ctx.kernels, p, shape)


def layer_norm(env: Any, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    ctx, k, op = env.ctx, env.ctx.kernels, node.op
    f = ctx.numerics.frac_bits
    x = xs[0]
    shape = k.shape(x.share)
    axes = _full_axes(layer_norm_axes(op, len(shape) - 1))
    count = math.prod(shape[a] for a in axes)
    with ctx.messenger.label("layer_norm"):
        mean = div_public(ctx, Shared(k.sum(x.share, axis=axes, keepdims=True)), count)
        d = sub(ctx, x, Shared(k.broadcast_to(mean.share, shape)))
        row_shape = k.shape(mean.share)
        squares = beaver(ctx, d, d, k.mul, shape)  # 2f fractional bits, untruncated
        # 1 / sqrt(var + eps) = sqrt(N) / sqrt(V + N eps): no division of the 2f-bit sum
        wide = 2 * f
        total = add_public(ctx, Shared(k.sum(squares.share, axis=axes, keepdims=True)),
                           ctx.public(np.array(int(round(count * op.epsilon * 2.0**wide)), dtype=np.int64)))
        root_n = int(round(math.sqrt(count) * 2.0 ** (f + LN_EXTRA_BITS)))
        numerator = add_public(ctx, Shared(k.zeros(row_shape)), ctx.public(np.array(root_n, dtype=np.int64)))
        scale, _ = functions.div_sqrt(ctx, numerator, f, total, LN_LO_EXP, LN_HI_EXP, wide)
        y = truncate(ctx, beaver(ctx, d, scale, k.mul, shape), f + LN_EXTRA_BITS)
        normalized = y  # x-hat: the backward pass reads it and the scale (at f + LN_EXTRA_BITS bits)
        params = [1] * len(shape)
        for a in axes:
            params[a] = shape[a]
        y = mul(ctx, y, _broadcast_param(ctx, env.param(node, "gamma"), tuple(params)))
        beta = _value(env.param(node, "beta"))
        y = add(ctx, y, Shared(k.reshape(beta.share, tuple(params))))
    return y, (normalized, scale)


def layer_scale(env: Any, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    """x * gamma over the last axis: one product with the masked gamma."""
    ctx, k = env.ctx, env.ctx.kernels
    rank = len(k.shape(xs[0].share))
    gamma = env.param(node, "gamma")
    channels = k.shape(_value(gamma).share)[0]
    return mul(ctx, xs[0], _broadcast_param(ctx, gamma, (1,) * (rank - 1) + (channels,))), None


def reduce_sum(env: Any, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    """Exact: a local sum of shares."""
    k = env.ctx.kernels
    axes = _full_axes(reduced_axes(node.op, len(k.shape(xs[0].share)) - 1))
    return Shared(k.sum(xs[0].share, axis=axes, keepdims=node.op.keepdims)), None


def reduce_mean(env: Any, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    """The exact sum, then ``div_public`` (relative error N 2^-25, plus one unit)."""
    ctx, k = env.ctx, env.ctx.kernels
    shape = k.shape(xs[0].share)
    axes = _full_axes(reduced_axes(node.op, len(shape) - 1))
    total = Shared(k.sum(xs[0].share, axis=axes, keepdims=node.op.keepdims))
    return div_public(ctx, total, math.prod(shape[a] for a in axes)), None


def exponential(ctx: PartyContext, x: Shared) -> Shared:
    """e^x = e^min(x, 0) * e^clamp(x, 0, C), C = EXP_CEIL: each factor is 1 where the other is not.

    1. One comparison call on [x, x - C]: relu(x) and relu(x - C); clamp(x, 0, C) = relu(x) -
       relu(x - C) and min(x, 0) = x - relu(x) (5 rounds).
    2. e^min(x, 0): ``functions.exp`` (13 rounds; 2e-3 absolute, 256 2^-16 relative).
    3. e^t C for t in [0, 1]: Taylor of degree 8 by Horner (8 rounds; 7.5e-6 relative plus one
       unit per step), raised to 2^3 by three squarings (3 rounds; relative errors times 8).
    4. The product (1 round).  Rounds: 5 + 13 + 8 + 3 + 1 = 30 (measured).
    Error: for x <= 0 that of ``functions.exp``; for 0 < x <= C, relative 1e-3 at most (8 x
    (Taylor's 7.5e-6 + about 8 units of 2^-16 of Horner), plus three squarings' rounding);
    above C the result saturates at e^C = 2981 (so that the squarings stay far inside the ring).
    """
    k = ctx.kernels
    shape = k.shape(x.share)
    with ctx.messenger.label("exponential"):
        shifted = add_constant(ctx, x, -EXP_CEIL)
        both = Shared(k.stack([x.share, shifted.share], axis=0))
        relus, _ = mul_bit(ctx, ge_zero(ctx, both), both)
        positive, over = k.unstack(relus.share)
        clamped = Shared(k.sub(positive, over))
        negative = sub(ctx, x, Shared(positive))
        small = functions.exp(ctx, negative)
        t = mul_public(ctx, clamped, 1.0 / EXP_CEIL)
        poly = add_constant(ctx, Shared(k.zeros(shape)), 1.0 / math.factorial(EXP_TAYLOR_DEGREE))
        for power in range(EXP_TAYLOR_DEGREE - 1, -1, -1):
            poly = add_constant(ctx, mul(ctx, poly, t), 1.0 / math.factorial(power))
        for _ in range(EXP_SQUARINGS):
            poly = square(ctx, poly)
        return mul(ctx, small, poly)


def exp_rule(env: Any, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    y = exponential(env.ctx, xs[0])
    return y, y


RULES = {
    "layer_norm": layer_norm,
    "layer_scale": layer_scale,
    "reduce_sum": reduce_sum,
    "reduce_mean": reduce_mean,
    "exp": exp_rule,
}

#: parameter roles used as the fixed operand of Beaver products (masked once)
MASKED_ROLES = {"layer_norm": ("gamma",), "layer_scale": ("gamma",)}
