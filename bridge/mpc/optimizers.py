"""Keras 3's SGD, Adam and RMSprop on secret-shared parameters, gradients and optimizer state.

The update rules are Keras 3's (``keras/src/optimizers/{sgd,adam,rmsprop}.py``); the
plaintext twins are in ``bridge.reference_train``.  What changes under MPC is only
how the numbers are represented:

  * Weights, gradients and RMSprop's momentum are fixed point with f fractional bits
    (``Numerics.frac_bits``, 16 by default); Adam's first moment m has f + 8 (0.1 g must
    keep its precision for small g: m / sqrt(v) multiplies m's rounding by up to 2^20),
    RMSprop's centred average a has wide/2 = 20 bits (so a^2 is exact at v's bits).
  * Second moments v (averages of g^2) are kept with ``wide_bits(f)`` = 2f + 8 = 40
    fractional bits: g^2 is exact at 2f bits, and Adam adds only (1 - beta_2) g^2 =
    0.001 g^2 per step, which at f bits would vanish for any |g| < 0.13.
  * Multiplying by a public constant c (1 - beta, the learning rate, the bias
    correction) keeps 12 significant bits of c and truncates the shared factor first,
    so the ring value before truncation stays near |x c| 2^(out_bits + 12)
    (``scale``): the truncation failure probability of ``protocol.truncate`` is then
    about |x c| 2^(out_bits - 51) per element, 2^-21 for (1 - beta_2) v with v = 1.
  * m / sqrt(v) and g / sqrt(v + eps) are ``functions.div_sqrt`` on [2^-wide, 2^8]: v is
    read as at least 2^-40 (one unit) and at most 256 (an RMS gradient of 16); relative
    error 2^-12; the numerator multiplies the normalised 1/sqrt(m) in (1/4, 1], never the
    large 1/sqrt(v), so the product stays far inside the ring.
    Adam's 1/(sqrt(v) + eps) is y / (1 + eps y) with y = 1/sqrt(v), the second factor
    by ``functions.reciprocal`` on [1, 1 + eps 2^(wide/2)] (2 Newton steps for the
    default eps = 1e-7).

Error of one step (f = 16): the update direction m / (sqrt(v) + eps) (Adam) or
g / sqrt(v + eps) (RMSprop) is within 2^-12 relative of the exact rule applied to the
same shared state, plus 2^-15 absolute; the weight change lr * direction is rounded
to 2^-f (one unit, 1.5e-5: 1.5% of a default Adam step lr = 1e-3).  The state itself
differs from float64's by its own rounding: m by 2^-16, v by 2^-40 per step.
A gradient below 2^-16 is zero in fixed point; where Keras would still take a full
step lr * sign(g) with Adam, this takes none.

Cost per step (measured, ``tests/training/test_optimizers.py``), per parameter element,
sent by one compute party: Adam 0.92 kB in 27 rounds, RMSprop 0.81 kB in 20 rounds (21
centred), 13 comparisons inside ``div_sqrt`` being most of it; the dealer sends about
1.5 kB.  SGD is local arithmetic only.  Every parameter tensor is updated in one call,
so the rounds do not grow with the number of tensors.  On the digits MLP (64-64-10,
4,810 parameters, 43 batches of 32 per epoch) 2 epochs of Adam sent 412 MB in 10,492
rounds per compute party and took 52 s on torch-spdz (2-core host); the optimizer's
share is 4,810 x 0.92 kB = 4.4 MB of the 4.8 MB per step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bridge.ir import AdamSpec, RMSpropSpec, SGDSpec
from bridge.mpc.functions import div_sqrt, reciprocal
from bridge.mpc.party import PartyContext
from bridge.mpc.protocol import (
    Masked,
    Shared,
    add,
    add_public,
    beaver,
    mul,
    mul_public_int,
    neg,
    sub,
    truncate,
)

#: significant bits kept of a public constant in ``scale``
CONSTANT_BITS = 12
#: the largest second moment inv_sqrt reads exactly: 2^8 = 256, an RMS gradient of 16
V_MAX_EXP = 8
OptimizerSpec = SGDSpec | AdamSpec | RMSpropSpec


def wide_bits(frac_bits: int, compare_bits: int = 64) -> int:
    """Fractional bits of second moments: 2f + 8, even, and small enough that inv_sqrt's
    comparisons of values up to 2^V_MAX_EXP fit in ``compare_bits``."""
    bits = min(2 * frac_bits + 8, compare_bits - V_MAX_EXP - 8)
    return bits - bits % 2


def inv_sqrt_range(frac_bits: int, compare_bits: int = 64) -> tuple[int, int]:
    """(lo_exp, hi_exp) of the second moments' inv_sqrt: [2^-wide, >= 2^V_MAX_EXP]."""
    lo = -wide_bits(frac_bits, compare_bits)
    return lo, lo + 4 * math.ceil((V_MAX_EXP - lo) / 4)


