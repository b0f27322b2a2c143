"""Federated averaging (McMahan et al., AISTATS 2017), protocol-neutral.

One round r:

1. Sample m = ceil(client_fraction * N) of the N clients uniformly without
   replacement.  Sampling is public (everyone may know who takes part), so it uses a
   NumPy ``Generator`` seeded explicitly with (seed, r), not a CSPRNG: the same seed
   gives the same participants on every machine.
2. Each sampled client trains the current global weights w on its own data (the
   ``LocalTrainer`` the front end supplies, e.g. Keras ``fit``), getting w_i from
   n_i samples.  A client that raises, or whose training outlasts
   ``round_timeout_s``, is dropped from the round and reported with the reason.
   Clients train one after another in this process (a simulation of a
   deployment); the timeout bounds each client's local training.
3. Each client builds its vector: the update d_i = w_i - w (float weights only;
   integer state such as seed counters keeps the global value), clipped to
   ``clip_norm`` if set, times its weight a_i, followed by a_i times its training
   metrics and a_i itself.  a_i = n_i (sample-count weighting); with noise on
   (DP-FedAvg, ``bridge.federated.dp``), a_i = 1 and no metrics are sent, since the
   noise covers only the clipped update.
4. The aggregator (``TrustedAggregator`` or ``SecureAggregator``) returns
   S = sum_i a_i [d_i, metrics_i, 1] over the clients whose vectors arrived, with
   N(0, (z C)^2) noise on the update part when ``noise_multiplier`` z > 0.
5. w <- w + S_d / S_a, and the round's metrics are S_m / S_a: the weighted averages.

Fewer than ``min_clients`` usable clients at step 2 or 4 raises
``TooFewClientsError``; with secure aggregation nothing is revealed then.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bridge.federated.aggregate import (
    Aggregate,
    Aggregator,
    FailureInjector,
    NoiseSpec,
    TooFewClientsError,
    dropped_clause,
)
from bridge.federated.dp import PrivacyLedger, clip_update


class FedAvgConfig(BaseModel):
    """What a federated run was asked to do, validated once at the edge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rounds: int = Field(ge=1)
    client_fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    min_clients: int = Field(default=2, ge=1)
    clip_norm: float | None = Field(default=None, gt=0.0)
    noise_multiplier: float = Field(default=0.0, ge=0.0)
    delta: float = Field(default=1e-5, gt=0.0, lt=1.0)
    round_timeout_s: float | None = Field(default=None, gt=0.0)
    seed: int = 0

    @model_validator(mode="after")
    def _noise_needs_clipping(self) -> "FedAvgConfig":
        if self.noise_multiplier > 0 and self.clip_norm is None:
            raise ValueError(
                f"noise_multiplier={self.noise_multiplier} needs clip_norm: the noise is calibrated to "
                "the clipped update's norm. Pass clip_norm=... (e.g. 1.0), or noise_multiplier=0."
            )
        return self

    @property
    def differentially_private(self) -> bool:
        return self.noise_multiplier > 0


@dataclass(frozen=True)
class LocalResult:
    """What a client's local training produced: its new weights, sample count and metrics."""

    weights: list[np.ndarray]
    num_samples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


class LocalTrainer(Protocol):
    """Trains the global weights on one client's data, in plaintext, at that client."""

    def __call__(self, client: str, weights: Sequence[np.ndarray], round_index: int) -> LocalResult: ...


@dataclass(frozen=True)
class RoundResult:
    """One finished round: the new global weights and what happened."""

    round_index: int
    weights: list[np.ndarray]
    sampled: tuple[str, ...]
    included: tuple[str, ...]
    #: client -> why it is not in the aggregate (failed, timed out, share lost)
    dropped: Mapping[str, str]
    #: sample-weighted averages of the clients' training metrics (empty with DP)
    metrics: Mapping[str, float]
    aggregate: Aggregate
    #: (epsilon, delta) spent up to and including this round; None without noise
    epsilon: float | None = None
    wall_s: float = 0.0


