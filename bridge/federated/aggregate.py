"""What an aggregator does in a FedAvg round, and the trusted (non-secure) one.

An aggregator receives one float64 vector per client and returns their sum, plus
Gaussian noise on a leading slice when differential privacy is on.  FedAvg
(``bridge.federated.fedavg``) builds the vectors and divides the sum afterwards;
it never needs to know how the sum was computed.

``TrustedAggregator`` is *a trusted aggregator that sees every client's update in
the clear*: use it only where the model owner may see individual updates
(``secure_aggregation=False``).  ``SecureAggregator`` (``bridge.federated.secure_sum``)
reveals only the sum.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from bridge.federated.dp import csprng_gaussian

#: ``injector(round_index, client, phase)``: raising (or sleeping) simulates a client
#: failing (or stalling) at ``phase``: "train" (before local training) or "mid_share"
#: (after its share reached the first aggregator, before the second).
FailureInjector = Callable[[int, str, str], None]


class TooFewClientsError(RuntimeError):
    """Fewer clients than ``min_clients`` contributed to a round; nothing was revealed."""


def dropped_clause(dropped: Mapping[str, str]) -> str:
    """The tail of a too-few-clients error: each dropped client and why, so the user can fix that client."""
    reasons = "".join(f"\n  {client}: {why}" for client, why in dropped.items())
    return f" Dropped:{reasons}" if reasons else ""


@dataclass(frozen=True)
class NoiseSpec:
    """Gaussian noise N(0, std^2) on the first ``length`` entries of the sum."""

    std: float
    length: int


@dataclass(frozen=True)
class Aggregate:
    """The (noised) sum of the included clients' vectors, and what it cost."""

    total: np.ndarray
    included: tuple[str, ...]
    #: clients that were asked to contribute but whose contribution did not arrive, with why
    dropped: Mapping[str, str] = field(default_factory=dict)
    #: bytes each aggregating party sent (to its peer and the model owner), max over them;
    #: None where the aggregators run in other processes (each counts its own traffic)
    bytes_per_aggregator: int | None = 0
    #: rounds of the aggregating parties (None: counted in their own processes)
    rounds: int | None = 0
    #: bytes all clients uploaded together (None: counted in their own processes)
    upload_bytes: int | None = 0
    #: bytes this process's own party sent in the round (one process per party), else None
    party_bytes: int | None = None


class Aggregator(Protocol):
    """Sums client vectors; ``secure`` says whether anyone but the clients sees a single vector."""

    secure: bool

    def aggregate(
        self,
        round_index: int,
        vectors: Mapping[str, np.ndarray],
        *,
        noise: NoiseSpec | None = None,
        min_clients: int = 1,
        failure_injector: FailureInjector | None = None,
    ) -> Aggregate: ...


class TrustedAggregator:
    """A trusted aggregator that sees every client's update in the clear.

    It sums float64 vectors exactly and, with differential privacy on, adds the
    noise itself from the CSPRNG before handing the sum to the model owner.  Nothing
    here protects an individual update from the aggregator.
    """

    secure = False

    def aggregate(
        self,
        round_index: int,
        vectors: Mapping[str, np.ndarray],
        *,
        noise: NoiseSpec | None = None,
        min_clients: int = 1,
        failure_injector: FailureInjector | None = None,
    ) -> Aggregate:
        included = tuple(vectors)
        if len(included) < min_clients:
            raise TooFewClientsError(
                f"round {round_index + 1}: {len(included)} client update(s) reached the aggregator, "
                f"fewer than min_clients={min_clients}; the round is not aggregated."
            )
        total = np.sum([np.asarray(vectors[c], dtype=np.float64) for c in included], axis=0)
        if noise is not None and noise.std > 0:
            total[: noise.length] += csprng_gaussian((noise.length,), noise.std)
        upload = sum(8 * np.asarray(v).size for v in vectors.values())
        # It hands the sum to the model owner: one float64 vector, one round.
        return Aggregate(total=total, included=included, bytes_per_aggregator=8 * total.size, rounds=1, upload_bytes=upload)