def check_numerics(spec: OptimizerSpec, frac_bits: int, compare_bits: int) -> None:
    """Refuse numerics this optimizer cannot run under, saying what to change."""
    if isinstance(spec, SGDSpec):
        return
    wide = wide_bits(frac_bits, compare_bits)
    lo, hi = inv_sqrt_range(frac_bits, compare_bits)
    if wide < 2 * frac_bits or hi + wide + 2 > compare_bits - 1:
        raise ValueError(
            f"{type(spec).__name__[:-4]} needs second moments at {2 * frac_bits}+ fractional bits compared up to "
            f"2^{V_MAX_EXP}; Numerics(frac_bits={frac_bits}, compare_bits={compare_bits}) leaves too little room. "
            "Use compare_bits=64 (the default) or a smaller frac_bits."
        )


# -- fixed-point helpers ------------------------------------------------------------------------

def rescale(ctx: PartyContext, x: Shared, from_bits: int, to_bits: int) -> Shared:
    """[x] from ``from_bits`` to ``to_bits`` fractional bits: an exact shift left, or truncation."""
    if to_bits >= from_bits:
        return mul_public_int(ctx, x, ctx.public(np.array(1 << (to_bits - from_bits), dtype=np.int64)))
    return truncate(ctx, x, from_bits - to_bits)


def scale(ctx: PartyContext, x: Shared, c: float, x_bits: int, out_bits: int) -> Shared:
    """[c x] at ``out_bits`` fractional bits, for x at ``x_bits`` and a public real c.

    c is encoded with CONSTANT_BITS significant bits (relative error 2^-12); x is first
    truncated to what the product needs (out_bits + log2|c| + 2 bits), so the value
    truncated last is about |c x| 2^(out_bits + CONSTANT_BITS) in ring units.
    """
    k = ctx.kernels
    if c == 0:
        return Shared(k.zeros(k.shape(x.share)))
    q = math.floor(math.log2(abs(c)))
    t = CONSTANT_BITS - 1 - q
    encoded = int(round(c * 2.0**t))
    keep = max(0, min(x_bits, out_bits + q + 2))
    x = rescale(ctx, x, x_bits, keep)
    product = mul_public_int(ctx, x, ctx.public(np.array(encoded, dtype=np.int64)))
    return rescale(ctx, product, keep + t, out_bits)


def _flat(ctx: PartyContext, tensors: Mapping[str, Shared]) -> tuple[Shared, list[tuple[str, tuple[int, ...], int]]]:
    """Every tensor flattened into one vector (so one protocol call serves all parameters)."""
    k = ctx.kernels
    layout, parts = [], []
    for name in sorted(tensors):
        t = tensors[name]
        shape = k.shape(t.share)
        size = int(np.prod(shape, dtype=np.int64))
        layout.append((name, shape, size))
        parts.append(k.reshape(t.share, (size,)))
    return Shared(k.concat(parts, axis=0)), layout


def _unflat(ctx: PartyContext, x: Shared, layout: list[tuple[str, tuple[int, ...], int]]) -> dict[str, Shared]:
    k = ctx.kernels
    out, start = {}, 0
    for name, shape, size in layout:
        out[name] = Shared(k.reshape(k.gather(x.share, np.arange(start, start + size), axis=0), shape))
        start += size
    return out


# -- the update rules -----------------------------------------------------------------------------

@dataclass
class OptimizerState:
    """One party's shares of the optimizer's slots, flat over all parameters, and the step count."""

    iterations: int = 0
    slots: dict[str, Shared] = field(default_factory=dict)
    #: SGD's velocity, per parameter (SGD updates tensor by tensor, locally)
    velocity: dict[str, Shared] = field(default_factory=dict)


def sgd_step(
    ctx: PartyContext, params: dict[str, Any], velocity: dict[str, Shared], grads: Mapping[str, Shared],
    learning_rate: float, momentum: float,
) -> None:
    """Keras 3 SGD on shares: v <- m v - lr g; w <- w + v (w <- w - lr g when m = 0).

    One local truncation per parameter (m v - lr g is formed at 2f fractional bits).
    """
    lr = ctx.public(np.array(int(round(learning_rate * ctx.numerics.scale))))
    mom = ctx.public(np.array(int(round(momentum * ctx.numerics.scale))))
    with ctx.messenger.label("sgd"):
        for name, g in grads.items():
            current = params[name].value if isinstance(params[name], Masked) else params[name]
            step = neg(ctx, mul_public_int(ctx, g, lr))
            if momentum:
                if name in velocity:
                    step = add(ctx, step, mul_public_int(ctx, velocity[name], mom))
                velocity[name] = truncate(ctx, step)
                params[name] = add(ctx, current, velocity[name])
            else:
                params[name] = add(ctx, current, truncate(ctx, step))


def _second_moment(ctx: PartyContext, state: OptimizerState, g: Shared, decay: float) -> Shared:
    """v <- v + (1 - decay)(g^2 - v), v at ``wide_bits`` (g^2 exact at 2f bits, one product)."""
    k = ctx.kernels
    f = ctx.numerics.frac_bits
    wide = wide_bits(f, ctx.numerics.compare_bits)
    g2 = beaver(ctx, g, g, k.mul, k.shape(g.share))  # 2f fractional bits, no truncation
    v = scale(ctx, g2, 1.0 - decay, 2 * f, wide)
    if "v" in state.slots:
        old = state.slots["v"]
        v = add(ctx, old, sub(ctx, v, scale(ctx, old, 1.0 - decay, wide, wide)))
    state.slots["v"] = v
    return v


