"""The model as a service runs it: the program re-placed on the service's parties, and
the model owner's one-time split of its parameters into the two servers' shares."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bridge.ir import Numerics, Party, Placement, PrivacyMode, Program, validate_program, validate_weights
from bridge.mpc.fixedpoint import encode
from bridge.mpc.layers import secure_parameters
from bridge.mpc.prg import Prg, fresh_seed
from bridge.serving.config import Service


def service_program(program: Program, service: Service) -> Program:
    """``program`` with the service's placement: its two compute parties and dealer (the
    clients, who come and go, are no parties; each request's input and output shares
    travel between that client and the servers only)."""
    cluster = service.cluster
    leader = service.leader
    parties = tuple(Party(name=n, roles=cluster.party(n).roles) for n in (*service.compute, service.dealer))
    placement = Placement(
        parties=parties,
        input_owners={name: leader for name in program.graph.inputs},
        param_owner=leader,
        output_receivers={name: (leader,) for name in program.graph.outputs},
    )
    placed = program.model_copy(update={"placement": placement, "privacy": PrivacyMode.ENCRYPTED_SERVING})
    validate_program(placed)
    return placed


def share_parameters(program: Program, weights: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The two servers' additive shares of every parameter (fixed point, masks from the
    OS CSPRNG through AES-CTR, as ``share_input`` draws them)."""
    validate_weights(program, weights)
    prepared = secure_parameters(program, weights)
    first: dict[str, np.ndarray] = {}
    second: dict[str, np.ndarray] = {}
    for name, value in prepared.items():
        encoded = encode(value, program.numerics, f"parameter {name}")
        mask = Prg(fresh_seed()).ring(encoded.shape)
        first[name] = mask
        with np.errstate(over="ignore"):
            second[name] = encoded - mask
    return first, second


def share_input(value: np.ndarray, numerics: Numerics, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A client's two shares of one input (checked for NaN, inf and range by ``encode``)."""
    encoded = encode(value, numerics, name)
    mask = Prg(fresh_seed()).ring(encoded.shape)
    with np.errstate(over="ignore"):
        return mask, encoded - mask
