"""A Program prepared for secure execution: parties set up, weights shared and masked once.

Per party, in order (SPMD):
  setup   dealer seeds; the model owner shares every parameter; the parameters used
          as fixed Beaver operands are masked once (Pond's masked tensors).
  run     input owners share the batch; compute parties and the dealer evaluate the
          graph; the range check (``bridge.mpc.range_check``) flags any layer whose
          values left the fixed-point range; outputs are revealed to their receivers
          only if nothing was flagged.
Traffic is labelled ``setup`` (one-time), ``share:<input>``, ``<node>/...``,
``overflow_check`` and ``reveal:<output>``.

Nothing silently wrong: every locally owned input is encoded (NaN, inf and range
checked) before any party starts a run, and each run draws from its own randomness
streams (``PartyContext.begin_run``), so a refused or failed batch leaves the next one
correct.  A flagged query is rerun once with fresh randomness (a truncation failure,
probability about |v| / 2^63 per truncated value, does not repeat) and counted in
``reruns``; flagged again, it is refused with ``FixedPointOverflowError`` naming the
layer (the input drives the model out of range).  Every party learns the flag bits.

The offline phase (``bridge.mpc.offline``): the forward pass and the range check of a
query draw their correlated randomness from a material slot (the n-th query of its
batch size), which the parties can make before the query: ``precompute(batch, runs)``
makes it now, ``keep_pool(depth)`` keeps it made in the background.  A query whose
slot was not made draws the same material inline; ``material`` counts both.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import cached_property
from typing import Any

import numpy as np

from bridge.backend import BackendError, Executable, RunResult
from bridge.ir import Program, validate_program, validate_weights
from bridge.ir.fold import fold_batch_norm
from bridge.ir.tokens import one_hot_inputs
from bridge.mpc.comm import CommStats
from bridge.mpc.fixedpoint import encode
from bridge.mpc.kernels import RingKernels
from bridge.mpc.layers import masked_parameter_names, secure_forward, secure_parameter_specs, secure_parameters
from bridge.mpc.offline import PartyOffline, SlotCounter, SlotKey, placeholder_params
from bridge.mpc.party import PartyContext
from bridge.mpc.protocol import Masked, Shared, mask_operand, reveal_to, share_input
from bridge.mpc.range_check import (
    DEFAULT_SERVING_BOUND,
    SERVING_GROUP,
    CheckPlan,
    FixedPointOverflowError,
    check_bound,
    overflow_tests,
    reveal_flags,
    serving_check_plan,
)
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
    """Encrypted serving: the weights stay shared across runs; each run serves one batch.

    ``check_overflow`` (default on) runs the range check on every query against
    ``overflow_bound``; ``max_reruns`` flagged queries are rerun before the input is
    refused.  ``reruns`` counts the reruns of the last query, ``reruns_total`` all.
    """

    check_overflow: bool = True
    overflow_bound: float = DEFAULT_SERVING_BOUND
    max_reruns: int = 1
    reruns: int = 0
    reruns_total: int = 0

    def __init__(
        self,
        program: Program,
        weights: Mapping[str, np.ndarray] | None,
        kernels: RingKernels,
        timeout_s: float = 30.0,
        runner: PartyRunner | None = None,
        *,
        check_overflow: bool = True,
        overflow_bound: float = DEFAULT_SERVING_BOUND,
        max_reruns: int = 1,
    ) -> None:
        """``weights`` are needed only where the model owner runs; ``runner`` defaults to
        every party in threads of this process."""
        validate_program(program)
        # serving only: the owner folds inference batch norms into the op before them (bridge.ir.fold)
        program, weights = fold_batch_norm(program, weights)
        if max_reruns < 0:
            raise ValueError(f"max_reruns must be 0 or more; received {max_reruns}")
        self.program = program
        self.check_overflow = bool(check_overflow)
        self.overflow_bound = check_bound(overflow_bound, program.numerics.frac_bits)
        self.max_reruns = int(max_reruns)
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
        self._slots = SlotCounter()
        #: the offline phase of each party hosted here that runs the protocol
        self.offline: dict[str, PartyOffline] = {
            name: self._party_offline(ctx) for name, ctx in self.parties.contexts.items() if ctx.in_protocol
        }
        #: per local party: whether the last query's material was precomputed (False: drawn inline)
        self.last_material: dict[str, bool] = {}

    # -- the offline phase -------------------------------------------------------------------------
    def _party_offline(self, ctx: PartyContext) -> PartyOffline:
        params = self._params[ctx.name]
        placeholders: dict[str, Any] = {}

        def dry(c: PartyContext, inputs: Mapping[str, Shared]) -> Any:
            if not placeholders:
                placeholders.update(placeholder_params(ctx.kernels, params))
            return self._protocol(c, placeholders, inputs)

        specs = self.program.graph.inputs
        return PartyOffline(ctx, lambda c, inputs: self._protocol(c, params, inputs), dry,
                            lambda rows: {n: (rows, *s.feature_shape) for n, s in specs.items()})

    def precompute(self, batch: int, runs: int = 1) -> float:
        """Make the material of the next ``runs`` queries of ``batch`` rows now, in every
        party hosted here (every process calls it alike); returns the seconds it took."""
        if batch < 1 or runs < 0:
            raise ValueError(f"precompute takes a batch of 1 row or more and 0 runs or more; received {batch}, {runs}")
        start = time.perf_counter()
        for offline in self.offline.values():
            offline.pool.want(batch, runs)
            offline.pool.fill()
        return time.perf_counter() - start

    def keep_pool(self, depth: int = 2, capacity: int = 8) -> None:
        """Keep ``depth`` queries' material made ahead for every batch size queried (at most
        ``capacity`` in all), in a background thread per party hosted here."""
        for offline in self.offline.values():
            offline.pool.capacity = int(capacity)
            offline.pool.auto_depth = int(depth)
            offline.pool.start()

    @property
    def material(self) -> dict[str, dict[str, Any]]:
        """Per local party: its pool's level and counts (precomputed, waited, inline, ...)."""
        return {name: offline.pool.snapshot() for name, offline in self.offline.items()}

    def close(self) -> None:
        for offline in self.offline.values():
            offline.pool.stop()

    @cached_property
    def check_plan(self) -> CheckPlan:
        return serving_check_plan(self.program)

    def _encode_local_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Encode (and so check) every input owned by a party hosted here, before any party
        runs: a refused value stops the query before anyone draws randomness for it."""
        placement = self.program.placement
        arrays = {n: np.asarray(v, dtype=np.float64) for n, v in inputs.items()}
        for name, value in arrays.items():
            if placement.input_owners[name] in self.parties.contexts:
                encode(value, self.program.numerics, name)
        return arrays

    def run(self, inputs: Mapping[str, np.ndarray]) -> RunResult:
        """Serve one batch.  ``outputs`` holds what the local receivers got (all, embedded)."""
        inputs = one_hot_inputs(self.program.graph, inputs)  # token ids -> one-hot rows at the data owner
        batch = check_inputs(self.program, inputs)
        arrays = self._encode_local_inputs(inputs)
        before = self.parties.stats.snapshot()
        self.reruns = 0
        while True:
            key = self._slots.next(batch)  # fixed before the run: a failed one leaves the counts in step
            results = self.parties.run(lambda ctx: self._serve(ctx, arrays, batch, key))  # noqa: B023
            flagged = next((r[1] for r in results.values() if r[0] == "overflow"), None)
            if flagged is None:
                break
            if self.reruns >= self.max_reruns:
                self.last_stats = self.parties.stats.since(before)
                raise self._overflow_error(flagged)
            self.reruns += 1
            self.reruns_total += 1
        self.last_stats = self.parties.stats.since(before)
        outputs: dict[str, np.ndarray] = {}
        for name in self.program.graph.outputs:
            for receiver in self.program.placement.output_receivers[name]:
                if receiver in results and name in results[receiver][1]:
                    outputs[name] = results[receiver][1][name]
                    break
        return RunResult(outputs, self.last_stats, self.reruns)

    def _checks_range(self) -> bool:
        """Whether queries run the range check (on, and the model has something to check)."""
        return self.check_overflow and bool(self.check_plan.entries)

    def _protocol(self, ctx: PartyContext, params: Mapping[str, Any], inputs: Mapping[str, Shared]) -> Any:
        """The part of a query that draws the dealer's material: the forward pass and the
        range check's comparisons.  (values, flags) in a compute party; None in the dealer."""
        computed, _ = secure_forward(ctx, self.program, params, inputs)  # type: ignore[arg-type]
        flags = None
        if self._checks_range():
            plan = self.check_plan
            checked = [computed[e.value] for e in plan.entries]
            rectified = [computed[e.rectified] if e.rectified is not None else None for e in plan.entries]
            nonnegative = [e.nonnegative for e in plan.entries]
            flags = overflow_tests(ctx, checked, self.overflow_bound, rectified,  # type: ignore[arg-type]
                                   group=SERVING_GROUP, nonnegative=nonnegative)
        return None if ctx.is_dealer else (computed, flags)

    def _serve(self, ctx: PartyContext, arrays: Mapping[str, np.ndarray], batch: int, key: SlotKey) -> tuple[str, Any]:
        """One attempt at the query, in one party: ("overflow", layers) or ("outputs", {name: value})."""
        graph, placement = self.program.graph, self.program.placement
        values: dict[str, Shared | None] = {}
        for name, spec in graph.inputs.items():
            owner = placement.input_owners[name]
            mine = arrays[name] if ctx.name == owner else None
            values[name] = share_input(ctx, owner, mine, (batch, *spec.feature_shape), name)
        flags = None
        if ctx.in_protocol:
            inputs = {name: values[name] for name in graph.inputs}
            out, outcome = self.offline[ctx.name].run(key, inputs)  # type: ignore[arg-type]
            self.last_material[ctx.name] = outcome.precomputed
            if out is not None:
                computed, flags = out
                values.update(computed)
        if self._checks_range():
            plan = self.check_plan
            # every party learns the flags, so that all of them rerun or stop together
            seen = reveal_flags(ctx, flags, placement.names)
            assert seen is not None
            if np.any(seen):
                return ("overflow", [layer for layer, f in zip(plan.layers, seen, strict=True) if f])
        revealed = {}
        for name in graph.outputs:
            out = reveal_to(ctx, values.get(name), placement.output_receivers[name], name)
            if out is not None:
                revealed[name] = out
        return ("outputs", revealed)

    def _overflow_error(self, layers: list[str]) -> FixedPointOverflowError:
        later = f" (and after it in {layers[1:]})" if len(layers) > 1 else ""
        attempts = self.reruns + 1
        return FixedPointOverflowError(
            f"fixed-point overflow in layer {layers[0]!r}{later}: some |value| exceeded the bound "
            f"{self.overflow_bound:g} in {attempts} attempt{'s' if attempts > 1 else ''} with fresh randomness, "
            "so it is not a rare truncation error: this input drives the model out of the fixed-point range. "
            "No output was revealed. Scale the input as the model expects (e.g. the training data's "
            f"normalisation), or raise overflow_bound (below 2^{62 - 2 * self.program.numerics.frac_bits}) if "
            "the model's activations are legitimately this large."
        )

    def param_share(self, party: str, name: str) -> Shared:
        """One party's share of a parameter (for tests of what a party holds)."""
        p = self._params[party][name]
        return p.value if isinstance(p, Masked) else p
