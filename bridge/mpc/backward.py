"""Secure backward rules, one per IR op kind, written once against the primitive interface.

A rule gets the node, its input shares ``xs``, its output share ``y``, the cache its
forward rule returned (``layers.SECURE_FORWARD`` run with ``training=True``), the
gradient [dy] of the loss with respect to ``y``, and which inputs need a gradient.
It returns the input gradients (None where not needed) and the parameter gradients
by role.  Products reuse masks where an operand takes part in two of them (Pond):
the dense and conv rules open [dy] once for both dx and dW (in one message with their
input x, the other operand of dW: ``batched.mask_many``, one round per layer), and the
kernel is opened once per batch for forward and backward (``Masked`` parameters).

Costs per batch, bytes sent by one compute party (8 bytes per ring element):
  dense    dx and dW: |dy| + |x|;  dW only (first layer): |dy| + |x|
  conv2d   the same with |x| the input image (patches are formed inside the product)
  relu     |dy| + |dy|/8 (bit injection of the cached XOR bit)
  max_pool |selection| + |dy|;  sigmoid, tanh: 2|y| + |dy|;  pools, reshapes, add: 0
  batch_norm (frozen only: ``reference_train.refuse_untrainable``)  |dy|
The opset-v2 rules (and relu's options, softmax on any axis, dilated/grouped and
depthwise convolutions) are in ``backward_v2``, which registers them in SECURE_BACKWARD.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from bridge.im2col import Im2ColPlan
from bridge.ir import Node, Program
from bridge.mpc import functions
from bridge.mpc.batched import mask_many
from bridge.mpc.compare import Bits, mul_bit
from bridge.mpc.kernels import RingKernels, Tensor
from bridge.mpc.layers import LayerEnv, Param, extract_patches, reshape_param
from bridge.mpc.party import PartyContext
from bridge.mpc.protocol import (
    Masked,
    Shared,
    add,
    add_constant,
    beaver,
    mask_operand,
    mul,
    mul_public,
    neg,
    square,
    sub,
    truncate,
)
from bridge.reference_train import LossHead

Grads = tuple[list[Shared | None], dict[str, Shared]]
BackwardRule = Callable[[LayerEnv, Node, list[Shared], Shared, Any, Shared, list[bool]], Grads]


# -- products of masked operands ----------------------------------------------------------------

def as_masked(ctx: PartyContext, p: Param) -> Masked:
    return p if isinstance(p, Masked) else mask_operand(ctx, p)


def masked_product(
    ctx: PartyContext, x: Masked, y: Masked, f: Callable[[Tensor, Tensor], Tensor], out_shape: tuple[int, ...]
) -> Shared:
    """[f(x, y)] for a bilinear f when both operands are already masked: no opening at all.

    With E = x - a and F = y - b open, the dealer shares c = f(a, b) for this f and
    [z] = [c] + f(E, [b]) + f([a], F) + f(E, F) (the last term by P0), as in ``beaver``.
    Rounds 0; dealer -> P1: 8 |f(x, y)| bytes.  No truncation: the caller rescales.
    """
    k = ctx.kernels
    c = ctx.corr_derived(lambda: f(x.mask, y.mask), tuple(out_shape))
    if ctx.is_dealer:
        return Shared(c)
    z = k.add(k.add(c, f(x.opened, y.mask)), f(x.mask, y.opened))
    if ctx.index == 0:
        z = k.add(z, f(x.opened, y.opened))
    return Shared(z)


def _t(k: RingKernels, a: Tensor) -> Tensor:
    return k.transpose(a, (1, 0))


# -- the adjoint of patch extraction --------------------------------------------------------------

def scatter_patches(k: RingKernels, plan: Im2ColPlan, cols: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    """(n, positions, window * C) -> (n, H, W, C): sum every patch entry back onto the cell it
    was gathered from (``segment_sum`` is the adjoint of ``gather``), then drop the padding."""
    n, h, w, c = in_shape
    (top, bottom), (left, right) = plan.pads
    hp, wp = h + top + bottom, w + left + right
    flat = _t(k, k.reshape(cols, (n, -1)))  # (positions * window * C, n)
    summed = k.segment_sum(flat, plan.indices.reshape(-1), hp * wp * c)
    padded = k.reshape(_t(k, summed), (n, hp, wp, c))
    if top or bottom:
        padded = k.gather(padded, np.arange(top, top + h), axis=1)
    if left or right:
        padded = k.gather(padded, np.arange(left, left + w), axis=2)
    return padded


# -- rules ---------------------------------------------------------------------------------------

def _dense(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared, needs: list[bool]) -> Grads:
    ctx, k = env.ctx, env.ctx.kernels
    x, in_shape = xs[0], k.shape(xs[0].share)
    if len(in_shape) > 2:  # Dense on (batch, ..., features): every position is a row
        x = Shared(k.reshape(x.share, (-1, in_shape[-1])))
        dy = Shared(k.reshape(dy.share, (-1, node.op.units)))
    kernel_shape = (in_shape[-1], node.op.units)
    grad_w = lambda a, b: k.matmul(_t(k, a), b)  # noqa: E731 - x^T dy, bilinear in (x, dy)
    with ctx.messenger.label("dense_grad"):
        if needs[0]:
            x_masked, dy_masked = mask_many(ctx, [x, dy])  # one round opens both
            kernel = as_masked(ctx, env.param(node, "kernel"))
            dx = truncate(ctx, masked_product(
                ctx, dy_masked, kernel, lambda a, b: k.matmul(a, _t(k, b)), k.shape(x.share)))
            dw = truncate(ctx, masked_product(ctx, x_masked, dy_masked, grad_w, kernel_shape))
            dx = Shared(k.reshape(dx.share, in_shape))
        else:
            dx, dw = None, truncate(ctx, beaver(ctx, x, dy, grad_w, kernel_shape))
    grads = {"kernel": dw}
    if node.op.use_bias:
        grads["bias"] = Shared(k.sum(dy.share, axis=0))
    return [dx], grads


def conv_gradients(k: RingKernels, op: Any, plan: Im2ColPlan, in_shape: tuple[int, ...],
                   kernel_shape: tuple[int, ...]) -> tuple[Callable, Callable]:
    """(grad_w(x, dy), grad_x(dy, kernel)), both bilinear, of a Conv2D (any dilation: the plan
    spaces the taps; any groups) or a DepthwiseConv2D, exact in the ring (no truncation).

    grad_w = patches(x)^T dy per group (depthwise: per channel); grad_x = scatter(dy W^T),
    the adjoint of patch extraction.  Group g of G reads channels [g C/G, (g+1) C/G) and
    writes filters [g F/G, (g+1) F/G); a depthwise output channel c M + m reads channel c."""
    n, c = in_shape[0], in_shape[3]
    positions = plan.indices.shape[0]
    taps = kernel_shape[0] * kernel_shape[1]
    rows = n * positions

    def patches(x: Tensor, shape: tuple[int, ...]) -> Tensor:
        return k.reshape(extract_patches(k, plan, x), shape)

    def back(cols: Tensor) -> Tensor:
        return scatter_patches(k, plan, k.reshape(cols, (n, positions, taps * c)), in_shape)

    if op.kind == "depthwise_conv2d":
        m = kernel_shape[3]

        def grad_w(a: Tensor, b: Tensor) -> Tensor:  # sum_{n,p} cols[n,p,t,c] dy[n,p,c,m]
            prod = k.mul(patches(a, (rows, taps, c, 1)), k.reshape(b, (rows, 1, c, m)))
            return k.reshape(k.sum(prod, axis=0), kernel_shape)

        def grad_x(a: Tensor, b: Tensor) -> Tensor:  # dcols[n,p,t,c] = sum_m dy[n,p,c,m] w[t,c,m]
            prod = k.mul(k.reshape(a, (rows, 1, c, m)), k.reshape(b, (1, taps, c, m)))
            return back(k.sum(prod, axis=3))

        return grad_w, grad_x

    groups, filters = op.groups, kernel_shape[3]
    cg, fg = c // groups, filters // groups
    if groups == 1:
        def grad_w(a: Tensor, b: Tensor) -> Tensor:
            cols = patches(a, (rows, taps * c))
            return k.reshape(k.matmul(_t(k, cols), k.reshape(b, (rows, filters))), kernel_shape)

        def grad_x(a: Tensor, b: Tensor) -> Tensor:
            return back(k.matmul(k.reshape(a, (rows, filters)), _t(k, k.reshape(b, (taps * c, filters)))))

        return grad_w, grad_x

    def pick(t: Tensor, g: int, axis: int, shape: tuple[int, ...]) -> Tensor:
        return k.reshape(k.gather(t, np.array([g]), axis=axis), shape)

    def grad_w(a: Tensor, b: Tensor) -> Tensor:  # per group: cols_g^T dy_g, kernel (taps, cg, G, fg)
        cols = patches(a, (rows, taps, groups, cg))
        dy = k.reshape(b, (rows, groups, fg))
        parts = [k.reshape(k.matmul(_t(k, pick(cols, g, 2, (rows, taps * cg))), pick(dy, g, 1, (rows, fg))),
                           (taps, cg, 1, fg)) for g in range(groups)]
        return k.reshape(k.concat(parts, axis=2), kernel_shape)

    def grad_x(a: Tensor, b: Tensor) -> Tensor:  # per group: dy_g W_g^T
        dy = k.reshape(a, (rows, groups, fg))
        w = k.reshape(b, (taps, cg, groups, fg))
        parts = [k.reshape(k.matmul(pick(dy, g, 1, (rows, fg)), _t(k, pick(w, g, 2, (taps * cg, fg)))),
                           (rows, taps, 1, cg)) for g in range(groups)]
        return back(k.concat(parts, axis=2))

    return grad_w, grad_x


def _conv2d(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, plan: Im2ColPlan, dy: Shared,
            needs: list[bool]) -> Grads:
    """Conv2D (dilated, grouped) and DepthwiseConv2D: [dy] is opened once (masked) for both
    dx and dW; the kernel's opening is the forward pass's (Pond)."""
    ctx, k = env.ctx, env.ctx.kernels
    x = xs[0]
    in_shape = k.shape(x.share)
    kernel = env.param(node, "kernel")
    kernel_shape = k.shape((kernel.value if isinstance(kernel, Masked) else kernel).share)
    grad_w, grad_x = conv_gradients(k, node.op, plan, in_shape, kernel_shape)
    with ctx.messenger.label(f"{node.op.kind}_grad"):
        if needs[0]:
            x_masked, dy_masked = mask_many(ctx, [x, dy])  # one round opens both
            dx = truncate(ctx, masked_product(ctx, dy_masked, as_masked(ctx, kernel), grad_x, in_shape))
            dw = truncate(ctx, masked_product(ctx, x_masked, dy_masked, grad_w, kernel_shape))
        else:
            dx, dw = None, truncate(ctx, beaver(ctx, x, dy, grad_w, kernel_shape))
    grads = {"kernel": dw}
    if node.op.use_bias:
        grads["bias"] = Shared(k.sum(dy.share, axis=(0, 1, 2)))
    return [dx], grads


def _avg_pool2d(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, plan: Im2ColPlan, dy: Shared,
                needs: list[bool]) -> Grads:
    """Each output's gradient, divided by its count of valid cells, back onto its window."""
    ctx, k = env.ctx, env.ctx.kernels
    in_shape = k.shape(xs[0].share)
    n, c = in_shape[0], in_shape[3]
    positions, window = plan.indices.shape[0], plan.indices.shape[1] // c
    per_output = k.reshape(dy.share, (n, positions, 1, c))
    inverse = (1.0 / plan.valid_counts.astype(np.float64)).reshape(1, -1, 1, 1)
    scaled = mul_public(ctx, Shared(per_output), inverse)
    cols = k.broadcast_to(scaled.share, (n, positions, window, c))
    return [Shared(scatter_patches(k, plan, k.reshape(cols, (n, positions, window * c)), in_shape))], {}


