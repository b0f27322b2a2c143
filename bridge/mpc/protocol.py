"""Arithmetic sharing in Z_2^64: share, reveal, linear ops, Beaver products, truncation.

Notation: [x] is x additively shared between compute parties P0 and P1,
x = x0 + x1 mod 2^64; reals are fixed point with f fractional bits (Numerics).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bridge.mpc.fixedpoint import decode, encode
from bridge.mpc.kernels import Tensor
from bridge.mpc.party import PartyContext
from bridge.mpc.prg import Prg, fresh_seed


@dataclass(frozen=True)
class Shared:
    """This party's additive share of a fixed-point tensor (the dealer holds zeros)."""

    share: Tensor


@dataclass(frozen=True)
class Masked:
    """A shared operand masked once for many Beaver products (Pond's masked tensor).

    The operand y is masked by dealer randomness b and F = y - b is opened once.
    Every later product with y opens only the other operand: the dealer reuses b
    to make each fresh triple (a, b, f(a, b)).
    """

    value: Shared
    mask: Tensor  # this party's share of b (the dealer: b itself)
    opened: Tensor  # F = y - b, public


def shape_of(ctx: PartyContext, x: Shared) -> tuple[int, ...]:
    return ctx.kernels.shape(x.share)


# -- sharing and revealing ---------------------------------------------------------------

def share_input(
    ctx: PartyContext, owner: str, value: np.ndarray | None, shape: tuple[int, ...], what: str
) -> Shared | None:
    """[x] from the owner's plaintext x.

    1. The owner encodes x in fixed point (refusing NaN/inf/out-of-range by name).
    2. It draws r from a fresh CSPRNG and sends r to P0 and x - r to P1 (one round).
    Bytes: 8 per element to each compute party, from the owner.
    """
    k = ctx.kernels
    with ctx.messenger.label(f"share:{what}"):
        if ctx.name == owner:
            if value is None:
                raise ValueError(f"party {owner!r} owns {what!r} but was given no value for it")
            encoded = encode(value, ctx.numerics, what)
            mask = Prg(fresh_seed()).ring(encoded.shape)
            shares = {ctx.compute[0]: mask, ctx.compute[1]: encoded - mask}
            mine = shares.pop(ctx.name, None)
            ctx.messenger.send_many(list(shares), list(shares.values()))
            if mine is not None:
                return Shared(k.from_numpy(mine))
            return None
        if ctx.is_compute:
            return Shared(k.from_numpy(ctx.messenger.recv(owner)))
        if ctx.is_dealer:
            return Shared(k.zeros(shape))
        return None


def reveal_to(ctx: PartyContext, x: Shared | None, receivers: tuple[str, ...], what: str) -> np.ndarray | None:
    """Open [x] to ``receivers`` only: each compute party sends its share to each (one round)."""
    k = ctx.kernels
    with ctx.messenger.label(f"reveal:{what}"):
        if ctx.is_compute:
            assert x is not None
            peers = [r for r in receivers if r != ctx.name]
            mine = k.to_numpy(x.share)
            if peers:
                ctx.messenger.send_many(peers, [mine] * len(peers))
        if ctx.name not in receivers:
            return None
        total = np.zeros((), dtype=np.int64)
        with np.errstate(over="ignore"):
            for party in ctx.compute:
                part = k.to_numpy(x.share) if party == ctx.name else ctx.messenger.recv(party)
                total = total + part
        return decode(total, ctx.numerics)


# -- local linear operations ---------------------------------------------------------------

def add(ctx: PartyContext, x: Shared, y: Shared) -> Shared:
    return Shared(ctx.kernels.add(x.share, y.share))


def sub(ctx: PartyContext, x: Shared, y: Shared) -> Shared:
    return Shared(ctx.kernels.sub(x.share, y.share))


def neg(ctx: PartyContext, x: Shared) -> Shared:
    return Shared(ctx.kernels.neg(x.share))


def add_public(ctx: PartyContext, x: Shared, public: Tensor) -> Shared:
    """[x] + c for a public ring tensor c: only P0 adds it (others broadcast alike)."""
    k = ctx.kernels
    if ctx.is_compute and ctx.index == 0:
        return Shared(k.add(x.share, public))
    return Shared(k.broadcast_to(x.share, np.broadcast_shapes(k.shape(x.share), k.shape(public))))


def add_constant(ctx: PartyContext, x: Shared, value: float) -> Shared:
    """[x] + v for a public real v."""
    return add_public(ctx, x, ctx.kernels.constant(int(round(value * ctx.numerics.scale))))


def mul_public_int(ctx: PartyContext, x: Shared, public: Tensor) -> Shared:
    """[x] * c for public integers c (no rescaling needed)."""
    return Shared(ctx.kernels.mul(x.share, public))


def mul_public(ctx: PartyContext, x: Shared, values: np.ndarray | float) -> Shared:
    """[x] * v for public reals v: multiply by the encoding of v, then truncate."""
    encoded = np.round(np.asarray(values, dtype=np.float64) * ctx.numerics.scale).astype(np.int64)
    return truncate(ctx, mul_public_int(ctx, x, ctx.public(encoded)))


