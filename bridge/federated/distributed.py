"""FedAvg with every party in its own process: the clients, two aggregators, the model owner.

The in-process ``FedAvg`` simulates a deployment; here each process plays its own
party of the same rounds, over the backend's process transport (gloo for
torch-spdz, gRPC for tf-pond).  The cluster file gives the parts by role: the one
``model_owner``, the two ``compute`` parties (the aggregators), and the
``data_owner`` parties (the clients, in file order).  Every process runs the same
script with the same settings, so sampling (public, seeded), the weight layout and
the metric names are known to all without being sent.

Round r, on top of the secure sum of ``bridge.federated.secure_sum`` (unchanged):

1. The owner sends every other party a header (label ``broadcast:weights``):
   ``[GO, r]`` followed, for a sampled client, by the global weights (float64 bit
   patterns; the global model is public to the clients in FedAvg).  A client whose
   process is gone is skipped, and dropped from every later round it is sampled in.
2. A sampled client trains and shares a_i [d_i, metrics_i, 1]; if its local training
   fails it withdraws (an empty share to each aggregator), so nobody waits for it.
3. The aggregators sum what arrived from both sides; the owner opens the sum.

``finish`` sends ``[STOP, r]`` and the final weights to every client (``[STOP, r]`` to
the aggregators), so that every process leaves its loop together, also after an early
stop at the owner.  A failure anywhere (too few clients, a dead aggregator or owner)
is announced to every party, which raises an error naming it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bridge.cluster import ClusterConfig, ClusterError
from bridge.federated.aggregate import Aggregate, TooFewClientsError, dropped_clause
from bridge.federated.fedavg import FedAvg, RoundResult, WeightLayout, sample_clients
from bridge.federated.secure_sum import (
    NO_DEALER,
    AggregationParties,
    aggregator_part,
    client_part,
    encode_update,
    owner_part,
    recv_patiently,
)
from bridge.ir import Numerics, Role
from bridge.mpc.comm import CommStats, PeerError
from bridge.mpc.distributed import DistributedParty
from bridge.mpc.party import PartyContext

BROADCAST_LABEL = "broadcast:weights"
#: header kinds
STOP, GO = 0, 1


@dataclass(frozen=True)
class FederatedCluster:
    """The parts a cluster's roles give: model owner, the two aggregators, the clients."""

    owner: str
    aggregators: tuple[str, str]
    clients: tuple[str, ...]

    @classmethod
    def from_cluster(cls, config: ClusterConfig) -> "FederatedCluster":
        owners = config.with_role(Role.MODEL_OWNER)
        aggregators = config.with_role(Role.COMPUTE)
        clients = config.with_role(Role.DATA_OWNER)
        problems = []
        if len(owners) != 1:
            problems.append(f"exactly one model_owner (it has {list(owners)})")
        if len(aggregators) != 2:
            problems.append(f"exactly two compute parties, the aggregators (it has {list(aggregators)})")
        if not clients:
            problems.append("at least one data_owner, a client")
        if problems:
            raise ClusterError("federated training needs " + "; ".join(problems) + " in the cluster file")
        parts = [*owners, *aggregators]
        overlap = sorted({c for c in clients if c in parts} | ({owners[0]} & set(aggregators)))
        if overlap:
            raise ClusterError(
                f"parties {overlap} have two federated parts; give the model owner, each aggregator and each "
                "client its own party, so that no party sees a client's two shares or its own noise in the sum"
            )
        return cls(owners[0], (aggregators[0], aggregators[1]), clients)

    @property
    def parties(self) -> AggregationParties:
        return AggregationParties(aggregators=self.aggregators, owner=self.owner, client_prefix="")


@dataclass(frozen=True)
class Followed:
    """What a party other than the owner saw of one round."""

    round_index: int
    #: the owner said stop: the final global weights (clients) or None (aggregators)
    final: list[np.ndarray] | None
    stopped: bool
    #: this party's own traffic in the round
    stats: CommStats
    #: why this client withdrew from the round ("" if it took part or was not sampled)
    withdrew: str = ""


def federated_runner(backend: Any, config: ClusterConfig, party: str, numerics: Numerics) -> DistributedParty:
    """This process's party of a federated cluster, over ``backend``'s process transport."""
    from bridge.mpc.distributed import connect

    cluster = FederatedCluster.from_cluster(config)
    config.party(party)
    return DistributedParty(connect(backend, config, party), backend.make_kernels(), numerics,
                            cluster.aggregators, NO_DEALER)


