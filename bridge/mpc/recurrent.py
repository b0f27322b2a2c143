"""Secure forward rules of Embedding, SimpleRNN, LSTM, GRU and Reverse, on shares.

Written once against the protocol primitives (``bridge.mpc.protocol`` / ``functions``), so
both backends run them.  Registered in ``bridge.mpc.layers.SECURE_FORWARD``.

Embedding: the data owner shared one-hot rows (``bridge.ir.tokens``), so the lookup is one
Beaver matmul of the one-hot rows with the masked table: 1 round, 8 bytes per one-hot entry
(steps x vocabulary per example) per compute party; exact but for one truncation (2^-16).

Recurrent layers are unrolled over the steps.  The input projection x W + b of every step is
one matmul before the loop; each step then costs one matmul h U with the recurrent kernel
(masked once, so only h is opened) and the cell's activations, all gates of one activation
batched into one call (tanh is 2 sigmoid(2x) - 1, so it joins the gates' sigmoid call; a
sigmoid is 27 rounds).  Rounds per step after the first, counted (``tests/conformance/
test_recurrent.py`` asserts them):
    SimpleRNN   1 (h U) + 27 (activation)                                          = 28
    LSTM        1 + 27 (i, f, g, o) + 1 (f c, i g) + 27 (tanh c) + 1 (o tanh c)    = 57
    GRU         1 + 27 (z, r) + 1 (r (h U_h)) + 27 (candidate) + 1 (blend)         = 57
                (reset_after=False: r h before its matmul, one more round: 58)
The first step skips the products with the zero initial state.

Error (16 fractional bits): each sigmoid is within 4e-3 of the exact value, tanh within 8e-3
(``functions.sigmoid``); a recurrence carries the error of step t - 1 into step t through
h U, so the error of h_t is at most e_cell (1 + L + ... + L^(t-1)), where L bounds how much
the cell amplifies a change of h (for SimpleRNN/tanh: the largest absolute row sum of U).
With L < 1 the error stays below e_cell / (1 - L); with L >= 1 the bound grows with the sequence
length.  Measured up to 64 steps by ``scripts/recurrent_error.py``: LSTM and GRU stay near one
activation's error (saturated gates forget it), an expansive SimpleRNN drifts (4e-2 at 64 steps)
(README, "Sequence models"); the conformance tolerance is in ``tests/conformance/cases_recurrent.py``.

Truncation failures (``protocol.truncate``) inside a cell would be hidden by the saturating
activations, so every pre-activation of every step is range-checked inside the layer (two
comparisons per value against DEFAULT_SERVING_BOUND, one call at the end) and a flag is added
to the layer's output as ``max_bound`` (above every admissible overflow_bound): the session's
range check on the output then reruns or refuses the query, naming this layer.  Serving only (the check is skipped when training).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bridge.ir import Node
from bridge.mpc import activations, functions
from bridge.mpc.kernels import RingKernels, Tensor
from bridge.mpc.party import PartyContext
from bridge.mpc.protocol import Masked, Shared, add, add_constant, matmul, mul, mul_public_int, sub
from bridge.mpc.range_check import DEFAULT_SERVING_BOUND, max_bound, overflow_flags

Param = Shared | Masked


def _value(p: Param) -> Shared:
    return p.value if isinstance(p, Masked) else p


def _cols(k: RingKernels, t: Tensor, start: int, stop: int) -> Tensor:
    """t[..., start:stop] (last axis)."""
    return k.gather(t, np.arange(start, stop), axis=len(k.shape(t)) - 1)


def _param_cols(k: RingKernels, p: Param, start: int, stop: int) -> Param:
    """Columns of a (shared or masked) matrix parameter; a masked one stays masked."""
    if isinstance(p, Masked):
        return Masked(Shared(_cols(k, p.value.share, start, stop)), _cols(k, p.mask, start, stop),
                      _cols(k, p.opened, start, stop))
    return Shared(_cols(k, p.share, start, stop))


def _split(k: RingKernels, x: Shared, parts: int) -> list[Shared]:
    width = k.shape(x.share)[-1] // parts
    return [Shared(_cols(k, x.share, i * width, (i + 1) * width)) for i in range(parts)]


def _matmul_nd(ctx: PartyContext, x: Shared, w: Param) -> Shared:
    """(..., K) @ (K, N) as one 2-D matmul."""
    k = ctx.kernels
    shape = k.shape(x.share)
    flat = Shared(k.reshape(x.share, (-1, shape[-1])))
    y = matmul(ctx, flat, w)
    return Shared(k.reshape(y.share, (*shape[:-1], k.shape(y.share)[-1])))


def activate(ctx: PartyContext, pieces: list[tuple[str, Shared]]) -> list[Shared]:
    """Each piece through its activation; every sigmoid and tanh piece in one sigmoid call
    (tanh x = 2 sigmoid(2x) - 1), so a cell's gates cost the rounds of one sigmoid."""
    k = ctx.kernels
    out: list[Shared | None] = [None] * len(pieces)
    smooth = [i for i, (name, _) in enumerate(pieces) if name in ("sigmoid", "tanh")]
    if smooth:
        args = [functions.double(ctx, pieces[i][1]) if pieces[i][0] == "tanh" else pieces[i][1] for i in smooth]
        rank = len(k.shape(args[0].share))
        widths = [k.shape(a.share)[-1] for a in args]
        s = functions.sigmoid(ctx, Shared(k.concat([a.share for a in args], axis=rank - 1)))
        start = 0
        for i, width in zip(smooth, widths, strict=True):
            part = Shared(_cols(k, s.share, start, start + width))
            start += width
            out[i] = add_constant(ctx, functions.double(ctx, part), -1.0) if pieces[i][0] == "tanh" else part
    for i, (name, x) in enumerate(pieces):
        if name == "relu":
            out[i] = functions.relu(ctx, x)
        elif name == "linear":
            out[i] = x
        elif name == "hard_sigmoid":
            out[i] = activations.hard_sigmoid(ctx, x)
    return out  # type: ignore[return-value]


