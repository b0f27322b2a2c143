"""A Program prepared for secure execution: parties set up, weights shared and masked once.

Per party, in order (SPMD):
  setup   dealer seeds; the model owner shares every parameter; the parameters used
          as fixed Beaver operands are masked once (Pond's masked tensors).
  run     input owners share the batch; compute parties and the dealer evaluate the
          graph; outputs are revealed to their receivers only.
Traffic is labelled ``setup`` (one-time), ``share:<input>``, ``<node>/...`` and
``reveal:<output>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bridge.backend import BackendError, Executable, RunResult
from bridge.ir import Program, validate_program, validate_weights
from bridge.mpc.comm import CommStats
from bridge.mpc.kernels import RingKernels
from bridge.mpc.layers import masked_parameter_names, secure_forward, secure_parameter_specs, secure_parameters
from bridge.mpc.party import PartyContext
from bridge.mpc.protocol import Masked, Shared, mask_operand, reveal_to, share_input
from bridge.mpc.runtime import PartyRunner, ThreadedParties

SETUP_LABEL = "setup"


def compute_and_dealer(program: Program) -> tuple[tuple[str, str], str]:
    placement = program.placement
    compute = placement.compute_parties
    if len(compute) != 2:
        raise BackendError(
            f"this backend runs two compute parties; the placement has {len(compute)}: {list(compute)}. "
            "Give exactly two parties the 'compute' role."
        )
    if placement.dealer is None:
        raise BackendError("this backend needs a dealer; give one party the 'dealer' role")
    return (compute[0], compute[1]), placement.dealer


def setup_party(ctx: PartyContext, program: Program, plain: Mapping[str, np.ndarray] | None) -> dict[str, Any]:
    """Seeds, shared parameters, masks: everything a run reuses."""
    ctx.setup_seeds()
    owner = program.placement.param_owner
    specs = secure_parameter_specs(program)
    params: dict[str, Any] = {}
    with ctx.messenger.label(SETUP_LABEL):
        for name in sorted(specs):
            value = plain[name] if plain is not None else None
            params[name] = share_input(ctx, owner, value, specs[name], f"parameter {name}")
        if ctx.in_protocol:
            for name in masked_parameter_names(program):
                params[name] = mask_operand(ctx, params[name])
    return params


def check_inputs(program: Program, inputs: Mapping[str, np.ndarray]) -> int:
    """Every input present with the declared feature shape and one batch size; returns it."""
    batch = None
    for name, spec in program.graph.inputs.items():
        if name not in inputs:
            raise ValueError(f"input {name!r} is missing; the model takes inputs {list(program.graph.inputs)}")
        value = np.asarray(inputs[name])
        expected = spec.feature_shape
        if value.ndim != len(expected) + 1 or tuple(value.shape[1:]) != expected:
            raise ValueError(
                f"input {name!r} must have shape (batch, {', '.join(map(str, expected))}), "
                f"received {tuple(value.shape)}. Reshape the data to match the model's input."
            )
        if batch is not None and value.shape[0] != batch:
            raise ValueError(f"inputs have different batch sizes: {batch} and {value.shape[0]}")
        batch = value.shape[0]
    unknown = sorted(set(inputs) - set(program.graph.inputs))
    if unknown:
        raise ValueError(f"unknown inputs {unknown}; the model takes {list(program.graph.inputs)}")
    return int(batch or 0)


class SecureExecutable(Executable):
    """Encrypted serving: the weights stay shared across runs; each run serves one batch."""

    def __init__(
        self,
        program: Program,
        weights: Mapping[str, np.ndarray] | None,
        kernels: RingKernels,
        timeout_s: float = 30.0,
        runner: PartyRunner | None = None,
    ) -> None:
        """``weights`` are needed only where the model owner runs; ``runner`` defaults to
        every party in threads of this process."""
        validate_program(program)
        self.program = program
        compute, dealer = compute_and_dealer(program)
        self.parties: PartyRunner = runner or ThreadedParties(
            program.placement.names, kernels, program.numerics, compute, dealer, timeout_s
        )
        owner = program.placement.param_owner
        prepared = None
        if owner in self.parties.contexts:
            if weights is None:
                raise ValueError(f"party {owner!r} owns the model here but no weights were given")
            validate_weights(program, weights)
            prepared = secure_parameters(program, weights)
        before = self.parties.stats.snapshot()
        self._params = self.parties.run(lambda ctx: setup_party(ctx, program, prepared if ctx.name == owner else None))
        self.setup_stats: CommStats = self.parties.stats.since(before)
        self.last_stats: CommStats | None = None

    def run(self, inputs: Mapping[str, np.ndarray]) -> RunResult:
        """Serve one batch.  ``outputs`` holds what the local receivers got (all, embedded)."""
        batch = check_inputs(self.program, inputs)
        graph, placement = self.program.graph, self.program.placement
        arrays = {n: np.asarray(v, dtype=np.float64) for n, v in inputs.items()}

        def serve(ctx: PartyContext) -> dict[str, np.ndarray]:
            values: dict[str, Shared | None] = {}
            for name, spec in graph.inputs.items():
                owner = placement.input_owners[name]
                mine = arrays[name] if ctx.name == owner else None
                values[name] = share_input(ctx, owner, mine, (batch, *spec.feature_shape), name)
            if ctx.in_protocol:
                computed, _ = secure_forward(ctx, self.program, self._params[ctx.name], values)  # type: ignore[arg-type]
                values.update(computed)
            revealed = {}
            for name in graph.outputs:
                out = reveal_to(ctx, values.get(name), placement.output_receivers[name], name)
                if out is not None:
                    revealed[name] = out
            return revealed

        before = self.parties.stats.snapshot()
        results = self.parties.run(serve)
        self.last_stats = self.parties.stats.since(before)
        outputs: dict[str, np.ndarray] = {}
        for name in graph.outputs:
            for receiver in placement.output_receivers[name]:
                if receiver in results and name in results[receiver]:
                    outputs[name] = results[receiver][name]
                    break
        return RunResult(outputs, self.last_stats)

    def param_share(self, party: str, name: str) -> Shared:
        """One party's share of a parameter (for tests of what a party holds)."""
        p = self._params[party][name]
        return p.value if isinstance(p, Masked) else p