def _max_pool2d(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: tuple[Im2ColPlan, Shared],
                dy: Shared, needs: list[bool]) -> Grads:
    """The gradient goes to the window entry the forward pass selected (one product)."""
    ctx, k = env.ctx, env.ctx.kernels
    plan, selection = cache  # selection: (window, n, positions, C), integer 0/1
    in_shape = k.shape(xs[0].share)
    window, n, positions, c = k.shape(selection.share)
    per_output = Shared(k.reshape(dy.share, (1, n, positions, c)))
    with ctx.messenger.label("max_pool2d_grad"):
        routed = beaver(ctx, selection, per_output, k.mul, (window, n, positions, c))
    cols = k.reshape(k.transpose(routed.share, (1, 2, 0, 3)), (n, positions, window * c))
    return [Shared(scatter_patches(k, plan, cols, in_shape))], {}


def _global_avg_pool2d(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
                       needs: list[bool]) -> Grads:
    ctx, k = env.ctx, env.ctx.kernels
    n, h, w, c = k.shape(xs[0].share)
    scaled = mul_public(ctx, dy, 1.0 / (h * w))
    return [Shared(k.broadcast_to(k.reshape(scaled.share, (n, 1, 1, c)), (n, h, w, c)))], {}


def _reshape_back(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, in_shape: tuple[int, ...], dy: Shared,
                  needs: list[bool]) -> Grads:
    return [Shared(env.ctx.kernels.reshape(dy.share, in_shape))], {}


