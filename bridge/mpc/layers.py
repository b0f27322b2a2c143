"""Secure forward rules, one per IR op kind, written once against the primitive interface.

A rule takes the party context, the node, its input shares and the node's
parameters (``Shared``, or ``Masked`` when reused across batches) and returns the
output share and a cache for the backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from bridge.im2col import Im2ColPlan, im2col_plan
from bridge.ir import Node, Program
from bridge.ir import ops as irops
from bridge.ir.fold import bn_affine
from bridge.mpc import activations, attention, conv_transpose, functions, normalization
from bridge.mpc import recurrent  # Embedding, SimpleRNN/LSTM/GRU, Reverse
from bridge.mpc.compare import ge_zero, mul_bit
from bridge.mpc.kernels import RingKernels, Tensor
from bridge.mpc.party import PartyContext
from bridge.mpc.protocol import Masked, Shared, add, add_public, beaver, mul, mul_public, sub, truncate

Param = Shared | Masked


@dataclass
class LayerEnv:
    ctx: PartyContext
    params: Mapping[str, Param]
    #: keep what the backward pass needs (max-pool's argmax selection); serving skips it
    training: bool = False

    def param(self, node: Node, role: str) -> Param:
        return self.params[node.params[role]] if role in node.params else self.params[f"{node.name}/{role}"]


ForwardRule = Callable[[LayerEnv, Node, list[Shared]], tuple[Shared, Any]]


def _value(p: Param) -> Shared:
    return p.value if isinstance(p, Masked) else p


# -- owner-side parameter preparation -------------------------------------------------------

def _bn_affine(op: irops.BatchNorm, plain: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The owner folds inference batch norm into y = x * scale + shift before sharing."""
    scale, shift = bn_affine(op, plain["gamma"], plain["beta"], plain["moving_mean"], plain["moving_variance"])
    return {"scale": scale, "shift": shift}


#: op kind -> owner's plaintext rewrite of that node's parameters (role -> array)
OWNER_PREP: dict[str, Callable[[Any, Mapping[str, np.ndarray]], dict[str, np.ndarray]]] = {
    "batch_norm": _bn_affine,
}

#: op kind -> parameter roles used as the fixed operand of Beaver products (masked once)
MASKED_ROLES: dict[str, tuple[str, ...]] = {
    "dense": ("kernel",),
    "conv2d": ("kernel",),
    "batch_norm": ("scale",),
    "conv1d": ("kernel",),
    "depthwise_conv2d": ("kernel",),
    "depthwise_conv1d": ("kernel",),
    "prelu": ("alpha",),
    **normalization.MASKED_ROLES,
    **attention.MASKED_ROLES,
    **conv_transpose.MASKED_ROLES,
    **recurrent.MASKED_ROLES,
}


def secure_parameter_specs(program: Program) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter as the compute parties hold it (after owner prep)."""
    specs: dict[str, tuple[int, ...]] = {}
    params = program.graph.parameters
    for node in program.graph.nodes:
        if node.op.kind in OWNER_PREP:
            channels = params[next(iter(node.params.values()))].shape
            for role in ("scale", "shift"):
                specs[f"{node.name}/{role}"] = channels
        else:
            for pname in node.params.values():
                specs[pname] = params[pname].shape
    return specs


def secure_parameters(program: Program, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The owner's plaintext parameters, rewritten as the compute parties will hold them."""
    out: dict[str, np.ndarray] = {}
    for node in program.graph.nodes:
        plain = {role: np.asarray(weights[p], dtype=np.float64) for role, p in node.params.items()}
        if node.op.kind in OWNER_PREP:
            for role, value in OWNER_PREP[node.op.kind](node.op, plain).items():
                out[f"{node.name}/{role}"] = value
        else:
            for role, pname in node.params.items():
                out[pname] = plain[role]
    return out


def masked_parameter_names(program: Program) -> list[str]:
    names = []
    for node in program.graph.nodes:
        for role in MASKED_ROLES.get(node.op.kind, ()):
            names.append(node.params[role] if role in node.params else f"{node.name}/{role}")
    return names


# -- rules ---------------------------------------------------------------------------------

