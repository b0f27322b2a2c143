"""A service's settings: the ``[serving]`` table of the cluster file.

::

    keys = "keys"                      # the parties' keys, as for every cluster

    [[parties]]                        # two compute servers and the dealer, as for every cluster
    name = "server0"  ...

    [serving]
    clients = "clients"                # admitted identities: clients/<name>.crt (made by `privacy-bridge admit`)
    model_owner = "owner"              # the identity allowed to deploy a model
    operators = ["ops"]                # identities that may read the counters (status); default: the model owner
    state = "state"                    # each party keeps its share in state/<party>/ (mode 0700 / 0600)
    max_batch = 64                     # rows stacked into one secure run, across clients
    max_delay_ms = 5.0                 # how long the first request of a batch waits for others
    max_request_rows = 1024            # the most rows one request may carry
    offline_depth = 2                  # queries' material each party keeps made ahead per batch size (0: none)
    offline_capacity = 16              # the most queries' material a party holds in all (the pool's bound)
    [serving.listen]                   # where each party serves clients (TLS 1.3, mutual auth)
    server0 = "127.0.0.1:7300"
    server1 = "127.0.0.1:7301"
    dealer = "127.0.0.1:7302"

Paths are relative to the cluster file.  Clients are not parties of the cluster: they
reach the parties' ``listen`` addresses only, never the MPC channels between them.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bridge.cluster import ClusterConfig, ClusterError, load_cluster, split_address
from bridge.ir import Role

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]*$"


class ServingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    listen: dict[str, str]
    clients: str = "clients"
    model_owner: str = Field(default="owner", pattern=NAME_PATTERN)
    #: who may read the counters (other clients' traffic and timing); None: the model owner alone
    operators: tuple[str, ...] | None = None
    state: str = "state"
    max_batch: int = Field(default=64, ge=1, le=1 << 16)
    max_delay_ms: float = Field(default=5.0, ge=0, le=10_000)
    max_request_rows: int = Field(default=1024, ge=1, le=1 << 20)
    offline_depth: int = Field(default=2, ge=0, le=64)
    offline_capacity: int = Field(default=16, ge=0, le=4096)

    @field_validator("listen")
    @classmethod
    def _addresses(cls, value: dict[str, str]) -> dict[str, str]:
        for address in value.values():
            split_address(address)
        return value


@dataclass(frozen=True)
class Service:
    """A cluster file read as a service: its parties, its serving settings, absolute paths."""

    cluster: ClusterConfig
    serving: ServingConfig
    path: Path
    clients_dir: Path
    state_dir: Path

    @property
    def compute(self) -> tuple[str, str]:
        names = self.cluster.with_role(Role.COMPUTE)
        return names[0], names[1]

    @property
    def dealer(self) -> str:
        return self.cluster.with_role(Role.DEALER)[0]

    @property
    def leader(self) -> str:
        """The compute party that forms the batches (the first in the file)."""
        return self.compute[0]

    @property
    def operators(self) -> frozenset[str]:
        """The identities ``status`` answers (its counters show every client's traffic and timing)."""
        names = self.serving.operators
        return frozenset((self.serving.model_owner,) if names is None else names)

    def listen_address(self, party: str) -> tuple[str, int]:
        return split_address(self.serving.listen[party])

    def party_state(self, party: str) -> Path:
        return self.state_dir / party


_loading = threading.Lock()


def load_service(path: str | Path) -> Service:
    """The service a cluster file describes; a ``ClusterError`` says what is missing."""
    source = Path(path)
    with _loading:  # one validation at a time (clients of one process connect from many threads)
        cluster = load_cluster(source)
    if cluster.serving is None:
        raise ClusterError(
            f"{source} has no [serving] table: a service needs at least [serving.listen] with an address "
            "for each compute party and the dealer (see bridge/serving/config.py)"
        )
    try:
        serving = ServingConfig.model_validate(cluster.serving)
    except ValidationError as exc:
        raise ClusterError(f"the [serving] table of {source} is not valid:\n{exc}") from exc
    compute = cluster.with_role(Role.COMPUTE)
    dealers = cluster.with_role(Role.DEALER)
    if len(compute) != 2 or len(dealers) != 1:
        raise ClusterError(
            f"a service runs two compute parties and one dealer; {source} has compute {list(compute)} and "
            f"dealers {list(dealers)}. Give exactly two parties the 'compute' role and one the 'dealer' role."
        )
    unknown = sorted(set(serving.listen) - set(cluster.names))
    missing = [p for p in (*compute, *dealers) if p not in serving.listen]
    if unknown or missing:
        raise ClusterError(
            f"[serving.listen] of {source} must give an address to each of {[*compute, *dealers]}; "
            f"missing {missing}, not parties of the cluster {unknown}"
        )
    if cluster.insecure:
        raise ClusterError(
            f"{source} says insecure = true; a service never runs cleartext (its clients come from outside the "
            "cluster). Remove insecure and run `privacy-bridge keygen --cluster " + str(source) + "`."
        )
    if serving.model_owner in cluster.names:
        raise ClusterError(f"[serving] model_owner {serving.model_owner!r} is a party of the cluster; name an "
                           "identity made by `privacy-bridge admit` instead")
    bad = [n for n in serving.operators or () if n in cluster.names or not re.fullmatch(NAME_PATTERN, n)]
    if bad:
        raise ClusterError(f"[serving] operators of {source} names {bad}: an operator is an identity made by "
                           "`privacy-bridge admit` (letters, digits, _ and -), not a party of the cluster")
    base = source.resolve().parent
    return Service(cluster=cluster, serving=serving, path=source.resolve(),
                   clients_dir=(base / serving.clients).resolve(), state_dir=(base / serving.state).resolve())
