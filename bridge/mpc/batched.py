"""Independent openings batched into one message: fewer rounds, the same bytes and math.

Training's backward pass and update open several masked operands that do not depend on
one another (a dense layer's input x and its output gradient dy; every kernel re-masked
for the next batch).  Opened one by one each costs a round trip; here they share one.
Each operand gets its own fresh dealer mask, exactly as ``protocol.mask_operand`` would
give it, so every product computed from them is the one Beaver's protocol computes.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.mpc.party import PartyContext
from bridge.mpc.protocol import Masked, Shared


def mask_many(ctx: PartyContext, values: Sequence[Shared]) -> list[Masked]:
    """Mask every value once for many products, opening all of them in one round.

    Rounds 1 (0 for an empty list); bytes per compute party 8 * sum |value| (what
    ``mask_operand`` per value sends, in one message instead of one each).
    """
    if not values:
        return []
    k = ctx.kernels
    with ctx.messenger.label("mask"):
        masks = [ctx.corr_random(k.shape(v.share)) for v in values]
        if ctx.is_dealer:
            return [Masked(v, b, k.zeros(k.shape(v.share))) for v, b in zip(values, masks, strict=True)]
        opened = ctx.open([k.sub(v.share, b) for v, b in zip(values, masks, strict=True)])
        return [Masked(v, b, f) for v, b, f in zip(values, masks, opened, strict=True)]
