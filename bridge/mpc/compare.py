"""Exact secure comparison [x >= 0] and bit injection [b * x].

Comparison (dealer-assisted, after Damgard et al. 2006 / SecureNN's private compare,
with a 4-ary carry tree and multi-input Beaver products over GF(2)):

Let k = Numerics.compare_bits and x in [-2^(k-1), 2^(k-1)) (the whole ring for k=64).
  1. The dealer draws r uniform (arithmetic shares, free: seeded) and gives XOR
     shares of its bits r_0..r_{k-1}, bit-sliced (k bits per element to P1).
  2. y = x + 2^(k-1) lies in [0, 2^k) and y >= 2^(k-1)  <=>  x >= 0.
     Open c = y + r mod 2^k (one round, k bits per element).
  3. bit_{k-1}(y) = c_{k-1} xor r_{k-1} xor [c mod 2^(k-1) < r mod 2^(k-1)]
     (the borrow out of the low bits of c - r).
  4. [c_low < r_low] with c public and r's bits shared: leaves lt_i = !c_i & r_i and
     eq_i = !(c_i xor r_i) are local; groups of four merge as
        lt = lt3 ^ eq3 lt2 ^ eq3 eq2 lt1 ^ eq3 eq2 eq1 lt0,   eq = eq3 eq2 eq1 eq0
     in ONE round per level: every variable is opened once masked, e_v = v ^ m_v,
     and each monomial prod_{v in S} v = xor_{T subset S} prod_{S\\T} e_v & [m_T],
     with the dealer sharing the mask products m_T.  Levels: ceil(log4(k-1)), i.e.
     3 for k = 64.
Rounds: 1 + ceil(log4(k - 1)).  Bytes per element per compute party:
  k/8 (packed to 8/16/32/64 bits) + sum over levels of (variables x groups) / 8.
Bits are bit-sliced: each int64 word holds one bit position of 64 elements, so the
tree's ANDs and XORs run 64 elements per machine operation.

Bit injection [b * x] (b XOR-shared, x arithmetic), one round:
  the dealer gives a random bit s as XOR and arithmetic shares, a mask A and [A*s].
  Open d = b ^ s (1 bit) and E = x - A (8 bytes) together; then
  [s x] = E [s] + [A s] and [b x] = d x + (1 - 2d) [s x], [b] = d + (1 - 2d)[s].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from bridge.mpc.kernels import RingKernels, Tensor, bit_planes_np
from bridge.mpc.party import XOR_WORDS, PartyContext
from bridge.mpc.protocol import Shared, add_public

GROUP = 4
#: The merge of one group of four (lt_0..3, eq_0..3), as monomials over variables
#: 0..3 = lt_0..lt_3 and 4..7 = eq_0..eq_3 (index 0 least significant).
_LT_TERMS = ((3,), (7, 2), (7, 6, 1), (7, 6, 5, 0))
_EQ_TERMS = ((7, 6, 5, 4),)


@dataclass(frozen=True)
class Bits:
    """This party's XOR share of 0/1 values (the dealer holds zeros)."""

    share: Tensor


#: a word of 64 one-bits: NOT x == x ^ ALL_ONES on bit-sliced words
ALL_ONES = -1


def _take(ctx: PartyContext, t: Tensor, index: int) -> Tensor:
    return ctx.kernels.unstack(t)[index]


def _public_bits(ctx: PartyContext, bits: Tensor) -> Tensor:
    """Share a public bit tensor: P0 holds it, everyone else holds zeros."""
    if ctx.is_compute and ctx.index == 0:
        return bits
    return ctx.kernels.zeros(ctx.kernels.shape(bits))


def and_monomials(ctx: PartyContext, variables: Tensor, monomials: list[tuple[int, ...]]) -> list[Tensor]:
    """XOR shares of prod_{v in S} variables[v] for each monomial S, in one round.

    ``variables`` stacks XOR-shared bit-sliced words on axis 0 (each word holds 64
    independent bits, so AND and XOR act on 64 gates at once).  A monomial of one
    variable is returned as is; only variables that appear in a product are opened.
    """
    k = ctx.kernels
    shape = k.shape(variables)[1:]
    used = sorted({v for m in monomials if len(m) > 1 for v in m})
    slot = {v: i for i, v in enumerate(used)}
    subsets = sorted(
        {T for m in monomials if len(m) > 1 for r in range(2, len(m) + 1) for T in combinations(sorted(m), r)}
    )
    masks = ctx.corr_random_bits((len(used),) + shape, packed=True)

    def mask_products() -> Tensor:
        rows, plain = [], k.unstack(masks)
        for subset in subsets:
            acc = plain[slot[subset[0]]]
            for v in subset[1:]:
                acc = k.bit_and(acc, plain[slot[v]])
            rows.append(acc)
        return k.stack(rows, axis=0)

    products = ctx.corr_derived_bits(mask_products, (len(subsets),) + shape, packed=True) if subsets else None
    if ctx.is_dealer:  # its part is done: the results are placeholders
        return [k.zeros(shape) for _ in monomials]
    chosen = k.gather(variables, np.array(used, dtype=np.int64), axis=0)
    (opened,) = ctx.open([k.bit_xor(chosen, masks)], bits=[XOR_WORDS])
    expand = _monomial_expander(k, tuple(monomials), ctx.index == 0)
    stacked = expand(opened, masks, products if subsets else masks, variables)
    return k.unstack(stacked)


