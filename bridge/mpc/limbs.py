"""Exact Z_2^64 matmul from float64 products of small limbs: the plan both backends follow.

Frameworks have fast float64 matmuls (BLAS, cuBLAS) and slow or missing int64 ones.
A 64-bit word split into limbs x = sum_i d_i 2^(w i) mod 2^64 gives

    a @ b = sum over t < L of 2^(w t) * S_t  (mod 2^64),   S_t = sum_{i + j = t} A_i @ B_j,

where the pairs with i + j >= L vanish (shifted by 64 bits or more).  A backend stacks
A's limbs along the rows, so that one float64 matmul [A_0; ...; A_{L-1-j}] @ B_j gives
every product with B_j, and adds the products of each S_t in float64.  That is exact
as long as every partial sum is an integer of magnitude at most 2^53:
(pairs added) * (K) * max|d_i e_j| <= 2^53.  Longer sums are cut along K
(``chunk_size``) and over pairs (``pairs_per_sum``), and added in int64.

Two layouts (both exact for every input, tests in tests/backends/test_ring_kernels.py):
  * ``limbs``: three balanced limbs of widths 22, 22, 20, |d| <= 2^21: six products'
    worth of float64 work; extraction needs shifts and masks.  2^11 terms per call.
  * ``limbs16``: four unsigned 16-bit limbs, read off the int64 words by a dtype view
    (no arithmetic): ten products' worth of work, 2^21 terms per call.
Which wins on a host, against the framework's own int64 matmul, is measured
(``bridge.mpc.calibration``), not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

MANTISSA_BITS = 53


@dataclass(frozen=True)
class LimbScheme:
    name: str
    width: int  # bits per limb (the top limb holds what is left of 64)
    count: int  # limbs
    digit_bits: int  # log2 of the largest |digit|

    @property
    def max_terms(self) -> int:
        """Products of two digits one float64 dot product may sum and stay exact."""
        return 1 << (MANTISSA_BITS - 2 * self.digit_bits)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(min(self.width, 64 - self.width * i) for i in range(self.count))

    @property
    def products(self) -> int:
        """Float64 matmuls' worth of work per K: the pairs i + j < count."""
        return self.count * (self.count + 1) // 2


#: balanced digits in [-2^21, 2^21) (the top one in [-2^19, 2^19))
LIMBS22 = LimbScheme("limbs", 22, 3, 21)
#: unsigned digits in [0, 2^16): (2^16 - 1)^2 < 2^32
LIMBS16 = LimbScheme("limbs16", 16, 4, 32 // 2)
SCHEMES = {s.name: s for s in (LIMBS22, LIMBS16)}


def chunk_size(k: int, scheme: LimbScheme) -> int:
    """K cut into equal chunks that one pair of limbs may sum exactly."""
    chunks = -(-k // scheme.max_terms)
    return -(-k // chunks)


def pairs_per_sum(chunk: int, scheme: LimbScheme) -> int:
    """How many products A_i @ B_j of one K-chunk may be added in float64 and stay exact."""
    return max(1, scheme.max_terms // max(1, chunk))