def _ema(ctx: PartyContext, state: OptimizerState, slot: str, g: Shared, decay: float, bits: int) -> Shared:
    """s <- s + (1 - decay)(g - s) at ``bits`` fractional bits (Keras' assign_add form; s
    starts at 0).  g arrives at f bits and is shifted up exactly."""
    g = rescale(ctx, g, ctx.numerics.frac_bits, bits)
    old = state.slots.get(slot)
    s = scale(ctx, g if old is None else sub(ctx, g, old), 1.0 - decay, bits, bits)
    s = s if old is None else add(ctx, old, s)
    state.slots[slot] = s
    return s


def moment_bits(frac_bits: int) -> int:
    """Fractional bits of Adam's first moment m: f + 8, so that 0.1 g keeps its precision for
    small g (m / sqrt(v) multiplies m's rounding by up to 2^20)."""
    return frac_bits + 8


def adam_direction(ctx: PartyContext, spec: AdamSpec, state: OptimizerState, g: Shared) -> Shared:
    """m / (sqrt(v) + eps) after updating m and v (Keras 3 Adam, amsgrad=False)."""
    f = ctx.numerics.frac_bits
    wide = wide_bits(f, ctx.numerics.compare_bits)
    lo, hi = inv_sqrt_range(f, ctx.numerics.compare_bits)
    m = _ema(ctx, state, "m", g, spec.beta_1, moment_bits(f))
    v = _second_moment(ctx, state, g, spec.beta_2)
    direction, y = div_sqrt(ctx, m, moment_bits(f), v, lo, hi, wide)
    if spec.epsilon > 0:
        # 1/(sqrt v + eps) = y / (1 + eps y), 1 + eps y in [1, 1 + eps 2^(wide/2)]
        u = add_public(ctx, scale(ctx, y, spec.epsilon, f, f), ctx.kernels.constant(ctx.numerics.scale))
        top = 1.0 + spec.epsilon * 2.0 ** (-lo / 2)
        direction = mul(ctx, direction, reciprocal(ctx, u, 1.0, max(top, 1.0 + 4.0 / ctx.numerics.scale)))
    return direction


def rmsprop_direction(ctx: PartyContext, spec: RMSpropSpec, state: OptimizerState, g: Shared) -> Shared:
    """g / sqrt(v + eps) (or sqrt(v - a^2 + eps), centered) after updating v (and a)."""
    k = ctx.kernels
    f = ctx.numerics.frac_bits
    wide = wide_bits(f, ctx.numerics.compare_bits)
    lo, hi = inv_sqrt_range(f, ctx.numerics.compare_bits)
    denominator = _second_moment(ctx, state, g, spec.rho)
    if spec.centered:
        # a at wide/2 bits, so a^2 lands exactly on v's wide bits (no truncation)
        a = _ema(ctx, state, "average", g, spec.rho, wide // 2)
        denominator = sub(ctx, denominator, beaver(ctx, a, a, k.mul, k.shape(a.share)))
    eps = ctx.kernels.constant(int(round(spec.epsilon * 2.0**wide)))
    direction, _ = div_sqrt(ctx, g, f, add_public(ctx, denominator, eps), lo, hi, wide)
    return direction


def secure_update(
    ctx: PartyContext, spec: OptimizerSpec, params: dict[str, Any], state: OptimizerState,
    grads: Mapping[str, Shared],
) -> None:
    """One Keras optimizer step on shares, in place: ``params`` get the new weights."""
    if isinstance(spec, SGDSpec):
        sgd_step(ctx, params, state.velocity, grads, spec.learning_rate, spec.momentum)
        state.iterations += 1
        return
    f = ctx.numerics.frac_bits
    state.iterations += 1
    t = state.iterations
    with ctx.messenger.label(type(spec).__name__[:-4].lower()):
        g, layout = _flat(ctx, grads)
        if isinstance(spec, AdamSpec):
            direction = adam_direction(ctx, spec, state, g)
            alpha = spec.learning_rate * math.sqrt(1.0 - spec.beta_2**t) / (1.0 - spec.beta_1**t)
            step = scale(ctx, direction, alpha, f, f)
        else:
            step = scale(ctx, rmsprop_direction(ctx, spec, state, g), spec.learning_rate, f, f)
            if spec.momentum > 0:
                if "momentum" in state.slots:
                    step = add(ctx, step, scale(ctx, state.slots["momentum"], spec.momentum, f, f))
                state.slots["momentum"] = step
        for name, delta in _unflat(ctx, step, layout).items():
            current = params[name].value if isinstance(params[name], Masked) else params[name]
            params[name] = sub(ctx, current, delta)


__all__ = [
    "OptimizerSpec",
    "OptimizerState",
    "adam_direction",
    "check_numerics",
    "inv_sqrt_range",
    "moment_bits",
    "rescale",
    "rmsprop_direction",
    "scale",
    "secure_update",
    "sgd_step",
    "wide_bits",
]