_EXPANDERS: dict[tuple[int, tuple[tuple[int, ...], ...], bool], Callable] = {}


def _monomial_expander(k: RingKernels, monomials: tuple[tuple[int, ...], ...], is_p0: bool) -> Callable:
    """The local half of ``and_monomials`` as one pure function, compiled once per structure.

    prod_{v in S} (e_v ^ m_v) = xor over T subset S of (AND of e over S minus T) & [m_T];
    the public e-products are shared between terms (memoized), [m_T] is the dealer's.
    """
    key = (id(k), monomials, is_p0)
    if key in _EXPANDERS:
        return _EXPANDERS[key]
    used = sorted({v for m in monomials if len(m) > 1 for v in m})
    slot = {v: i for i, v in enumerate(used)}
    subsets = sorted(
        {T for m in monomials if len(m) > 1 for r in range(2, len(m) + 1) for T in combinations(sorted(m), r)}
    )
    index = {T: i for i, T in enumerate(subsets)}

    def expand(opened: Tensor, masks: Tensor, products: Tensor, variables: Tensor) -> Tensor:
        e_rows, m_rows, p_rows, v_rows = (k.unstack(t) for t in (opened, masks, products, variables))
        e_products: dict[tuple[int, ...], Tensor] = {}

        def e_product(vs: tuple[int, ...]) -> Tensor:
            if vs not in e_products:
                e_products[vs] = (
                    e_rows[slot[vs[0]]] if len(vs) == 1 else k.bit_and(e_product(vs[:-1]), e_rows[slot[vs[-1]]])
                )
            return e_products[vs]

        out = []
        for monomial in monomials:
            if len(monomial) == 1:
                out.append(v_rows[monomial[0]])
                continue
            s = tuple(sorted(monomial))
            acc = e_product(s) if is_p0 else None  # the all-public term: P0 only
            for r in range(1, len(s) + 1):
                for T in combinations(s, r):
                    rest = tuple(v for v in s if v not in T)
                    shared = m_rows[slot[T[0]]] if r == 1 else p_rows[index[T]]
                    term = k.bit_and(shared, e_product(rest)) if rest else shared
                    acc = term if acc is None else k.bit_xor(acc, term)
            out.append(acc)
        return k.stack(out, axis=0)

    _EXPANDERS[key] = k.compile(expand)
    return _EXPANDERS[key]


def less_than_public(ctx: PartyContext, c_bits: Tensor, r_bits: Tensor) -> Tensor:
    """XOR shares of [c < r], bit-sliced: axis 0 is the bit position (LSB first), the
    last axis holds words of 64 elements; c is public, r is XOR-shared."""
    k = ctx.kernels
    ones = k.constant(ALL_ONES)
    # Leaves: lt_i = !c_i & r_i and eq_i = !(c_i ^ r_i), both local.
    lt = k.bit_and(r_bits, k.bit_xor(c_bits, ones))
    eq = k.bit_xor(r_bits, _public_bits(ctx, k.bit_xor(c_bits, ones)))
    while k.shape(lt)[0] > 1:
        n = k.shape(lt)[0]
        pad = (-n) % GROUP
        if pad:
            rest = k.shape(lt)[1:]
            lt = k.concat([lt, k.zeros((pad,) + rest)], axis=0)
            eq = k.concat([eq, _public_bits(ctx, k.constant(ALL_ONES, (pad,) + rest))], axis=0)
        groups = (n + pad) // GROUP
        rest = k.shape(lt)[1:]
        perm = (1, 0) + tuple(range(2, 2 + len(rest)))
        lt4 = k.transpose(k.reshape(lt, (groups, GROUP) + rest), perm)
        eq4 = k.transpose(k.reshape(eq, (groups, GROUP) + rest), perm)
        # variables on axis 0: lt_0..3 then eq_0..3, each of shape (groups, ...)
        variables = k.concat([lt4, eq4], axis=0)
        last = groups == 1
        terms = and_monomials(ctx, variables, list(_LT_TERMS) + ([] if last else list(_EQ_TERMS)))
        lt = terms[0]
        for t in terms[1 : len(_LT_TERMS)]:
            lt = k.bit_xor(lt, t)
        if not last:
            eq = terms[len(_LT_TERMS)]
    return _take(ctx, lt, 0)


