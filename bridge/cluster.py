"""Where the parties run: a cluster file naming each party, its roles and its address.

The same user script runs embedded (every party in threads of one process) or
distributed (one party per process, on one host or many) by configuration only:
``privacy-bridge party --cluster cluster.toml --name server0 -- script.py`` sets
``PRIVACY_BRIDGE_CLUSTER`` and ``PRIVACY_BRIDGE_PARTY``, and the front end reads them
through ``cluster_from_environment``.  A cluster file::

    timeout_s = 30                    # a party silent this long is declared dead

    [[parties]]
    name = "server0"
    roles = ["compute", "model_owner"]
    address = "10.0.0.1:7100"         # where the others reach this party

    [[parties]]
    name = "server1"
    roles = ["compute", "data_owner", "client"]
    address = "10.0.0.2:7100"

    [[parties]]
    name = "dealer"
    roles = ["dealer"]
    address = "10.0.0.3:7100"

Security.  Every channel between parties is mutually authenticated and encrypted
(``bridge/security``): ``keys = "keys"`` (a directory, relative to this file) pins
``keys/<party>.crt`` for every party, and each process reads its own private key from
``keys/<party>.key``; a party's ``certificate`` (a path or the PEM inline) and ``key``
override those paths.  ``privacy-bridge keygen --cluster cluster.toml`` writes them.
``insecure = true`` is the only way to run cleartext, and warns at start.

Party order is rank order.  torch-spdz: rank 0 serves the rendezvous (a
``torch.distributed`` TCPStore) at its address unless ``rendezvous`` says otherwise;
gloo then connects every pair on ports of its own choosing, on each party's host;
torchrun's ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` pick this
process's party and the rendezvous, as torch users expect.  tf-pond: each party
serves gRPC at its address.  Nothing here depends on a backend.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bridge.ir.placement import Party, Placement, Role

#: environment variables ``privacy-bridge party`` sets for the user script
CLUSTER_ENV = "PRIVACY_BRIDGE_CLUSTER"
PARTY_ENV = "PRIVACY_BRIDGE_PARTY"


class ClusterError(ValueError):
    """A cluster file or environment that does not describe a runnable cluster."""


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port), refusing anything else."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"address {address!r} must be host:port, e.g. 127.0.0.1:7100 or [::1]:7100")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    elif ":" in host:
        raise ValueError(f"address {address!r}: write an IPv6 host in brackets, e.g. [::1]:7100")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"address {address!r}: port must be in 1..65535")
    return host, port


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PartyEntry(BaseModel):
    """One party of the cluster: its name (as in the placement), roles and address."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")
    roles: frozenset[Role]
    #: where the other parties reach this one (``host:port``)
    address: str
    #: where this party's gRPC server (tf-pond) listens, if not at ``address``
    #: (e.g. ``0.0.0.0:7100`` behind NAT); gloo (torch-spdz) always binds at ``address``'s host
    bind: str | None = None
    #: the certificate pinned for this party: a path (relative to the cluster file) or the
    #: PEM text itself; default ``<keys>/<name>.crt``
    certificate: str | None = None
    #: this party's private key, read only by this party's own process; default ``<keys>/<name>.key``
    key: str | None = None

    @field_validator("address", "bind")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            split_address(value)
        return value

    @property
    def host(self) -> str:
        return split_address(self.address)[0]

    @property
    def port(self) -> int:
        return split_address(self.address)[1]

    @property
    def listen_address(self) -> str:
        return self.bind or self.address


