"""Differential privacy for FedAvg: clipping, CSPRNG Gaussian noise, and the accountant.

The mechanism is DP-FedAvg with user-level privacy (McMahan, Ramage, Talwar, Zhang,
"Learning Differentially Private Recurrent Language Models", ICLR 2018):

1. each sampled client clips its model update to L2 norm ``clip_norm`` (C);
2. updates are summed with equal weights (sample-count weights would let one client's
   influence, and so the noise it needs, grow without bound);
3. Gaussian noise N(0, (z C)^2) is added to the sum, z = ``noise_multiplier``, before
   anyone sees it (with secure aggregation each aggregator adds half the variance to
   its share, see ``bridge.federated.secure_sum``);
4. the noised sum is divided by the number of contributing clients.

Accounting: Google's ``dp-accounting`` (the optional dependency ``dp``), its RDP
accountant.  Neighbouring populations differ by *replacing* one client's data (the
number of clients N is public), so the L2 sensitivity of the sum is 2C and the
accountant is given the effective multiplier z / 2.  Each round samples m of the N
clients uniformly without replacement: ``SampledWithoutReplacementDpEvent`` (Wang,
Balle, Kasiviswanathan, AISTATS 2019), or a plain ``GaussianDpEvent`` when m = N.
Dropouts are assumed independent of the clients' data; they only remove clients
from a round, which never weakens the guarantee for the sampled size m.

Known limit: the noise is drawn in floating point (Box-Muller) and then rounded to
the fixed-point grid; a discrete Gaussian would close the gap that floating-point
sampling leaves in the formal guarantee.
"""

from __future__ import annotations

import math

import numpy as np

from bridge.mpc.prg import Prg, fresh_seed


def clip_update(update: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]:
    """``update`` scaled to L2 norm at most ``clip_norm``; returns it and the norm before."""
    norm = float(np.linalg.norm(update))
    if norm > clip_norm:
        return update * (clip_norm / norm), norm
    return update, norm


def csprng_gaussian(shape: tuple[int, ...], std: float, prg: Prg | None = None) -> np.ndarray:
    """N(0, std^2) samples from AES-CTR bytes (``bridge.mpc.prg``), never from numpy.random.

    Box-Muller: u1, u2 uniform in (0, 1] from 53 random bits each;
    z = sqrt(-2 ln u1) cos(2 pi u2).
    """
    prg = prg or Prg(fresh_seed())
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.frombuffer(prg.bytes(16 * count), dtype=np.uint64).reshape(2, count)
    u = ((raw >> np.uint64(11)).astype(np.float64) + 1.0) / float(1 << 53)
    z = np.sqrt(-2.0 * np.log(u[0])) * np.cos(2.0 * math.pi * u[1])
    return (std * z).reshape(shape)


def _dp_accounting():
    try:
        import dp_accounting
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "noise_multiplier > 0 needs Google's dp-accounting library to report (epsilon, delta); "
            "install it with `pip install privacy-bridge[dp]`."
        ) from exc
    return dp_accounting


class PrivacyLedger:
    """The (epsilon, delta) spent so far by DP-FedAvg rounds, from dp-accounting's RDP accountant."""

    accountant_name = "dp_accounting.rdp.RdpAccountant (REPLACE_ONE)"

    def __init__(self, noise_multiplier: float, population: int, delta: float) -> None:
        if noise_multiplier <= 0:
            raise ValueError(f"a privacy ledger needs noise_multiplier > 0, received {noise_multiplier}")
        dp = _dp_accounting()
        self._dp = dp
        self.noise_multiplier = float(noise_multiplier)
        self.population = int(population)
        self.delta = float(delta)
        self.rounds = 0
        self._accountant = dp.rdp.RdpAccountant(neighboring_relation=dp.NeighboringRelation.REPLACE_ONE)

    def round_event(self, sample_size: int):
        """One round's DpEvent: Gaussian with multiplier z/2 (sensitivity 2C), subsampled if m < N."""
        gaussian = self._dp.GaussianDpEvent(self.noise_multiplier / 2.0)
        if sample_size >= self.population:
            return gaussian
        return self._dp.SampledWithoutReplacementDpEvent(self.population, sample_size, gaussian)

    def record_round(self, sample_size: int) -> None:
        self._accountant.compose(self.round_event(sample_size))
        self.rounds += 1

    @property
    def epsilon(self) -> float:
        if self.rounds == 0:
            return 0.0
        return float(self._accountant.get_epsilon(self.delta))