class WeightLayout:
    """Flattens the float weights of a model into one float64 vector, and back."""

    def __init__(self, weights: Sequence[np.ndarray]) -> None:
        self.shapes = [np.shape(w) for w in weights]
        self.dtypes = [np.asarray(w).dtype for w in weights]
        self.averaged = [np.issubdtype(d, np.floating) for d in self.dtypes]
        self.size = sum(int(np.prod(s)) for s, a in zip(self.shapes, self.averaged) if a)

    def flatten(self, weights: Sequence[np.ndarray]) -> np.ndarray:
        if len(weights) != len(self.shapes):
            raise ValueError(f"expected {len(self.shapes)} weight arrays, received {len(weights)}")
        parts = [np.asarray(w, dtype=np.float64).ravel() for w, a in zip(weights, self.averaged) if a]
        return np.concatenate(parts) if parts else np.zeros(0)

    def unflatten(self, weights: Sequence[np.ndarray], flat: np.ndarray) -> list[np.ndarray]:
        """``weights`` with the averaged arrays replaced by the values of ``flat``, each in its own dtype."""
        if flat.shape != (self.size,):
            raise ValueError(f"expected {self.size} weight values, received {flat.shape}")
        out, offset = [], 0
        for w, shape, dtype, averaged in zip(weights, self.shapes, self.dtypes, self.averaged):
            if not averaged:
                out.append(np.array(w, copy=True))
                continue
            n = int(np.prod(shape))
            out.append(flat[offset : offset + n].reshape(shape).astype(dtype))
            offset += n
        return out

    def apply(self, weights: Sequence[np.ndarray], delta: np.ndarray) -> list[np.ndarray]:
        """``weights`` plus ``delta`` on the averaged arrays, each in its own dtype."""
        return self.unflatten(weights, self.flatten(weights) + delta)


def clients_per_round(num_clients: int, fraction: float) -> int:
    return max(1, math.ceil(fraction * num_clients - 1e-9))


def sample_clients(clients: Sequence[str], fraction: float, seed: int, round_index: int) -> tuple[str, ...]:
    """The round's participants: a public, seeded uniform sample without replacement, in roster order."""
    m = clients_per_round(len(clients), fraction)
    if m >= len(clients):
        return tuple(clients)
    chosen = np.random.default_rng([seed, round_index]).choice(len(clients), size=m, replace=False)
    return tuple(clients[i] for i in sorted(chosen))