class ClusterConfig(BaseModel):
    """The parties of one deployment, in rank order, and its fault settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    parties: tuple[PartyEntry, ...] = Field(min_length=1)
    #: a party that sends nothing for this long, or never shows up, is declared dead
    timeout_s: float = Field(default=30.0, gt=0)
    #: the largest message a party accepts; a bigger one is rejected as malformed
    max_message_bytes: int = Field(default=1 << 30, gt=0, le=(1 << 31) - (1 << 16))
    #: torch-spdz rendezvous (``host:port``); default: rank 0's address
    rendezvous: str | None = None
    #: the rendezvous store is served by someone else (torchrun's agent), not by rank 0
    external_rendezvous: bool = False
    #: directory of the parties' keys (``<name>.crt`` pinned, ``<name>.key`` private),
    #: relative to the cluster file (made absolute when it is loaded)
    keys: str | None = None
    #: run cleartext and unauthenticated (warned about at start): only on a trusted network
    insecure: bool = False
    #: the ``[serving]`` table of a long-running service (``privacy-bridge serve``), read
    #: and validated by ``bridge.serving.config``; the MPC parties ignore it
    serving: dict[str, Any] | None = None

    @field_validator("rendezvous")
    @classmethod
    def _rendezvous(cls, value: str | None) -> str | None:
        if value is not None:
            split_address(value)
        return value

    @model_validator(mode="after")
    def _unique(self) -> "ClusterConfig":
        seen: dict[str, str] = {}
        for p in self.parties:
            if p.name in seen:
                raise ValueError(f"party {p.name!r} is listed twice; party names must be unique")
            if p.address in seen.values():
                other = next(n for n, a in seen.items() if a == p.address)
                raise ValueError(
                    f"parties {other!r} and {p.name!r} both have address {p.address}; give each its own port"
                )
            seen[p.name] = p.address
        return self

    # -- lookups ----------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parties)

    def party(self, name: str) -> PartyEntry:
        for p in self.parties:
            if p.name == name:
                return p
        raise ClusterError(
            f"party {name!r} is not in the cluster; it has parties {list(self.names)}. "
            "Pass one of these names (--name), or add the party to the cluster file."
        )

    def rank(self, name: str) -> int:
        return self.names.index(self.party(name).name)

    @property
    def rendezvous_address(self) -> tuple[str, int]:
        return split_address(self.rendezvous or self.parties[0].address)

    def certificate_source(self, name: str) -> str | None:
        """The certificate pinned for party ``name``: a path or inline PEM, or None."""
        entry = self.party(name)
        if entry.certificate is not None:
            return entry.certificate
        return None if self.keys is None else str(Path(self.keys) / f"{name}.crt")

    def key_path(self, name: str) -> str | None:
        """Where party ``name``'s own process finds its private key, or None."""
        entry = self.party(name)
        if entry.key is not None:
            return entry.key
        return None if self.keys is None else str(Path(self.keys) / f"{name}.key")

    def with_role(self, role: Role) -> tuple[str, ...]:
        return tuple(p.name for p in self.parties if role in p.roles)

    # -- the IR placement ----------------------------------------------------------------------
    def placement(self, input_names: list[str] | tuple[str, ...], output_names: list[str] | tuple[str, ...]) -> Placement:
        """The Placement these parties make for a graph: the one ``data_owner`` owns every
        input, the one ``model_owner`` the weights, every ``client`` receives every output."""
        owners = self.with_role(Role.DATA_OWNER)
        model_owners = self.with_role(Role.MODEL_OWNER)
        clients = self.with_role(Role.CLIENT) or owners
        if len(owners) != 1 or len(model_owners) != 1:
            raise ClusterError(
                f"a default placement needs exactly one data_owner and one model_owner; the cluster has "
                f"data owners {list(owners)} and model owners {list(model_owners)}. Build the Placement "
                "yourself (bridge.ir.Placement) and check it with ClusterConfig.check_placement."
            )
        return Placement(
            parties=tuple(Party(name=p.name, roles=p.roles) for p in self.parties),
            input_owners={n: owners[0] for n in input_names},
            param_owner=model_owners[0],
            output_receivers={n: clients for n in output_names},
        )

    def check_placement(self, placement: Placement) -> None:
        """Every party of the placement runs somewhere in this cluster, with the same roles."""
        problems = []
        for p in placement.parties:
            if p.name not in self.names:
                problems.append(f"party {p.name!r} of the placement has no entry in the cluster")
            elif p.roles != self.party(p.name).roles:
                problems.append(
                    f"party {p.name!r} has roles {sorted(r.value for r in p.roles)} in the placement but "
                    f"{sorted(r.value for r in self.party(p.name).roles)} in the cluster"
                )
        if problems:
            raise ClusterError(
                "the model's placement does not match the cluster: " + "; ".join(problems)
                + f". The cluster has parties {list(self.names)}; make the two agree."
            )


