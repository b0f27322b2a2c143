"""Fixed-point encoding: real v -> round(v * 2^f) in Z_2^64, checked before anything is shared."""

from __future__ import annotations

import numpy as np

from bridge.ir import Numerics


class FixedPointError(ValueError):
    """A value cannot be represented: NaN, inf or outside the fixed-point range."""


def encode(value: np.ndarray, numerics: Numerics, what: str = "value") -> np.ndarray:
    """Encode reals as ring elements; refuse NaN, inf and out-of-range values by name."""
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise FixedPointError(
            f"{what} contains {bad} NaN or infinite entries; secret sharing needs finite numbers. "
            "Clean or impute the data first."
        )
    limit = numerics.max_abs_value
    peak = float(np.max(np.abs(array))) if array.size else 0.0
    if peak >= limit:
        raise FixedPointError(
            f"{what} has a value of magnitude {peak:g}, outside the fixed-point range "
            f"|v| < {limit:g} (ring_bits={numerics.ring_bits}, frac_bits={numerics.frac_bits}). "
            "Rescale the data, or lower Numerics.frac_bits."
        )
    return np.round(array * numerics.scale).astype(np.int64)


def decode(ring: np.ndarray, numerics: Numerics) -> np.ndarray:
    return np.asarray(ring, dtype=np.int64).astype(np.float64) / numerics.scale


def encode_public(value: float, numerics: Numerics) -> int:
    """A public constant in fixed point, as a Python int."""
    return int(round(float(value) * numerics.scale))
