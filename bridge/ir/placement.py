"""Who holds what: parties, their roles, and the owner of every input, parameter and output."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, field_serializer


class Role(str, Enum):
    MODEL_OWNER = "model_owner"
    DATA_OWNER = "data_owner"
    COMPUTE = "compute"
    DEALER = "dealer"
    CLIENT = "client"


class Party(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")
    roles: frozenset[Role]

    @field_serializer("roles", when_used="json")
    def _sorted_roles(self, roles: frozenset[Role]) -> list[str]:
        # A set iterates in hash order, which varies per process: sort so saved files are stable.
        return sorted(role.value for role in roles)


class Placement(BaseModel):
    """Parties and ownership.

    ``input_owners`` maps each graph input to the party that holds it in the clear,
    ``param_owner`` the party that holds the weights, and ``output_receivers`` each
    output to the parties that may see it.  Compute parties and the dealer are
    read off the roles, in the order listed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    parties: tuple[Party, ...]
    input_owners: dict[str, str]
    param_owner: str
    output_receivers: dict[str, tuple[str, ...]]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parties)

    def with_role(self, role: Role) -> tuple[str, ...]:
        return tuple(p.name for p in self.parties if role in p.roles)

    @property
    def compute_parties(self) -> tuple[str, ...]:
        return self.with_role(Role.COMPUTE)

    @property
    def dealer(self) -> str | None:
        dealers = self.with_role(Role.DEALER)
        return dealers[0] if dealers else None

    def party(self, name: str) -> Party:
        for p in self.parties:
            if p.name == name:
                return p
        raise KeyError(
            f"unknown party {name!r}; the placement has parties {list(self.names)}. "
            "Use one of these names, or add the party to the placement."
        )

    @classmethod
    def default(
        cls,
        input_names: list[str] | tuple[str, ...],
        output_names: list[str] | tuple[str, ...],
        *,
        data_owner: str = "client",
        model_owner: str = "model_owner",
        compute: tuple[str, str] = ("server0", "server1"),
        dealer: str = "dealer",
    ) -> "Placement":
        """The common case in one line: a model owner, a client who owns every input
        and receives every output, two compute servers and a dealer."""
        data_roles = {Role.DATA_OWNER, Role.CLIENT}
        parties = [
            Party(name=model_owner, roles=frozenset({Role.MODEL_OWNER})),
            Party(name=data_owner, roles=frozenset(data_roles)),
            *(Party(name=c, roles=frozenset({Role.COMPUTE})) for c in compute),
            Party(name=dealer, roles=frozenset({Role.DEALER})),
        ]
        return cls(
            parties=tuple(parties),
            input_owners={name: data_owner for name in input_names},
            param_owner=model_owner,
            output_receivers={name: (data_owner,) for name in output_names},
        )