def truncate(ctx: PartyContext, x: Shared, bits: int | None = None) -> Shared:
    """Divide [x] by 2^bits locally (SecureML, Mohassel & Zhang 2017, Thm. 1).

    1. P0 computes x0 >> d; P1 computes -((-x1) >> d) (arithmetic shifts).
    Rounds 0, bytes 0.  If |x| < 2^l (ring units), the result is x / 2^d within
    one unit in the last place, except with probability at most 2^(l + 1 - 64) per
    element, when a wrap makes it wrong by about 2^(64 - d).  A product of two
    16-bit fixed-point values of magnitude below 2^7 has l = 46: failure
    probability 2^-17 per element; below 2^3 (typical activations), 2^-25.
    """
    d = ctx.numerics.frac_bits if bits is None else bits
    k = ctx.kernels
    if ctx.is_compute and ctx.index == 1:
        return Shared(k.neg(k.shift_right(k.neg(x.share), d)))
    return Shared(k.shift_right(x.share, d))


# -- Beaver products ---------------------------------------------------------------------------

Bilinear = Callable[[Tensor, Tensor], Tensor]


def mask_operand(ctx: PartyContext, y: Shared) -> Masked:
    """Mask y once for many products (one round, 8 bytes per element of y)."""
    k = ctx.kernels
    with ctx.messenger.label("mask"):
        b = ctx.corr_random(k.shape(y.share))
        if ctx.is_dealer:
            return Masked(y, b, k.zeros(k.shape(y.share)))
        (opened,) = ctx.open([k.sub(y.share, b)])
        return Masked(y, b, opened)


def beaver(
    ctx: PartyContext, x: Shared, y: Shared | Masked, f: Bilinear, out_shape: tuple[int, ...]
) -> Shared:
    """[f(x, y)] for a bilinear f (elementwise product, matmul, convolution).

    Beaver (1991), as in SPDZ:
      1. The dealer draws a, b and shares c = f(a, b).
      2. Open E = x - a and F = y - b (one round; F is already open if y is Masked).
      3. [z] = [c] + f(E, [b]) + f([a], F) + f(E, F), the last term added by P0
         (computed as f(E, b0 + F) so that each party runs two products).
    Rounds 1; bytes per compute party: 8 * (|x| + |y|), or 8 * |x| for a masked y.
    Dealer -> P1: 8 * |f(x, y)|.  No truncation: the caller rescales.
    """
    k = ctx.kernels
    a = ctx.corr_random(k.shape(x.share))
    if isinstance(y, Masked):
        b, y_share = y.mask, y.value.share
    else:
        b, y_share = ctx.corr_random(k.shape(y.share)), y.share
    c = ctx.corr_derived(lambda: f(a, b), tuple(out_shape))
    if ctx.is_dealer:
        return Shared(c)
    if isinstance(y, Masked):
        (e,) = ctx.open([k.sub(x.share, a)])
        opened_f = y.opened
    else:
        e, opened_f = ctx.open([k.sub(x.share, a), k.sub(y_share, b)])
    # P0 folds f(E, F) into f(E, b0 + F): two products per party instead of three.
    b_mine = k.add(b, opened_f) if ctx.index == 0 else b
    return Shared(k.add(k.add(c, f(e, b_mine)), f(a, opened_f)))


def _operand_shape(ctx: PartyContext, y: Shared | Masked) -> tuple[int, ...]:
    return ctx.kernels.shape(y.value.share if isinstance(y, Masked) else y.share)


def mul(ctx: PartyContext, x: Shared, y: Shared | Masked) -> Shared:
    """Elementwise [x * y] in fixed point: Beaver, then truncation."""
    shape = np.broadcast_shapes(shape_of(ctx, x), _operand_shape(ctx, y))
    with ctx.messenger.label("mul"):
        return truncate(ctx, beaver(ctx, x, y, ctx.kernels.mul, shape))


def matmul(ctx: PartyContext, x: Shared, y: Shared | Masked) -> Shared:
    """[x @ y] for (M, K) @ (K, N), in fixed point."""
    shape = (shape_of(ctx, x)[0], _operand_shape(ctx, y)[1])
    with ctx.messenger.label("matmul"):
        return truncate(ctx, beaver(ctx, x, y, ctx.kernels.matmul, shape))


def square(ctx: PartyContext, x: Shared) -> Shared:
    """[x^2] with a square pair (a, a^2): opens only x - a."""
    k = ctx.kernels
    with ctx.messenger.label("square"):
        a = ctx.corr_random(k.shape(x.share))
        c = ctx.corr_derived(lambda: k.mul(a, a), k.shape(x.share))
        if ctx.is_dealer:
            return truncate(ctx, Shared(c))
        (e,) = ctx.open([k.sub(x.share, a)])
        # x^2 = (e + a)^2 = e^2 + 2 e a + a^2
        z = k.add(c, k.mul(k.mul(e, a), k.constant(2)))
        if ctx.index == 0:
            z = k.add(z, k.mul(e, e))
        return truncate(ctx, Shared(z))