def unbroadcast(k: RingKernels, g: Shared, shape: tuple[int, ...]) -> Shared:
    """The gradient of a value broadcast from ``shape``: g summed over the broadcast axes (local)."""
    axes = tuple(i for i, (a, b) in enumerate(zip(shape, k.shape(g.share), strict=True)) if a == 1 and b != 1)
    return Shared(k.sum(g.share, axis=axes, keepdims=True)) if axes else g


def _add(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared, needs: list[bool]) -> Grads:
    k = env.ctx.kernels
    return [unbroadcast(k, dy, k.shape(x.share)) if need else None for x, need in zip(xs, needs, strict=True)], {}


def _identity(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
              needs: list[bool]) -> Grads:
    return [dy], {}


def _relu(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, bit: Bits, dy: Shared, needs: list[bool]) -> Grads:
    """dx = [x >= 0] dy: the forward comparison's bit, injected in one round."""
    with env.ctx.messenger.label("relu_grad"):
        dx, _ = mul_bit(env.ctx, bit, dy)
    return [dx], {}


def _sigmoid(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Shared, dy: Shared,
             needs: list[bool]) -> Grads:
    """dx = dy s (1 - s) = dy (s - s^2), from the cached output s: two rounds."""
    ctx = env.ctx
    with ctx.messenger.label("sigmoid_grad"):
        slope = sub(ctx, cache, square(ctx, cache))
        return [mul(ctx, dy, slope)], {}