class DistributedFedAvg:
    """One process's part of the FedAvg rounds (see the module docstring).

    ``fedavg`` holds the public settings and, at a client, the local trainer;
    ``metric_names`` are the names every client reports (empty with DP noise).
    """

    def __init__(
        self,
        fedavg: FedAvg,
        runner: DistributedParty,
        cluster: FederatedCluster,
        metric_names: tuple[str, ...],
        numerics: Numerics | None = None,
    ) -> None:
        if tuple(fedavg.clients) != cluster.clients:
            raise ClusterError(
                f"the clients {list(fedavg.clients)} are not the cluster's data owners {list(cluster.clients)}"
            )
        self.fedavg = fedavg
        self.runner = runner
        self.cluster = cluster
        self.party = runner.party
        self.metric_names = () if fedavg.config.differentially_private else tuple(metric_names)
        self.numerics = numerics or Numerics()
        self._gone: dict[str, str] = {}

    @property
    def is_owner(self) -> bool:
        return self.party == self.cluster.owner

    def _sampled(self, round_index: int) -> tuple[str, ...]:
        cfg = self.fedavg.config
        return sample_clients(self.cluster.clients, cfg.client_fraction, cfg.seed, round_index)

    # -- the owner ---------------------------------------------------------------------------
    def run_round(self, round_index: int, weights: list[np.ndarray]) -> RoundResult:
        """At the model owner: broadcast, wait for the opened sum, average."""
        if not self.is_owner:
            raise ValueError(f"run_round runs at the model owner {self.cluster.owner!r}; party {self.party!r} follows")
        start = time.perf_counter()
        weights = [np.asarray(w) for w in weights]
        layout = WeightLayout(weights)
        sampled = self._sampled(round_index)
        cfg = self.fedavg.config
        before = self.runner.stats.snapshot()

        def body(ctx: PartyContext) -> tuple[np.ndarray, np.ndarray | None]:
            self._broadcast(ctx, GO, round_index, layout.flatten(weights), sampled)
            return owner_part(ctx, len(sampled), cfg.min_clients, self.cluster.parties)

        mask, total = self.runner.run(body)[self.party]
        stats = self.runner.stats.since(before)
        included = tuple(c for c, keep in zip(sampled, mask, strict=True) if keep)
        dropped = {c: self._gone.get(c, "its update did not reach both aggregators: its local training failed "
                                        "(it withdrew), it crashed, or it timed out")
                   for c in sampled if c not in included}
        if total is None:
            error = TooFewClientsError(
                f"round {round_index + 1}: only {len(included)} client update(s) can be aggregated, fewer than "
                f"min_clients={cfg.min_clients}; nothing was revealed.{dropped_clause(dropped)} "
                "Fix the failing clients, or lower min_clients."
            )
            self.runner.transport.abort(f"TooFewClientsError: {error}")  # every party stops, naming why
            raise error
        aggregate = Aggregate(total=total, included=included, dropped=dropped, bytes_per_aggregator=None,
                              rounds=None, upload_bytes=None, party_bytes=stats.total_bytes(self.party))
        return self.fedavg.finish_round(round_index, weights, sampled, aggregate, dropped, self.metric_names, start)

    def finish(self, round_index: int, weights: list[np.ndarray]) -> None:
        """At the model owner: tell everyone the run is over; the clients get the final weights."""
        flat = WeightLayout(weights).flatten(weights)
        self.runner.run(lambda ctx: self._broadcast(ctx, STOP, round_index, flat, self.cluster.clients))

    def _broadcast(
        self, ctx: PartyContext, kind: int, round_index: int, flat: np.ndarray, receivers: tuple[str, ...]
    ) -> None:
        header = np.array([kind, round_index], dtype=np.int64)
        with_weights = np.concatenate([header, np.ascontiguousarray(flat, dtype=np.float64).view(np.int64)])
        with ctx.messenger.label(BROADCAST_LABEL):
            for party in (*self.cluster.clients, *self.cluster.aggregators):
                if party in self._gone:
                    continue
                try:
                    ctx.messenger.send(party, with_weights if party in receivers else header)
                except PeerError as exc:
                    if party in self.cluster.aggregators:
                        raise
                    # a client whose process is gone drops out of this and every later round
                    self._gone[party] = f"its process is gone ({exc})"

    # -- everyone else -----------------------------------------------------------------------
    def follow_round(self, round_index: int, weights: list[np.ndarray]) -> Followed:
        """At a client or an aggregator: wait for the owner's header, then play this party's part.

        ``weights`` gives the layout (the same model in every process); a client trains
        from the global weights it receives, never from its own.
        """
        if self.is_owner:
            raise ValueError("the model owner drives the rounds with run_round")
        layout = WeightLayout(weights)
        fedavg, cfg = self.fedavg, self.fedavg.config
        sampled = self._sampled(round_index)
        length = fedavg.vector_length(layout, self.metric_names)
        noise = fedavg.noise(layout)
        before = self.runner.stats.snapshot()
        is_client = self.party in self.cluster.clients

        def body(ctx: PartyContext) -> tuple[bool, list[np.ndarray] | None, str]:
            owner = self.cluster.owner
            header = recv_patiently(ctx, owner, len(self.cluster.clients) + 3)
            kind = int(header[0]) if header.ndim == 1 and header.size >= 2 else -1
            gets_weights = is_client and (kind == STOP or self.party in sampled)
            expected = layout.size + 2 if gets_weights else 2
            if kind not in (STOP, GO) or int(header[1]) != round_index or header.shape != (expected,):
                raise PeerError(
                    f"the model owner {owner!r} sent a round header of shape {header.shape} for round "
                    f"{round_index} (expected [stop/go, {round_index}] and {expected - 2} weights); "
                    "the parties are out of step: run the same script with the same settings everywhere"
                )
            received = None
            if gets_weights:
                flat = header[2:].view(np.float64)
                if not np.all(np.isfinite(flat)):
                    raise PeerError(f"the model owner {owner!r} sent global weights with NaN or infinite values")
                received = layout.unflatten(weights, flat)
            if kind == STOP:
                return True, received, ""
            if self.party in self.cluster.aggregators:
                aggregator_part(ctx, sampled, length, cfg.min_clients, noise, self.cluster.parties)
                return False, None, ""
            if self.party not in sampled:
                return False, None, ""
            assert received is not None
            encoded, why = None, ""
            try:
                vector, _ = fedavg.client_vector(self.party, received, round_index, layout, self.metric_names)
                encoded = encode_update(self.party, vector, len(sampled), self.numerics)
            except Exception as exc:  # noqa: BLE001 - the client withdraws; the others go on
                why = f"{type(exc).__name__}: {exc}"
            crash = client_part(ctx, round_index, self.party, encoded, fedavg.failure_injector, self.cluster.parties)
            return False, None, why or crash

        stopped, final, why = self.runner.run(body)[self.party]
        return Followed(round_index, final, stopped, self.runner.stats.since(before), why)
