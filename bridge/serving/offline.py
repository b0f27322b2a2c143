"""The service's offline phase: each party keeps a bounded pool of material for the
deployed model, made in the background, so that a request's online work excludes it.

Batches are stacked across clients, so their sizes vary: material is made per batch size
(``bridge.mpc.offline``'s buckets), ``offline_depth`` queries ahead for every size the
service has run, at most ``offline_capacity`` in all.  Slots are counted per formation
of the cluster (seeds are fresh at each ``setup``), and every party counts every batch
it computes, in the lock-step order of the runs, so they agree on each batch's slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.ir import Program
from bridge.mpc.layers import secure_forward
from bridge.mpc.offline import PartyOffline, placeholder_params
from bridge.mpc.party import PartyContext
from bridge.mpc.protocol import Shared
from bridge.mpc.range_check import SERVING_GROUP, overflow_tests, serving_check_plan
from bridge.serving.config import ServingConfig


def query(ctx: PartyContext, program: Program, params: Mapping[str, Any], inputs: Mapping[str, Shared],
          bound: float) -> Any:
    """The part of a batch that draws the dealer's material: the forward pass and the range
    check's flags.  (values, flags or None) in a compute server; None in the dealer."""
    computed, _ = secure_forward(ctx, program, params, inputs)
    plan = serving_check_plan(program)
    flags = None
    if plan.entries:
        checked = [computed[e.value] for e in plan.entries]
        rectified = [computed[e.rectified] if e.rectified is not None else None for e in plan.entries]
        flags = overflow_tests(ctx, checked, bound, rectified, group=SERVING_GROUP,
                               nonnegative=[e.nonnegative for e in plan.entries])
    return None if ctx.is_dealer else (computed, flags)


def party_offline(ctx: PartyContext, program: Program, params: Mapping[str, Any], bound: float,
                  serving: ServingConfig) -> PartyOffline:
    """This party's offline phase for one formation, its pool started (if it keeps one)."""
    placeholders: dict[str, Any] = {}

    def dry(c: PartyContext, inputs: Mapping[str, Shared]) -> Any:
        if not placeholders:
            placeholders.update(placeholder_params(ctx.kernels, params))
        return query(c, program, placeholders, inputs, bound)

    specs = program.graph.inputs
    offline = PartyOffline(ctx, lambda c, inputs: query(c, program, params, inputs, bound), dry,
                           lambda rows: {n: (rows, *s.feature_shape) for n, s in specs.items()},
                           capacity=serving.offline_capacity, auto_depth=serving.offline_depth)
    if serving.offline_depth and serving.offline_capacity:
        offline.pool.start()
    return offline