def _tanh(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Shared, dy: Shared,
          needs: list[bool]) -> Grads:
    """dx = dy (1 - t^2), from the cached output t: two rounds."""
    ctx = env.ctx
    with ctx.messenger.label("tanh_grad"):
        slope = add_constant(ctx, neg(ctx, square(ctx, cache)), 1.0)
        return [mul(ctx, dy, slope)], {}


def _softmax(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Shared, dy: Shared,
             needs: list[bool]) -> Grads:
    """dx = s (dy - sum(dy s)) over the last axis (a softmax that is not fused with the loss)."""
    ctx, k = env.ctx, env.ctx.kernels
    shape = k.shape(y.share)
    with ctx.messenger.label("softmax_grad"):
        dot = Shared(k.sum(mul(ctx, dy, y).share, axis=len(shape) - 1, keepdims=True))
        centered = sub(ctx, dy, Shared(k.broadcast_to(dot.share, shape)))
        return [mul(ctx, y, centered)], {}


def _batch_norm(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
                needs: list[bool]) -> Grads:
    """A frozen batch norm (``loss_head`` refuses a trainable one): dx = dy * scale per channel,
    one product with the scale the forward pass masked (|dy| opened, one round)."""
    ctx, k = env.ctx, env.ctx.kernels
    rank = len(k.shape(dy.share))
    scale = env.param(node, "scale")
    channels = k.shape((scale.value if isinstance(scale, Masked) else scale).share)[0]
    shape = [1] * rank
    shape[node.op.axis % (rank - 1) + 1] = channels
    with ctx.messenger.label("batch_norm_grad"):
        return [mul(ctx, dy, reshape_param(k, scale, tuple(shape)))], {}