def _dense(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    ctx = env.ctx
    from bridge.mpc.protocol import matmul

    x, k = xs[0], ctx.kernels
    shape = k.shape(x.share)
    if len(shape) > 2:  # Keras Dense on (batch, ..., features): the last axis, every position alike
        x = Shared(k.reshape(x.share, (-1, shape[-1])))
    y = matmul(ctx, x, env.param(node, "kernel"))
    if node.op.use_bias:
        y = add(ctx, y, _value(env.param(node, "bias")))
    if len(shape) > 2:
        y = Shared(k.reshape(y.share, (*shape[:-1], -1)))
    return y, None


def conv_plan(op, shape: tuple[int, ...]) -> Im2ColPlan:
    _, h, w, c = shape
    if isinstance(op, (irops.AvgPool2D, irops.MaxPool2D)):
        return im2col_plan(h, w, c, op.pool_size[0], op.pool_size[1], op.strides, op.padding)
    return im2col_plan(h, w, c, op.kernel_size[0], op.kernel_size[1], op.strides, op.padding, op.dilation_rate)


def extract_patches(k: RingKernels, plan: Im2ColPlan, x: Tensor) -> Tensor:
    """(n, H, W, C) -> (n, positions, window * C) by zero padding and one gather."""
    n = k.shape(x)[0]
    padded = k.pad(x, [(0, 0), *plan.pads, (0, 0)])
    flat = k.reshape(padded, (n, -1))
    patches = k.gather(flat, plan.indices.reshape(-1), axis=1)
    return k.reshape(patches, (n,) + plan.indices.shape)


def conv2d_ring(k: RingKernels, plan: Im2ColPlan, x: Tensor, w: Tensor, groups: int = 1) -> Tensor:
    """Exact ring convolution: im2col then one matmul per group.  Bilinear in (x, w).

    Group g multiplies its channels' patch entries by kernel[..., g F/G : (g+1) F/G].
    """
    n = k.shape(x)[0]
    positions, window = plan.indices.shape
    cols = k.reshape(extract_patches(k, plan, x), (n * positions, window))
    if groups == 1:
        out = k.matmul(cols, k.reshape(w, (window, -1)))
    else:
        kh, kw, cg, filters = k.shape(w)
        taps = kh * kw
        cols = k.reshape(cols, (n * positions, taps, groups, cg))
        weights = k.reshape(w, (taps, cg, groups, filters // groups))
        out = k.concat([
            k.matmul(k.reshape(k.gather(cols, np.array([g]), axis=2), (n * positions, taps * cg)),
                     k.reshape(k.gather(weights, np.array([g]), axis=2), (taps * cg, filters // groups)))
            for g in range(groups)
        ], axis=1)
    return k.reshape(out, (n, plan.out_h, plan.out_w, -1))


def depthwise_ring(k: RingKernels, plan: Im2ColPlan, x: Tensor, w: Tensor) -> Tensor:
    """Exact depthwise convolution: patches (n, P, taps, C, 1) times kernel (taps, C, M), summed
    over the taps.  Bilinear in (x, w)."""
    n = k.shape(x)[0]
    kh, kw, c, m = k.shape(w)
    positions = plan.indices.shape[0]
    cols = k.reshape(extract_patches(k, plan, x), (n, positions, kh * kw, c, 1))
    out = k.sum(k.mul(cols, k.reshape(w, (1, 1, kh * kw, c, m))), axis=2)
    return k.reshape(out, (n, plan.out_h, plan.out_w, c * m))


def _conv2d(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    ctx, k = env.ctx, env.ctx.kernels
    x, op = xs[0], node.op
    plan = conv_plan(op, k.shape(x.share))
    if op.kind == "depthwise_conv2d":
        channels = k.shape(x.share)[3] * op.depth_multiplier
        f = partial(depthwise_ring, k, plan)
    else:
        channels = op.filters
        f = partial(conv2d_ring, k, plan, groups=op.groups)
    out_shape = (k.shape(x.share)[0], plan.out_h, plan.out_w, channels)
    with ctx.messenger.label(op.kind):
        y = truncate(ctx, beaver(ctx, x, env.param(node, "kernel"), f, out_shape))
    if op.use_bias:
        y = add(ctx, y, _value(env.param(node, "bias")))
    return y, plan


def reshape_param(k: RingKernels, p: Param, shape: tuple[int, ...]) -> Param:
    """A parameter (shared or masked) viewed in another shape: every share reshaped alike."""
    if isinstance(p, Masked):
        return Masked(Shared(k.reshape(p.value.share, shape)), k.reshape(p.mask, shape), k.reshape(p.opened, shape))
    return Shared(k.reshape(p.share, shape))


class _LiftedParams(Mapping[str, Param]):
    """A node's parameters as its 2-D form reads them: kernels given a leading axis of 1."""

    def __init__(self, env: LayerEnv, node: Node) -> None:
        self._env, self._node = env, node

    def __getitem__(self, name: str) -> Param:
        p = self._env.params[name]
        if name == self._node.params.get("kernel"):
            k = self._env.ctx.kernels
            return reshape_param(k, p, (1, *k.shape(_value(p).share)))
        return p

    def __iter__(self):
        return iter(self._env.params)

    def __len__(self) -> int:
        return len(self._env.params)


def _via_2d(rule2d: ForwardRule) -> ForwardRule:
    """A 1-D op as its 2-D form on (n, 1, steps, C) images; the output drops the 1 again."""

    def rule(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
        k = env.ctx.kernels
        n, steps, c = k.shape(xs[0].share)
        lifted = node.model_copy(update={"op": node.op.as_2d()})
        env2 = LayerEnv(env.ctx, _LiftedParams(env, node), env.training)
        y, cache = rule2d(env2, lifted, [Shared(k.reshape(xs[0].share, (n, 1, steps, c)))])
        _, _, out_steps, out_c = k.shape(y.share)
        return Shared(k.reshape(y.share, (n, out_steps, out_c))), cache

    return rule


def _pool_patches(k: RingKernels, plan: Im2ColPlan, x: Tensor, channels: int) -> Tensor:
    """(n, H, W, C) -> (n, positions, window, C)."""
    n = k.shape(x)[0]
    positions = plan.indices.shape[0]
    return k.reshape(extract_patches(k, plan, x), (n, positions, -1, channels))


def _avg_pool2d(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    ctx, k = env.ctx, env.ctx.kernels
    n, _, _, c = k.shape(xs[0].share)
    plan = conv_plan(node.op, k.shape(xs[0].share))
    summed = Shared(k.sum(_pool_patches(k, plan, xs[0].share, c), axis=2))
    inverse = (1.0 / plan.valid_counts.astype(np.float64)).reshape(1, -1, 1)
    y = mul_public(ctx, summed, inverse)
    return Shared(k.reshape(y.share, (n, plan.out_h, plan.out_w, c))), plan


def _max_pool2d(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    ctx, k = env.ctx, env.ctx.kernels
    x = xs[0]
    n, h, w, c = k.shape(x.share)
    plan = conv_plan(node.op, (n, h, w, c))
    if any(sum(p) for p in plan.pads):
        # Padded cells must never win: lift them to a very negative public value.
        floor = -int(ctx.numerics.max_abs_compared * ctx.numerics.scale) // 4
        inside = np.zeros((h, w, c), dtype=np.int64)
        marker = np.pad(inside + 1, [*plan.pads, (0, 0)])
        x_pad = k.pad(x.share, [(0, 0), *plan.pads, (0, 0)])
        x_pad = add_public(ctx, Shared(x_pad), ctx.public((1 - marker)[None] * floor)).share
        no_pad = Im2ColPlan(((0, 0), (0, 0)), plan.out_h, plan.out_w, plan.indices, plan.valid_counts)
        patches = _pool_patches(k, no_pad, x_pad, c)
    else:
        patches = _pool_patches(k, plan, x.share, c)
    window_first = Shared(k.transpose(patches, (2, 0, 1, 3)))
    if env.training:
        best, selection = max_with_selection(ctx, window_first)
        return Shared(k.reshape(best.share, (n, plan.out_h, plan.out_w, c))), (plan, selection)
    best = functions.max_axis0(ctx, window_first)
    return Shared(k.reshape(best.share, (n, plan.out_h, plan.out_w, c))), plan


def max_with_selection(ctx: PartyContext, x: Shared) -> tuple[Shared, Shared]:
    """(max over axis 0, [one-hot of the winner over axis 0]): the tree of ``max_axis0``
    that also carries, for each candidate, which original entry it is.

    At each level the pair (lo, hi) gives (max, [lo >= hi]) and the winner's selection
    is sel_hi + [lo >= hi] (sel_lo - sel_hi): local on the first level (public one-hots),
    one Beaver product of |sel| + |bit| elements on each later level (no truncation:
    bits and selections are integers).  Ties go to lo.  The selection is integer 0/1.
    """
    k = ctx.kernels
    shape = k.shape(x.share)
    n, rest = shape[0], tuple(shape[1:])
    one_hot = np.eye(n, dtype=np.int64).reshape((n, n) + (1,) * len(rest))
    public_sel: np.ndarray | None = one_hot
    sel: Shared | None = None
    with ctx.messenger.label("max_select"):
        while k.shape(x.share)[0] > 1:
            m = k.shape(x.share)[0]
            half = m // 2
            lo = Shared(k.gather(x.share, np.arange(half), axis=0))
            hi = Shared(k.gather(x.share, np.arange(half, 2 * half), axis=0))
            best, bit = functions.maximum(ctx, lo, hi)
            bit = Shared(k.reshape(bit.share, (half, 1) + rest))
            if public_sel is not None:
                lo_sel, hi_sel = public_sel[:half], public_sel[half : 2 * half]
                picked = Shared(k.mul(bit.share, ctx.public(lo_sel - hi_sel)))
                chosen = add_public(ctx, picked, ctx.public(hi_sel))
                tail = Shared(_public_share(ctx, public_sel[2 * half :], rest)) if m % 2 else None
            else:
                assert sel is not None
                lo_sel = Shared(k.gather(sel.share, np.arange(half), axis=0))
                hi_sel = Shared(k.gather(sel.share, np.arange(half, 2 * half), axis=0))
                diff = Shared(k.sub(lo_sel.share, hi_sel.share))
                picked = beaver(ctx, diff, bit, k.mul, (half, n) + rest)
                chosen = add(ctx, hi_sel, picked)
                tail = Shared(k.gather(sel.share, np.array([m - 1]), axis=0)) if m % 2 else None
            if tail is not None:
                best = Shared(k.concat([best.share, k.gather(x.share, np.array([m - 1]), axis=0)], axis=0))
                chosen = Shared(k.concat([chosen.share, tail.share], axis=0))
            x, sel, public_sel = best, chosen, None
    assert sel is not None
    return Shared(k.reshape(x.share, rest)), Shared(k.reshape(sel.share, (n,) + rest))


def _public_share(ctx: PartyContext, value: np.ndarray, rest: tuple[int, ...]) -> Tensor:
    """This party's share of a public integer tensor broadcast over ``rest`` (P0 holds it)."""
    k = ctx.kernels
    full = np.broadcast_to(value, value.shape[:2] + rest)
    return ctx.public(full) if ctx.is_compute and ctx.index == 0 else k.zeros(full.shape)


def _spatial_last(k: RingKernels, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """(n, *spatial, C) -> ((prod spatial, n, C), spatial)."""
    shape = k.shape(x)
    n, spatial, c = shape[0], tuple(shape[1:-1]), shape[-1]
    moved = k.transpose(x, (*range(1, len(shape) - 1), 0, len(shape) - 1))
    return k.reshape(moved, (-1, n, c)), spatial


def _global_avg(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    ctx, k = env.ctx, env.ctx.kernels
    shape = k.shape(xs[0].share)
    axes = tuple(range(1, len(shape) - 1))
    summed = Shared(k.sum(xs[0].share, axis=axes, keepdims=node.op.keepdims))
    return mul_public(ctx, summed, 1.0 / float(np.prod(shape[1:-1]))), None


def _global_max(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    """Max over every cell of each channel: a comparison tree of depth ceil(log2 cells)."""
    ctx, k = env.ctx, env.ctx.kernels
    cells, spatial = _spatial_last(k, xs[0].share)
    selection = None  # training: the winner's one-hot over the cells, for the backward pass
    if env.training and k.shape(cells)[0] > 1:
        best, selection = max_with_selection(ctx, Shared(cells))
    else:
        best = functions.max_axis0(ctx, Shared(cells))
    n, c = k.shape(best.share)
    return (Shared(k.reshape(best.share, (n, *(1,) * len(spatial), c))) if node.op.keepdims else best), selection


def _upsample(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    """Nearest upsampling: a gather with repeated public indices on each spatial axis (local)."""
    k = env.ctx.kernels
    sizes = node.op.size if isinstance(node.op.size, tuple) else (node.op.size,)
    y = xs[0].share
    for axis, size in enumerate(sizes, start=1):
        y = k.gather(y, np.repeat(np.arange(k.shape(y)[axis]), size), axis=axis)
    return Shared(y), None


def _pad(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    """Zero cells are valid shares of zero: local."""
    return Shared(env.ctx.kernels.pad(xs[0].share, [(0, 0), *node.op.pads])), None


def _crop(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    k = env.ctx.kernels
    y = xs[0].share
    for axis, (before, after) in enumerate(node.op.crops, start=1):
        if before or after:
            y = k.gather(y, np.arange(before, k.shape(y)[axis] - after), axis=axis)
    return Shared(y), None


def _transpose(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    return Shared(env.ctx.kernels.transpose(xs[0].share, (0, *(a + 1 for a in node.op.perm)))), None


def _repeat_vector(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    k = env.ctx.kernels
    n, f = k.shape(xs[0].share)
    return Shared(k.broadcast_to(k.reshape(xs[0].share, (n, 1, f)), (n, node.op.n, f))), None


def _concat(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    k = env.ctx.kernels
    rank = len(k.shape(xs[0].share))
    return Shared(k.concat([x.share for x in xs], axis=node.op.axis % (rank - 1) + 1)), None


def _subtract(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    return sub(env.ctx, xs[0], xs[1]), None


def _multiply(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    """Secret x secret: one Beaver product and truncation per extra input."""
    out = xs[0]
    for x in xs[1:]:
        out = mul(env.ctx, out, x)
    return out, None


def _average(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    total, _ = _add(env, node, xs)
    return mul_public(env.ctx, total, 1.0 / len(xs)), None


def _extremum(largest: bool) -> ForwardRule:
    """max (or min = a + b - max) of the inputs, pairwise: one comparison per extra input."""

    def rule(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
        ctx = env.ctx
        out, bits = xs[0], []  # bits [running >= x]: the backward pass routes the gradient by them
        for x in xs[1:]:
            best, bit = functions.maximum(ctx, out, x)
            bits.append(bit)
            out = best if largest else sub(ctx, add(ctx, out, x), best)
        return out, bits

    return rule


def _prelu(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    """relu(x) + alpha min(x, 0): one comparison, one product with the (masked) alpha."""
    ctx = env.ctx
    positive, bit = functions.relu_with_bit(ctx, xs[0])
    negative = sub(ctx, xs[0], positive)
    alpha = env.param(node, "alpha")
    k = ctx.kernels
    alpha = reshape_param(k, alpha, (1, *k.shape(_value(alpha).share)))
    return add(ctx, positive, mul(ctx, negative, alpha)), (bit, negative)  # the backward pass reads both


def _rescale(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    """x * scale + offset with public constants: one truncation."""
    ctx, op = env.ctx, node.op
    y = xs[0]
    if op.scale != 1.0:
        y = mul_public(ctx, y, np.asarray(op.scale, dtype=np.float64))
    offset = np.asarray(op.offset, dtype=np.float64)
    if np.any(offset != 0.0):
        y = add_public(ctx, y, ctx.public(np.round(offset * ctx.numerics.scale).astype(np.int64)))
    return y, None


def _softmax(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    """``functions.softmax`` over the last axis, the op's axis moved there and back."""
    ctx, k = env.ctx, env.ctx.kernels
    rank = len(k.shape(xs[0].share))
    axis = node.op.axis % (rank - 1) + 1
    if axis == rank - 1:
        y = functions.softmax(ctx, xs[0])
        return y, y
    perm = tuple(a for a in range(rank) if a != axis) + (axis,)
    inverse = tuple(int(i) for i in np.argsort(perm))
    y = functions.softmax(ctx, Shared(k.transpose(xs[0].share, perm)))
    return Shared(k.transpose(y.share, inverse)), None


def _flatten(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    k = env.ctx.kernels
    return Shared(k.reshape(xs[0].share, (k.shape(xs[0].share)[0], -1))), k.shape(xs[0].share)


def _reshape(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    k = env.ctx.kernels
    n = k.shape(xs[0].share)[0]
    return Shared(k.reshape(xs[0].share, (n, *node.op.target_shape))), k.shape(xs[0].share)


def _add(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    out = xs[0]
    for x in xs[1:]:
        out = add(env.ctx, out, x)
    return out, None


def _relu(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    """ReLU as in ``functions.relu_with_bit``; the cache is the XOR-shared bit [x >= 0],
    which the backward pass injects into the gradient in one round (``mul_bit``).
    Keras' other options (max_value, negative_slope, threshold): ``activations.clipped_relu``."""
    ctx, op = env.ctx, node.op
    if not op.plain:
        return activations.clipped_relu(ctx, xs[0], op.negative_slope, op.threshold, op.max_value)
    with ctx.messenger.label("relu"):
        bit = ge_zero(ctx, xs[0])
        y, _ = mul_bit(ctx, bit, xs[0])
    return y, bit


def _unary(fn: Callable[[PartyContext, Shared], Shared]) -> ForwardRule:
    def rule(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
        y = fn(env.ctx, xs[0])
        return y, y

    return rule


def _batch_norm(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    """x * scale + shift per channel of the op's axis (the owner folded the statistics)."""
    ctx, k = env.ctx, env.ctx.kernels
    rank = len(k.shape(xs[0].share))
    scale, shift = env.param(node, "scale"), _value(env.param(node, "shift"))
    axis = node.op.axis % (rank - 1) + 1
    if axis != rank - 1:
        shape = [1] * rank
        shape[axis] = k.shape(shift.share)[0]
        scale, shift = reshape_param(k, scale, tuple(shape)), Shared(k.reshape(shift.share, tuple(shape)))
    with ctx.messenger.label("batch_norm"):
        y = mul(ctx, xs[0], scale)
    return add(ctx, y, shift), None


def _identity(env: LayerEnv, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    return xs[0], None


SECURE_FORWARD: dict[str, ForwardRule] = {
    "dense": _dense,
    "conv2d": _conv2d,
    "avg_pool2d": _avg_pool2d,
    "max_pool2d": _max_pool2d,
    "global_avg_pool2d": _global_avg,
    "flatten": _flatten,
    "reshape": _reshape,
    "add": _add,
    "relu": _relu,
    "sigmoid": _unary(functions.sigmoid),
    "tanh": _unary(functions.tanh),
    "softmax": _softmax,
    "batch_norm": _batch_norm,
    "identity": _identity,
    "conv1d": _via_2d(_conv2d),
    "depthwise_conv2d": _conv2d,
    "depthwise_conv1d": _via_2d(_conv2d),
    "avg_pool1d": _via_2d(_avg_pool2d),
    "max_pool1d": _via_2d(_max_pool2d),
    "global_max_pool2d": _global_max,
    "global_avg_pool1d": _global_avg,
    "global_max_pool1d": _global_max,
    "upsample2d": _upsample,
    "upsample1d": _upsample,
    "pad": _pad,
    "crop": _crop,
    "transpose": _transpose,
    "repeat_vector": _repeat_vector,
    "concat": _concat,
    "subtract": _subtract,
    "multiply": _multiply,
    "average": _average,
    "maximum": _extremum(largest=True),
    "minimum": _extremum(largest=False),
    "prelu": _prelu,
    "rescale": _rescale,
    "elu": lambda env, node, xs: _unary(partial(activations.elu, alpha=node.op.alpha))(env, node, xs),
    "gelu": _unary(activations.gelu),
    "silu": _unary(activations.silu),
    "hard_sigmoid": _unary(activations.hard_sigmoid),
    "hard_silu": _unary(activations.hard_silu),
    "softplus": _unary(activations.softplus),
    "softsign": _unary(activations.softsign),
    **normalization.RULES,
    **attention.RULES,
    **conv_transpose.RULES,
    **recurrent.RULES,
}


def secure_forward(
    ctx: PartyContext,
    program: Program,
    params: Mapping[str, Param],
    inputs: Mapping[str, Shared],
    training: bool = False,
) -> tuple[dict[str, Shared], dict[str, Any]]:
    """Run the graph on shares; returns every value and each node's backward cache."""
    env = LayerEnv(ctx, params, training)
    values: dict[str, Shared] = dict(inputs)
    caches: dict[str, Any] = {}
    for node in program.graph.nodes:
        with ctx.messenger.label(node.name):
            out, cache = SECURE_FORWARD[node.op.kind](env, node, [values[v] for v in node.inputs])
        values[node.output] = out
        caches[node.name] = cache
    return values, caches