class FedAvg:
    """Runs FedAvg rounds with a given local trainer and aggregator (see the module docstring)."""

    def __init__(
        self,
        clients: Sequence[str],
        trainer: LocalTrainer,
        aggregator: Aggregator | None,
        config: FedAvgConfig,
        failure_injector: FailureInjector | None = None,
    ) -> None:
        if len(set(clients)) != len(clients) or not clients:
            raise ValueError(f"clients must be a non-empty list of distinct names, received {list(clients)}")
        self.clients = tuple(clients)
        self.trainer = trainer
        self.aggregator = aggregator
        self.config = config
        self.failure_injector = failure_injector
        per_round = clients_per_round(len(clients), config.client_fraction)
        if per_round < config.min_clients:
            raise ValueError(
                f"client_fraction={config.client_fraction} of {len(clients)} clients samples {per_round} per "
                f"round, fewer than min_clients={config.min_clients}. Raise client_fraction, add clients, "
                "or lower min_clients."
            )
        self.ledger = (
            PrivacyLedger(config.noise_multiplier, len(clients), config.delta) if config.differentially_private else None
        )

    # -- step 2: local training, with failures and timeouts ---------------------------------
    def _train_one(self, client: str, weights: list[np.ndarray], round_index: int) -> LocalResult:
        if self.failure_injector is not None:
            self.failure_injector(round_index, client, "train")
        return self.trainer(client, weights, round_index)

    def _train(self, client: str, weights: list[np.ndarray], round_index: int) -> LocalResult:
        """The client's result, or an exception saying why it is dropped."""
        timeout = self.config.round_timeout_s
        if timeout is None:
            return self._train_one(client, weights, round_index)
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = self._train_one(client, weights, round_index)
            except BaseException as exc:  # noqa: BLE001 - reported as the client's drop reason
                box["error"] = exc

        # A client that overruns is abandoned: its thread may finish later, and its result is ignored.
        thread = threading.Thread(target=work, name=f"client-{client}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"local training took longer than round_timeout_s={timeout:g} s")
        if "error" in box:
            raise box["error"]
        return box["result"]

    # -- step 3: a client's vector --------------------------------------------------------------
    def client_vector(
        self,
        client: str,
        weights: list[np.ndarray],
        round_index: int,
        layout: WeightLayout,
        metric_names: tuple[str, ...] | None,
    ) -> tuple[np.ndarray, tuple[str, ...]]:
        """Train ``client`` and build its vector a_i [d_i, metrics_i, 1]; raises why it cannot.

        ``metric_names``: the names every client must report (None: take this client's);
        returns the vector and the names used.
        """
        cfg = self.config
        result = self._train(client, weights, round_index)
        update = layout.flatten(result.weights) - layout.flatten(weights)
        if not np.all(np.isfinite(update)):
            raise FloatingPointError("its update contains NaN or infinite values (local training diverged)")
        if cfg.clip_norm is not None:
            update, _ = clip_update(update, cfg.clip_norm)
        if cfg.differentially_private:
            return np.concatenate([update, [1.0]]), ()
        names = tuple(sorted(result.metrics)) if metric_names is None else tuple(metric_names)
        if set(result.metrics) != set(names):
            raise ValueError(f"it reported the metrics {sorted(result.metrics)}; every client must report {list(names)}")
        values = [float(result.metrics[n]) for n in names]
        if not np.all(np.isfinite(values)):
            raise ValueError(f"its metrics {dict(result.metrics)} lack {names} or are not finite")
        a = float(result.num_samples)
        if a <= 0:
            raise ValueError(f"it reported {result.num_samples} training samples")
        return np.concatenate([a * update, a * np.asarray(values), [a]]), names

    def vector_length(self, layout: WeightLayout, metric_names: Sequence[str]) -> int:
        """The public length of every client's vector: the update, the metrics (none with DP), the weight."""
        return layout.size + (0 if self.config.differentially_private else len(metric_names)) + 1

    def noise(self, layout: WeightLayout) -> NoiseSpec | None:
        cfg = self.config
        return NoiseSpec(cfg.noise_multiplier * cfg.clip_norm, layout.size) if cfg.differentially_private else None

    # -- one round ------------------------------------------------------------------------------
    def run_round(
        self,
        round_index: int,
        weights: Sequence[np.ndarray],
        on_client_done: Callable[[str, bool], None] | None = None,
    ) -> RoundResult:
        start = time.perf_counter()
        cfg = self.config
        if self.aggregator is None:
            raise ValueError("this FedAvg has no aggregator; bridge.federated.distributed runs its rounds")
        weights = [np.asarray(w) for w in weights]
        layout = WeightLayout(weights)
        sampled = sample_clients(self.clients, cfg.client_fraction, cfg.seed, round_index)
        dropped: dict[str, str] = {}
        vectors: dict[str, np.ndarray] = {}
        metric_names: tuple[str, ...] | None = None
        for client in sampled:
            try:
                vectors[client], metric_names = self.client_vector(client, weights, round_index, layout, metric_names)
                ok = True
            except Exception as exc:  # noqa: BLE001 - any client failure drops that client only
                dropped[client] = f"{type(exc).__name__}: {exc}"
                ok = False
            if on_client_done is not None:
                on_client_done(client, ok)
        if len(vectors) < cfg.min_clients:
            raise TooFewClientsError(
                f"round {round_index + 1}: {len(vectors)} of {len(sampled)} sampled clients finished local "
                f"training, fewer than min_clients={cfg.min_clients}.{dropped_clause(dropped)} "
                "Fix the failing clients, raise round_timeout_s, or lower min_clients."
            )
        aggregate = self.aggregator.aggregate(
            round_index, vectors, noise=self.noise(layout), min_clients=cfg.min_clients,
            failure_injector=self.failure_injector,
        )
        dropped.update(aggregate.dropped)
        return self.finish_round(round_index, weights, sampled, aggregate, dropped, metric_names or (), start)

    def finish_round(
        self,
        round_index: int,
        weights: list[np.ndarray],
        sampled: tuple[str, ...],
        aggregate: Aggregate,
        dropped: Mapping[str, str],
        metric_names: Sequence[str],
        start: float,
    ) -> RoundResult:
        """Step 5: the new global weights and the round's averaged metrics from the opened sum."""
        cfg = self.config
        layout = WeightLayout(weights)
        total = aggregate.total
        weight_sum = float(total[-1])
        new_weights = layout.apply(weights, total[: layout.size] / weight_sum)
        metrics: dict[str, float] = {}
        if not cfg.differentially_private and metric_names:
            values = total[layout.size : layout.size + len(metric_names)] / weight_sum
            metrics = {n: float(v) for n, v in zip(metric_names, values)}
        epsilon = None
        if self.ledger is not None:
            self.ledger.record_round(len(sampled))
            epsilon = self.ledger.epsilon
        return RoundResult(
            round_index=round_index,
            weights=new_weights,
            sampled=sampled,
            included=aggregate.included,
            dropped=dict(dropped),
            metrics=metrics,
            aggregate=aggregate,
            epsilon=epsilon,
            wall_s=time.perf_counter() - start,
        )