SECURE_BACKWARD: dict[str, BackwardRule] = {
    "dense": _dense,
    "conv2d": _conv2d,
    "avg_pool2d": _avg_pool2d,
    "max_pool2d": _max_pool2d,
    "global_avg_pool2d": _global_avg_pool2d,
    "flatten": _reshape_back,
    "reshape": _reshape_back,
    "add": _add,
    "relu": _relu,
    "sigmoid": _sigmoid,
    "tanh": _tanh,
    "softmax": _softmax,
    "batch_norm": _batch_norm,
    "identity": _identity,
}


# -- the loss head and the whole backward pass -----------------------------------------------------

def probabilities(ctx: PartyContext, head: LossHead, values: Mapping[str, Shared]) -> Shared:
    """The model's prediction as the loss reads it: the output, or link(logits) for from_logits."""
    if head.probs is not None:
        return values[head.probs]
    link = functions.softmax if head.link == "softmax" else functions.sigmoid
    return link(ctx, values[head.seed])


def loss_gradient(ctx: PartyContext, head: LossHead, predicted: Shared, labels: Shared) -> Shared:
    """[dL/d seed] = c (p - y) / n: the fused softmax/sigmoid cross-entropy gradient, or MSE's.

    Local but for one truncation (a public product): rounds 0.
    """
    n = ctx.kernels.shape(labels.share)[0]
    return mul_public(ctx, sub(ctx, predicted, labels), head.gradient_scale / n)


def requires_grad(program: Program, wrt: tuple[str, ...] = ()) -> set[str]:
    """Values whose gradient reaches a trainable parameter (or a value of ``wrt``): only these
    are computed."""
    trainable = {name for name, spec in program.graph.parameters.items() if spec.trainable}
    needed: set[str] = set(wrt)
    for node in program.graph.nodes:
        if any(p in trainable for p in node.params.values()) or any(v in needed for v in node.inputs):
            needed.add(node.output)
    return needed


def secure_backward(
    ctx: PartyContext,
    program: Program,
    params: Mapping[str, Param],
    values: Mapping[str, Shared],
    caches: Mapping[str, Any],
    seeds: Mapping[str, Shared],
    wrt: tuple[str, ...] = (),
) -> tuple[dict[str, Shared], dict[str, Shared]]:
    """Gradients of every trainable parameter (and of the values ``wrt``), from the
    gradients ``seeds`` of some values.

    Nodes run in reverse order; a node whose output got no gradient (e.g. the softmax
    fused into the loss) is skipped; gradients of a value read twice are summed.
    Returns (parameter gradients, gradients of the values in ``wrt``).
    """
    env = LayerEnv(ctx, params, training=True)
    needed = requires_grad(program, wrt)
    trainable = {name for name, spec in program.graph.parameters.items() if spec.trainable}
    grads: dict[str, Shared] = dict(seeds)
    param_grads: dict[str, Shared] = {}
    for node in reversed(program.graph.nodes):
        dy = grads.get(node.output) if node.output in wrt else grads.pop(node.output, None)
        if dy is None:
            continue
        xs = [values[v] for v in node.inputs]
        needs = [v in needed for v in node.inputs]
        rule = SECURE_BACKWARD[node.op.kind]
        with ctx.messenger.label(node.name):
            dxs, dparams = rule(env, node, xs, values[node.output], caches[node.name], dy, needs)
        for value, dx, need in zip(node.inputs, dxs, needs, strict=True):
            if need and dx is not None:
                grads[value] = add(ctx, grads[value], dx) if value in grads else dx
        for role, g in dparams.items():
            name = node.params[role]
            if name in trainable:
                param_grads[name] = add(ctx, param_grads[name], g) if name in param_grads else g
    return param_grads, {v: grads[v] for v in wrt if v in grads}


# the opset-v2 backward rules register themselves in SECURE_BACKWARD (imported last: they use the rules above)
import bridge.mpc.backward_v2  # noqa: E402,F401