def load_cluster(path: str | Path) -> ClusterConfig:
    """Read and validate a cluster TOML file."""
    source = Path(path)
    try:
        raw = tomllib.loads(source.read_text())
    except FileNotFoundError:
        raise ClusterError(f"cluster file {str(source)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClusterError(f"cluster file {str(source)!r} is not valid TOML: {exc}") from exc
    return cluster_from_dict(raw, str(source), base=source.resolve().parent)


def cluster_from_dict(raw: Mapping[str, Any], source: str = "cluster", base: Path | None = None) -> ClusterConfig:
    """A validated cluster; relative key paths are taken relative to ``base`` (the
    cluster file's directory) and stored absolute."""
    raw = dict(raw)
    if base is not None:
        raw = _absolute_key_paths(raw, base)
    try:
        return ClusterConfig.model_validate(raw)
    except ValidationError as exc:
        raise ClusterError(f"{source} does not describe a cluster:\n{exc}") from exc


def _absolute_key_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    def absolute(value: Any) -> Any:
        if not isinstance(value, str) or value.lstrip().startswith("-----BEGIN"):
            return value
        return str(base / Path(value).expanduser())

    if "keys" in raw:
        raw["keys"] = absolute(raw["keys"])
    parties = raw.get("parties")
    if isinstance(parties, list):
        raw["parties"] = [
            {**p, **{k: absolute(p[k]) for k in ("certificate", "key") if k in p}} if isinstance(p, dict) else p
            for p in parties
        ]
    return raw


def to_toml(config: ClusterConfig) -> str:
    """The TOML text of a cluster (for launchers and tests that write one)."""
    lines = [f"timeout_s = {config.timeout_s!r}", f"max_message_bytes = {config.max_message_bytes}"]
    if config.rendezvous is not None:
        lines.append(f'rendezvous = "{config.rendezvous}"')
    if config.external_rendezvous:
        lines.append("external_rendezvous = true")
    if config.keys is not None:
        lines.append(f"keys = {_toml_string(config.keys)}")
    if config.insecure:
        lines.append("insecure = true")
    for p in config.parties:
        roles = ", ".join(f'"{r.value}"' for r in sorted(p.roles, key=lambda r: r.value))
        lines += ["", "[[parties]]", f'name = "{p.name}"', f"roles = [{roles}]", f'address = "{p.address}"']
        if p.bind is not None:
            lines.append(f'bind = "{p.bind}"')
        for field_name in ("certificate", "key"):
            value = getattr(p, field_name)
            if value is not None:
                lines.append(f"{field_name} = {_toml_string(value)}")
    return "\n".join(lines) + "\n"


def _toml_string(value: str) -> str:
    """A TOML literal string (no escapes): multi-line for inline PEM text."""
    quote = "'"
    if "\n" not in value and quote not in value:
        return quote + value + quote
    if quote * 3 in value:
        raise ClusterError(f"cannot write {value[:40]!r}... as a TOML literal string")
    return quote * 3 + "\n" + value + quote * 3


def cluster_from_environment(environ: Mapping[str, str]) -> tuple[ClusterConfig, str] | None:
    """(cluster, this process's party) if ``environ`` says this process is one party; else None.

    ``PRIVACY_BRIDGE_CLUSTER`` names the cluster file.  The party is
    ``PRIVACY_BRIDGE_PARTY``, or torchrun's ``RANK`` (party order in the file); with
    both, they must agree.  ``WORLD_SIZE`` must equal the number of parties, and
    ``MASTER_ADDR``/``MASTER_PORT`` replace the rendezvous (torchrun's agent serves it
    when ``TORCHELASTIC_USE_AGENT_STORE`` is true).
    """
    path = environ.get(CLUSTER_ENV)
    if not path:
        return None
    config = load_cluster(path)
    name = environ.get(PARTY_ENV) or None
    rank_text = environ.get("RANK")
    if rank_text is not None:
        if not rank_text.isdigit() or int(rank_text) >= len(config.parties):
            raise ClusterError(
                f"RANK={rank_text!r} does not pick a party: the cluster {path!r} has {len(config.parties)} "
                f"parties {list(config.names)} (rank = position in the file, from 0)"
            )
        by_rank = config.names[int(rank_text)]
        if name is not None and name != by_rank:
            raise ClusterError(
                f"{PARTY_ENV}={name!r} but RANK={rank_text} is party {by_rank!r} in {path!r}; set one, or make them agree"
            )
        name = by_rank
    if name is None:
        raise ClusterError(
            f"{CLUSTER_ENV} is set but neither {PARTY_ENV} nor RANK says which party this process is; "
            f"set {PARTY_ENV} to one of {list(config.names)}"
        )
    config.party(name)
    world = environ.get("WORLD_SIZE")
    if world is not None and world != str(len(config.parties)):
        raise ClusterError(
            f"WORLD_SIZE={world} but the cluster {path!r} has {len(config.parties)} parties; "
            "start one process per party"
        )
    master, master_port = environ.get("MASTER_ADDR"), environ.get("MASTER_PORT")
    if master_port is not None and not master_port.isdigit():
        raise ClusterError(f"MASTER_PORT={master_port!r} is not a port number")
    if master and master_port:
        update: dict[str, Any] = {"rendezvous": join_address(master, int(master_port))}
        if environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true":
            update["external_rendezvous"] = True
        config = ClusterConfig.model_validate({**config.model_dump(), **update})
    return config, name