# -- Embedding ----------------------------------------------------------------------------------

def embedding(env: Any, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    """one_hot @ table with the masked table: 1 round, exact but for one truncation."""
    ctx = env.ctx
    with ctx.messenger.label("embedding"):
        return _matmul_nd(ctx, xs[0], env.param(node, "embeddings")), None


def reverse(env: Any, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    """Flip one feature axis: a gather with public indices (local)."""
    k = env.ctx.kernels
    shape = k.shape(xs[0].share)
    axis = node.op.axis % (len(shape) - 1) + 1
    return Shared(k.gather(xs[0].share, np.arange(shape[axis] - 1, -1, -1), axis=axis)), None


# -- recurrent layers --------------------------------------------------------------------------

class _Unroll:
    """What every cell shares: the input projection per step and the checked pre-activations."""

    def __init__(self, env: Any, node: Node, x: Shared) -> None:
        self.ctx, self.node, self.op = env.ctx, node, node.op
        k = self.ctx.kernels
        n, steps, _ = k.shape(x.share)
        if self.op.go_backwards:
            x = Shared(k.gather(x.share, np.arange(steps - 1, -1, -1), axis=1))
        self.n, self.steps = n, steps
        self.kernel = env.param(node, "kernel")
        self.recurrent = env.param(node, "recurrent_kernel")
        self.bias = _value(env.param(node, "bias")) if self.op.use_bias else None
        self.check = not env.training
        self.checked: list[Shared] = []
        with self.ctx.messenger.label(f"{self.op.kind}/input"):
            self.projected = _matmul_nd(self.ctx, x, self.kernel)  # (n, steps, gates * units)

    def add_input_bias(self, bias: Shared | None) -> None:
        if bias is not None:
            self.projected = add(self.ctx, self.projected, bias)

    def step_input(self, t: int) -> Shared:
        k = self.ctx.kernels
        return Shared(k.reshape(k.gather(self.projected.share, np.array([t]), axis=1), (self.n, -1)))

    def pre(self, x: Shared) -> Shared:
        """Record a pre-activation for the in-layer range check."""
        if self.check:
            self.checked.append(Shared(self.ctx.kernels.reshape(x.share, (-1,))))
        return x

    def finish(self, states: list[Shared]) -> Shared:
        ctx, k = self.ctx, self.ctx.kernels
        if self.op.return_sequences:
            out = Shared(k.stack([h.share for h in states], axis=1))
        else:
            out = states[-1]
        if self.check and self.checked:
            with ctx.messenger.label(f"{self.op.kind}/range"):
                stacked = Shared(k.concat([c.share for c in self.checked], axis=0))
                flag = overflow_flags(ctx, [stacked], DEFAULT_SERVING_BOUND)  # integer 0/1, shape (1,)
                lift = ctx.public(np.array(int(max_bound(ctx.numerics.frac_bits) * ctx.numerics.scale), dtype=np.int64))
                alarm = mul_public_int(ctx, Shared(k.reshape(flag.share, (1,) * len(k.shape(out.share)))), lift)
                out = add(ctx, out, alarm)
        return out


def simple_rnn(env: Any, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    ctx, op = env.ctx, node.op
    u = _Unroll(env, node, xs[0])
    u.add_input_bias(u.bias)
    states: list[Shared] = []
    with ctx.messenger.label("simple_rnn"):
        for t in range(u.steps):
            z = u.step_input(t)
            if states:
                z = add(ctx, z, matmul(ctx, states[-1], u.recurrent))
            (h,) = activate(ctx, [(op.activation, u.pre(z))])
            states.append(h)
    return u.finish(states), None


def lstm(env: Any, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    ctx, op, k = env.ctx, node.op, env.ctx.kernels
    u = _Unroll(env, node, xs[0])
    u.add_input_bias(u.bias)
    gate, act = op.recurrent_activation, op.activation
    states: list[Shared] = []
    c: Shared | None = None
    with ctx.messenger.label("lstm"):
        for t in range(u.steps):
            z = u.step_input(t)
            if states:
                z = add(ctx, z, matmul(ctx, states[-1], u.recurrent))
            zi, zf, zg, zo = _split(k, u.pre(z), 4)
            i, f, g, o = activate(ctx, [(gate, zi), (gate, zf), (act, zg), (gate, zo)])
            if c is None:
                c = mul(ctx, i, g)  # c_0 = 0: f c_0 vanishes
            else:  # f c and i g in one Beaver product
                both = mul(ctx, Shared(k.concat([f.share, i.share], axis=1)), Shared(k.concat([c.share, g.share], axis=1)))
                fc, ig = _split(k, both, 2)
                c = add(ctx, fc, ig)
            (squashed,) = activate(ctx, [(act, u.pre(c))])
            states.append(mul(ctx, o, squashed))
    return u.finish(states), None


def gru(env: Any, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    ctx, op, k = env.ctx, node.op, env.ctx.kernels
    u = _Unroll(env, node, xs[0])
    units = op.units
    gate, act = op.recurrent_activation, op.activation
    recurrent_bias = None
    if u.bias is not None and op.reset_after:
        rows = [Shared(k.reshape(k.gather(u.bias.share, np.array([r]), axis=0), (-1,))) for r in (0, 1)]
        u.add_input_bias(rows[0])
        recurrent_bias = rows[1]
    else:
        u.add_input_bias(u.bias)
    h: Shared | None = None
    states: list[Shared] = []
    with ctx.messenger.label("gru"):
        for t in range(u.steps):
            xz, xr, xh = _split(k, u.step_input(t), 3)
            if op.reset_after:
                if h is not None:
                    inner = matmul(ctx, h, u.recurrent)
                    if recurrent_bias is not None:
                        inner = add(ctx, inner, recurrent_bias)
                elif recurrent_bias is not None:  # h_0 = 0: h U vanishes, the bias stays
                    inner = add(ctx, Shared(k.zeros((u.n, 3 * units))), recurrent_bias)
                else:
                    inner = None
                if inner is not None:
                    iz, ir, ih = _split(k, inner, 3)
                    xz, xr = add(ctx, xz, iz), add(ctx, xr, ir)
                z, r = activate(ctx, [(gate, u.pre(xz)), (gate, u.pre(xr))])
                pre_h = add(ctx, xh, mul(ctx, r, ih)) if inner is not None else xh
            else:
                if h is not None:
                    zr = matmul(ctx, h, _param_cols(k, u.recurrent, 0, 2 * units))
                    iz, ir = _split(k, zr, 2)
                    xz, xr = add(ctx, xz, iz), add(ctx, xr, ir)
                z, r = activate(ctx, [(gate, u.pre(xz)), (gate, u.pre(xr))])
                pre_h = xh
                if h is not None:
                    pre_h = add(ctx, xh, matmul(ctx, mul(ctx, r, h), _param_cols(k, u.recurrent, 2 * units, 3 * units)))
            (candidate,) = activate(ctx, [(act, u.pre(pre_h))])
            # h = z h + (1 - z) candidate = candidate + z (h - candidate); h_0 = 0
            if h is None:
                h = sub(ctx, candidate, mul(ctx, z, candidate))
            else:
                h = add(ctx, candidate, mul(ctx, z, sub(ctx, h, candidate)))
            states.append(h)
    return u.finish(states), None


RULES = {
    "embedding": embedding,
    "simple_rnn": simple_rnn,
    "lstm": lstm,
    "gru": gru,
    "reverse": reverse,
}

#: op kind -> parameter roles masked once (Pond) and reused by every step and batch
MASKED_ROLES = {
    "embedding": ("embeddings",),
    "simple_rnn": ("kernel", "recurrent_kernel"),
    "lstm": ("kernel", "recurrent_kernel"),
    "gru": ("kernel", "recurrent_kernel"),
}