def ge_zero(ctx: PartyContext, x: Shared) -> Bits:
    """XOR shares of [x >= 0]; exact for x in [-2^(k-1), 2^(k-1)), k = compare_bits."""
    k = ctx.kernels
    nbits = ctx.numerics.compare_bits
    shape = k.shape(x.share)
    n = int(np.prod(shape, dtype=np.int64))
    words = -(-n // 64)
    with ctx.messenger.label("compare"):
        r = ctx.corr_random((n,))
        r_planes = ctx.corr_derived_bits(
            lambda: ctx.public(bit_planes_np(k.to_numpy(r), nbits)), (nbits, words), packed=True
        )
        top = np.int64(1) << np.int64(nbits - 1)
        flat = k.reshape(x.share, (n,))
        y_plus_r = k.add(add_public(ctx, Shared(flat), ctx.public(np.array(top))).share, r)
        (c,) = ctx.open([y_plus_r], bits=[nbits])
        c_planes = k.unstack(ctx.public(bit_planes_np(k.to_numpy(c), nbits)))
        r_rows = k.unstack(r_planes)
        borrow = less_than_public(ctx, k.stack(c_planes[:-1], axis=0), k.stack(r_rows[:-1], axis=0))
        msb = k.bit_xor(k.bit_xor(borrow, r_rows[-1]), _public_bits(ctx, c_planes[-1]))
        return Bits(k.reshape(k.unpack_bits(msb, n), shape))


def mul_bit(ctx: PartyContext, b: Bits, x: Shared) -> tuple[Shared, Shared]:
    """([b * x], [b]) in Z_2^64 from XOR-shared b and arithmetic [x], in one round."""
    k = ctx.kernels
    shape = k.shape(x.share)
    with ctx.messenger.label("mul_bit"):
        s_bits = ctx.corr_random_bits(shape)
        s_arith = ctx.corr_derived(lambda: s_bits, shape)
        a = ctx.corr_random(shape)
        a_s = ctx.corr_derived(lambda: k.mul(a, s_bits), shape)
        if ctx.is_dealer:
            return Shared(k.zeros(shape)), Shared(k.zeros(shape))
        d, e = ctx.open([k.bit_xor(b.share, s_bits), k.sub(x.share, a)], bits=[1, 64])
        sx = k.add(k.mul(e, s_arith), a_s)
        sign = k.sub(k.constant(1), k.mul(d, k.constant(2)))  # 1 - 2d, public
        bx = k.add(k.mul(d, x.share), k.mul(sign, sx))
        b_arith = k.mul(sign, s_arith)
        if ctx.is_compute and ctx.index == 0:
            b_arith = k.add(b_arith, d)
        return Shared(bx), Shared(b_arith)


# -- exact costs (bytes sent by one compute party, rounds) -----------------------------------

def _packed(bits: int) -> int:
    return (bits + 7) // 8


def _word_bytes(bits: int) -> int:
    return 1 if bits <= 8 else 2 if bits <= 16 else 4 if bits <= 32 else 8


def ge_zero_cost(numel: int, compare_bits: int) -> tuple[int, int]:
    """(bytes, rounds) of ``ge_zero`` on ``numel`` elements, as documented above.

    Tree variables travel bit-sliced: 8 bytes per 64 elements (rounded up).
    """
    nbytes, rounds = numel * _word_bytes(compare_bits), 1
    words = -(-numel // 64)
    positions = compare_bits - 1
    while positions > 1:
        groups = -(-positions // GROUP)
        last = groups == 1
        monomials = list(_LT_TERMS) + ([] if last else list(_EQ_TERMS))
        used = {v for m in monomials if len(m) > 1 for v in m}
        nbytes += 8 * len(used) * groups * words
        rounds += 1
        positions = groups
    return nbytes, rounds


def mul_bit_cost(numel: int) -> tuple[int, int]:
    return _packed(numel) + 8 * numel, 1
