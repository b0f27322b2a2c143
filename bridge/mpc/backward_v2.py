"""Secure backward rules of the opset-v2 ops, written once against the primitive interface
(so torch-spdz and tf-pond both run them); ``bridge.reference_train_v2`` holds their
float64 twins.  Importing this module registers the rules in ``backward.SECURE_BACKWARD``.

Costs per batch, bytes sent by one compute party (8 bytes per ring element, a bit
injection ``mul_bit`` 8 + 1/8 bytes per element, a comparison about 26), rounds:
  pad, crop, transpose, repeat_vector, concat, upsample, global_avg, subtract, add,
  average, rescale, reshape-like, the 1-D forms' lifting      local: 0 bytes, 0 rounds
  conv1d, depthwise_conv1d/2d, dilated/grouped conv2d  as conv2d: |dy| + |x|, 1 round
  avg_pool1d local;  max_pool1d, global_max   |selection| + |dy| (the forward's selection)
  multiply (m inputs)      the partial products (2 (m - 2) products) and m products with
                           [dy] masked once: |dy| + sum |x_i| for m = 2, one round
  maximum/minimum          one product of the forward's bit per extra input, in sequence
  relu (options)           one product of the forward's bits: 2|dy| (|dy| + 2|dy| with max_value)
  prelu                    |dy| + |x| (d alpha), 2|dy| (dx): 2 rounds; the forward's sign bit
  batch_norm (frozen)      |dy|, 1 round (the scale's opening is the forward's)
  elu                      a comparison on x (the forward keeps no bit), |dy| products: 6 rounds
  hard_sigmoid, hard_silu  one comparison call of 2 |x| values + a bit injection (+ 1 product)
  softsign                 one comparison on y (|y|), a square, a product: 7 rounds
  silu, softplus, gelu     one secure sigmoid of x (28 rounds, 4e-3 abs error) and 2-5 products
Errors: local ops are exact; a truncated product adds one unit 2^-16; the activations
whose derivative needs the sigmoid inherit its 4e-3 absolute error times |dy| (times
1 + |x| for silu, and |x| (1 + 0.13 x^2) 1.6 for gelu).  tests/training checks each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from bridge.ir import Node
from bridge.ir.shapes_attention import layer_norm_axes, reduced_axes
from bridge.mpc import activations, functions
from bridge.im2col import im2col_plan
from bridge.mpc.attention import batch_matmul_ring
from bridge.mpc.conv_transpose import _dilate_and_pad, _flip
from bridge.reference_attention import conv_transpose_offset
from bridge.mpc.backward import (
    SECURE_BACKWARD,
    BackwardRule,
    Grads,
    _avg_pool2d,
    _conv2d,
    _max_pool2d,
    conv_gradients,
    masked_product,
    unbroadcast,
)
from bridge.mpc.batched import mask_many
from bridge.mpc.compare import Bits, ge_zero, mul_bit
from bridge.mpc.layers import LayerEnv, _LiftedParams, reshape_param
from bridge.mpc.normalization import LN_EXTRA_BITS, div_public
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


def _full_axis(axis: int, rank: int) -> int:
    return axis % (rank - 1) + 1


def _shape(env: LayerEnv, x: Shared) -> tuple[int, ...]:
    return env.ctx.kernels.shape(x.share)


# -- linear and shape ops: local -----------------------------------------------------------------

def _pad(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
         needs: list[bool]) -> Grads:
    """The adjoint of zero padding is cropping."""
    k = env.ctx.kernels
    g = dy.share
    for axis, (before, after) in enumerate(node.op.pads, start=1):
        if before or after:
            g = k.gather(g, np.arange(before, k.shape(g)[axis] - after), axis=axis)
    return [Shared(g)], {}


def _crop(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
          needs: list[bool]) -> Grads:
    """The adjoint of cropping is zero padding (zeros are shares of zero)."""
    return [Shared(env.ctx.kernels.pad(dy.share, [(0, 0), *node.op.crops]))], {}


def _transpose(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
               needs: list[bool]) -> Grads:
    inverse = np.argsort(node.op.perm)
    return [Shared(env.ctx.kernels.transpose(dy.share, (0, *(int(a) + 1 for a in inverse))))], {}


def _repeat_vector(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
                   needs: list[bool]) -> Grads:
    return [Shared(env.ctx.kernels.sum(dy.share, axis=1))], {}


def _concat(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
            needs: list[bool]) -> Grads:
    k = env.ctx.kernels
    axis = _full_axis(node.op.axis, len(_shape(env, dy)))
    out: list[Shared | None] = []
    start = 0
    for x, need in zip(xs, needs, strict=True):
        size = _shape(env, x)[axis]
        out.append(Shared(k.gather(dy.share, np.arange(start, start + size), axis=axis)) if need else None)
        start += size
    return out, {}


def _subtract(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
              needs: list[bool]) -> Grads:
    k = env.ctx.kernels
    return [unbroadcast(k, dy, _shape(env, xs[0])), unbroadcast(k, neg(env.ctx, dy), _shape(env, xs[1]))], {}


def _average(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
             needs: list[bool]) -> Grads:
    k = env.ctx.kernels
    scaled = mul_public(env.ctx, dy, 1.0 / len(xs))
    return [unbroadcast(k, scaled, _shape(env, x)) if need else None for x, need in zip(xs, needs, strict=True)], {}


def _rescale(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
             needs: list[bool]) -> Grads:
    scale = np.asarray(node.op.scale, dtype=np.float64)
    return [dy if np.all(scale == 1.0) else mul_public(env.ctx, dy, scale)], {}


def _upsample(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
              needs: list[bool]) -> Grads:
    """Each cell was repeated ``size`` times per spatial axis: its gradient sums the copies."""
    k = env.ctx.kernels
    shape = _shape(env, xs[0])
    sizes = node.op.size if isinstance(node.op.size, tuple) else (node.op.size,)
    split: list[int] = [shape[0]]
    for dim, size in zip(shape[1:-1], sizes, strict=True):
        split += [dim, size]
    g = k.reshape(dy.share, (*split, shape[-1]))
    return [Shared(k.sum(g, axis=tuple(range(2, 2 * len(sizes) + 1, 2))))], {}


def _global_avg(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
                needs: list[bool]) -> Grads:
    k = env.ctx.kernels
    shape = _shape(env, xs[0])
    scaled = mul_public(env.ctx, dy, 1.0 / float(np.prod(shape[1:-1])))
    per_channel = k.reshape(scaled.share, (shape[0], *(1,) * (len(shape) - 2), shape[-1]))
    return [Shared(k.broadcast_to(per_channel, shape))], {}


# -- products -------------------------------------------------------------------------------------

def _multiply(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
              needs: list[bool]) -> Grads:
    """dx_i = dy * prod_{j != i} x_j (summed over axes x_i was broadcast on).  The partial
    products come from prefix and suffix products; [dy] is masked once for all m products."""
    ctx, k = env.ctx, env.ctx.kernels
    m = len(xs)
    with ctx.messenger.label("multiply_grad"):
        prefix: list[Shared | None] = [None] * m  # x_0 ... x_{i-1}
        suffix: list[Shared | None] = [None] * m  # x_{i+1} ... x_{m-1}
        for i in range(1, m):
            prefix[i] = xs[0] if i == 1 else mul(ctx, prefix[i - 1], xs[i - 1])
        for i in range(m - 2, -1, -1):
            suffix[i] = xs[m - 1] if i == m - 2 else mul(ctx, suffix[i + 1], xs[i + 1])
        dy_masked = mask_operand(ctx, dy)
        out: list[Shared | None] = []
        for i, (x, need) in enumerate(zip(xs, needs, strict=True)):
            if not need:
                out.append(None)
                continue
            p, s = prefix[i], suffix[i]
            others = p if s is None else s if p is None else mul(ctx, p, s)
            assert others is not None
            full = np.broadcast_shapes(_shape(env, others), _shape(env, dy))
            g = truncate(ctx, beaver(ctx, others, dy_masked, k.mul, full))
            out.append(unbroadcast(k, g, _shape(env, x)))
    return out, {}


def _route(ctx: Any, bit: Shared, g: Shared) -> Shared:
    """[bit * g] for an arithmetic 0/1 bit (integer, so no truncation): one Beaver product."""
    k = ctx.kernels
    return beaver(ctx, bit, g, k.mul, np.broadcast_shapes(k.shape(bit.share), k.shape(g.share)))


def _extremum(largest: bool) -> BackwardRule:
    """max (min) was folded left to right, keeping bit_i = [running >= x_i] (the forward's
    cache): the winner of each step takes the gradient.  One product per extra input."""

    def rule(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, bits: list[Shared], dy: Shared,
             needs: list[bool]) -> Grads:
        ctx = env.ctx
        grads: list[Shared | None] = [None] * len(xs)
        g = dy
        with ctx.messenger.label(f"{node.op.kind}_grad"):
            for i in range(len(xs) - 1, 0, -1):
                routed = _route(ctx, bits[i - 1], g)  # max: to the running value; min: to x_i
                rest = sub(ctx, g, routed)
                grads[i], g = (rest, routed) if largest else (routed, rest)
        grads[0] = g
        return grads, {}

    return rule


def _global_max(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, selection: Shared, dy: Shared,
                needs: list[bool]) -> Grads:
    """The gradient goes to the cell the forward tree selected: one product with its one-hot."""
    ctx, k = env.ctx, env.ctx.kernels
    shape = _shape(env, xs[0])
    n, c = shape[0], shape[-1]
    if selection is None:  # a single cell: the maximum is the cell itself
        return [Shared(k.reshape(dy.share, shape))], {}
    with ctx.messenger.label("global_max_grad"):
        routed = beaver(ctx, selection, Shared(k.reshape(dy.share, (1, n, c))), k.mul, k.shape(selection.share))
    rank = len(shape)
    spatial = tuple(shape[1:-1])
    moved = k.reshape(routed.share, (*spatial, n, c))  # the forward's (spatial..., n, C) order
    back = (rank - 2, *range(rank - 2), rank - 1)
    return [Shared(k.transpose(moved, back))], {}


def _lift(env: LayerEnv, node: Node):
    """A 1-D node as its 2-D form, with the parameters the 2-D rule reads (kernels lifted)."""
    return node.model_copy(update={"op": node.op.as_2d()}), LayerEnv(env.ctx, _LiftedParams(env, node), env.training)


def _via_2d(rule2d: BackwardRule) -> BackwardRule:
    """A 1-D op's gradient through its 2-D form on (n, 1, steps, C) images (local reshapes)."""

    def rule(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
             needs: list[bool]) -> Grads:
        k = env.ctx.kernels
        lifted, env2 = _lift(env, node)
        up = lambda v: Shared(k.reshape(v.share, (k.shape(v.share)[0], 1, *k.shape(v.share)[1:])))  # noqa: E731
        dxs, grads = rule2d(env2, lifted, [up(xs[0])], up(y), cache, up(dy), needs)
        dx = None if dxs[0] is None else Shared(k.reshape(dxs[0].share, _shape(env, xs[0])))
        if "kernel" in grads:
            grads = {**grads, "kernel": Shared(k.reshape(grads["kernel"].share, _shape(env, grads["kernel"])[1:]))}
        return [dx], grads

    return rule


# -- activations ----------------------------------------------------------------------------------

def _relu(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
          needs: list[bool]) -> Grads:
    """Plain: dx = [x >= 0] dy (the forward's XOR bit, one injection).  With Keras' options the
    forward kept b1 = [x >= threshold], b2 = [x >= max_value] (arithmetic):
    dx = a dy + (1 - a) b1 dy - b2 dy, one product of the stacked bits with dy."""
    ctx, k = env.ctx, env.ctx.kernels
    op = node.op
    if op.plain:
        with ctx.messenger.label("relu_grad"):
            return [mul_bit(ctx, cache, dy)[0]], {}
    b1, b2 = cache
    shape = _shape(env, dy)
    with ctx.messenger.label("relu_grad"):
        bits = b1.share if b2 is None else k.stack([b1.share, b2.share], axis=0)
        stacked_shape = shape if b2 is None else (2, *shape)
        g = dy if b2 is None else Shared(k.reshape(dy.share, (1, *shape)))
        routed = beaver(ctx, Shared(bits), g, k.mul, stacked_shape)
        inside, over = (routed, None) if b2 is None else (Shared(x) for x in k.unstack(routed.share))
    a = op.negative_slope
    dx = mul_public(ctx, inside, 1.0 - a) if a else inside
    if a:
        dx = add(ctx, dx, mul_public(ctx, dy, a))
    if over is not None:
        dx = sub(ctx, dx, over)
    return [dx], {}


def _prelu(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: tuple[Shared, Shared], dy: Shared,
           needs: list[bool]) -> Grads:
    """With the forward's sign bit b = [x >= 0] and min(x, 0):  d alpha = sum dy min(x, 0) over
    the batch and broadcast axes;  dx = t + b (dy - t), t = dy alpha.  [dy] is masked once for
    both products (alpha is masked already: its product opens nothing)."""
    ctx, k = env.ctx, env.ctx.kernels
    bit, negative = cache
    alpha = env.param(node, "alpha")
    alpha_shape = _shape(env, alpha.value if isinstance(alpha, Masked) else alpha)
    lifted = reshape_param(k, alpha if isinstance(alpha, Masked) else mask_operand(ctx, alpha), (1, *alpha_shape))
    shape = _shape(env, dy)
    with ctx.messenger.label("prelu_grad"):
        negative_masked, dy_masked = mask_many(ctx, [negative, dy])  # one round opens both
        d_alpha = truncate(ctx, masked_product(ctx, negative_masked, dy_masked, k.mul, shape))
        t = truncate(ctx, masked_product(ctx, dy_masked, lifted, k.mul, shape))
        dx = add(ctx, t, _route(ctx, bit, sub(ctx, dy, t)))
    d_alpha = unbroadcast(k, d_alpha, (1, *alpha_shape))
    return [dx], {"alpha": Shared(k.reshape(d_alpha.share, alpha_shape))}


def _elu(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
         needs: list[bool]) -> Grads:
    """dx = dy for x > 0, dy (y + alpha) below: t = dy (y + alpha), dx = t + [x >= 0] (dy - t).
    The forward keeps no bit, so the comparison is run again."""
    ctx = env.ctx
    with ctx.messenger.label("elu_grad"):
        bit = ge_zero(ctx, xs[0])
        t = mul(ctx, dy, add_constant(ctx, y, node.op.alpha))
        return [add(ctx, t, mul_bit(ctx, bit, sub(ctx, dy, t))[0])], {}


def _hard_bits(env: LayerEnv, x: Shared) -> tuple[Shared, Bits]:
    """u = x / 6 + 1/2 as the forward computes it, and the bits [u >= 0], [u >= 1] stacked."""
    ctx, k = env.ctx, env.ctx.kernels
    u = add_constant(ctx, mul_public(ctx, x, 1.0 / 6.0), 0.5)
    return u, ge_zero(ctx, Shared(k.stack([u.share, add_constant(ctx, u, -1.0).share], axis=0)))


def _hard_sigmoid(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
                  needs: list[bool]) -> Grads:
    """dx = ([u >= 0] - [u >= 1]) dy / 6: one comparison call, one bit injection."""
    ctx, k = env.ctx, env.ctx.kernels
    with ctx.messenger.label("hard_sigmoid_grad"):
        _, bits = _hard_bits(env, xs[0])
        routed, _ = mul_bit(ctx, bits, Shared(k.stack([dy.share, dy.share], axis=0)))
        low, high = k.unstack(routed.share)
        return [mul_public(ctx, Shared(k.sub(low, high)), 1.0 / 6.0)], {}


def _hard_silu(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
               needs: list[bool]) -> Grads:
    """d/dx x h(x) = [u >= 0] (2u - 1/2) - [u >= 1] (2u - 3/2) (0 below -3, x/3 + 1/2 inside,
    1 from 3 on): one comparison call, one bit injection, one product with dy."""
    ctx, k = env.ctx, env.ctx.kernels
    with ctx.messenger.label("hard_silu_grad"):
        u, bits = _hard_bits(env, xs[0])
        twice = functions.double(ctx, u)
        candidates = k.stack([add_constant(ctx, twice, -0.5).share, add_constant(ctx, twice, -1.5).share], axis=0)
        picked, _ = mul_bit(ctx, bits, Shared(candidates))
        low, high = k.unstack(picked.share)
        return [mul(ctx, dy, Shared(k.sub(low, high)))], {}


def _softsign(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
              needs: list[bool]) -> Grads:
    """d/dx x / (1 + |x|) = 1 / (1 + |x|)^2 = (1 - |y|)^2, from the output: no reciprocal."""
    ctx = env.ctx
    with ctx.messenger.label("softsign_grad"):
        magnitude, _, _ = activations.abs_and_relu(ctx, y)
        return [mul(ctx, dy, square(ctx, add_constant(ctx, neg(ctx, magnitude), 1.0)))], {}


def _silu(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
          needs: list[bool]) -> Grads:
    """d/dx x s(x) = s + y (1 - s), s = sigmoid(x) recomputed (the forward keeps only y)."""
    ctx = env.ctx
    with ctx.messenger.label("silu_grad"):
        s = functions.sigmoid(ctx, xs[0])
        slope = add(ctx, s, mul(ctx, y, add_constant(ctx, neg(ctx, s), 1.0)))
        return [mul(ctx, dy, slope)], {}


def _softplus(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
              needs: list[bool]) -> Grads:
    """d/dx log(1 + e^x) = sigmoid(x)."""
    ctx = env.ctx
    with ctx.messenger.label("softplus_grad"):
        return [mul(ctx, dy, functions.sigmoid(ctx, xs[0]))], {}


_GELU_C2 = 2.0 * math.sqrt(2.0 / math.pi)


def _gelu(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
          needs: list[bool]) -> Grads:
    """The derivative of the form the forward computes (Keras' tanh form, x s(z) with
    z = c (x + 0.044715 x^3), c = 2 sqrt(2/pi)): s + x (s - s^2) c (1 + 0.134145 x^2).
    For approximate=False it differs from the erf form's derivative by at most 2e-3."""
    ctx = env.ctx
    x = xs[0]
    with ctx.messenger.label("gelu_grad"):
        x2 = square(ctx, x)
        inner = add(ctx, x, mul_public(ctx, mul(ctx, x2, x), 0.044715))
        s = functions.sigmoid(ctx, mul_public(ctx, inner, _GELU_C2))
        ds = sub(ctx, s, square(ctx, s))
        dz = add_constant(ctx, mul_public(ctx, x2, _GELU_C2 * 3 * 0.044715), _GELU_C2)
        slope = add(ctx, s, mul(ctx, mul(ctx, x, ds), dz))
        return [mul(ctx, dy, slope)], {}


def _softmax(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
             needs: list[bool]) -> Grads:
    """dx = s (dy - sum(dy s)) over the op's axis (moved last and back: local)."""
    ctx, k = env.ctx, env.ctx.kernels
    rank = len(_shape(env, y))
    axis = _full_axis(node.op.axis, rank)
    perm = tuple(a for a in range(rank) if a != axis) + (axis,)
    inverse = tuple(int(i) for i in np.argsort(perm))
    moved = lambda v: Shared(k.transpose(v.share, perm)) if axis != rank - 1 else v  # noqa: E731
    s, g = moved(y), moved(dy)
    shape = _shape(env, s)
    with ctx.messenger.label("softmax_grad"):
        dot = Shared(k.sum(mul(ctx, g, s).share, axis=rank - 1, keepdims=True))
        dx = mul(ctx, s, sub(ctx, g, Shared(k.broadcast_to(dot.share, shape))))
    return [dx if axis == rank - 1 else Shared(k.transpose(dx.share, inverse))], {}


# -- normalization, products and reductions ------------------------------------------------------

def _layer_norm(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: tuple[Shared, Shared], dy: Shared,
                needs: list[bool]) -> Grads:
    """From the forward's x-hat and s = 1 / sqrt(var + eps) (at f + 6 bits), over the N
    normalized values of each row: g = dy gamma, dx = s (g - mean(g) - x-hat mean(g x-hat)),
    d gamma = sum dy x-hat, d beta = sum dy over the other axes.  [dy] is masked once for
    dx's and d gamma's products (gamma is masked already); means by ``div_public``.
    Rounds 4, bytes |dy| + 3 |x| (+ |x-hat|).  Error: x-hat's and s's (1.5e-4 and 2^-12
    relative, ``normalization``) times |g|, plus rounding."""
    ctx, k, op = env.ctx, env.ctx.kernels, node.op
    xhat, scale = cache
    shape = _shape(env, dy)
    rank = len(shape)
    axes = tuple(a + 1 for a in layer_norm_axes(op, rank - 1))
    other = tuple(a for a in range(rank) if a not in axes)
    count = math.prod(shape[a] for a in axes)
    row = [1] * rank
    for a in axes:
        row[a] = shape[a]
    grads: dict[str, Shared] = {}
    with ctx.messenger.label("layer_norm_grad"):
        if "gamma" in node.params:
            gamma = env.param(node, "gamma")
            gamma = reshape_param(k, gamma if isinstance(gamma, Masked) else mask_operand(ctx, gamma), tuple(row))
            xhat_masked, dy_masked = mask_many(ctx, [xhat, dy])  # one round opens both
            g = truncate(ctx, masked_product(ctx, dy_masked, gamma, k.mul, shape))
            d_gamma = truncate(ctx, masked_product(ctx, xhat_masked, dy_masked, k.mul, shape))
            grads["gamma"] = Shared(k.sum(d_gamma.share, axis=other))
        else:
            g = dy
        if "beta" in node.params:
            grads["beta"] = Shared(k.sum(dy.share, axis=other))
        mean_g = div_public(ctx, Shared(k.sum(g.share, axis=axes, keepdims=True)), count)
        mean_gx = div_public(ctx, Shared(k.sum(mul(ctx, g, xhat).share, axis=axes, keepdims=True)), count)
        inner = sub(ctx, sub(ctx, g, Shared(k.broadcast_to(mean_g.share, shape))), mul(ctx, xhat, mean_gx))
        dx = truncate(ctx, beaver(ctx, inner, scale, k.mul, shape), ctx.numerics.frac_bits + LN_EXTRA_BITS)
    return [dx], grads


def _layer_scale(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
                 needs: list[bool]) -> Grads:
    """dx = dy gamma (gamma masked: no opening), d gamma = sum dy x: [dy] masked once."""
    ctx, k = env.ctx, env.ctx.kernels
    shape = _shape(env, dy)
    gamma = env.param(node, "gamma")
    gamma = gamma if isinstance(gamma, Masked) else mask_operand(ctx, gamma)
    channels = _shape(env, gamma.value)[0]
    with ctx.messenger.label("layer_scale_grad"):
        x_masked, dy_masked = mask_many(ctx, [xs[0], dy])  # one round opens both
        lifted = reshape_param(k, gamma, (1,) * (len(shape) - 1) + (channels,))
        dx = truncate(ctx, masked_product(ctx, dy_masked, lifted, k.mul, shape))
        d_gamma = truncate(ctx, masked_product(ctx, x_masked, dy_masked, k.mul, shape))
    return [dx], {"gamma": Shared(k.sum(k.reshape(d_gamma.share, (-1, channels)), axis=0))}


def _reduce(mean: bool) -> BackwardRule:
    """sum: dy broadcast back over the reduced axes (local); mean: also divided by their count."""

    def rule(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
             needs: list[bool]) -> Grads:
        ctx, k = env.ctx, env.ctx.kernels
        shape = _shape(env, xs[0])
        axes = tuple(a + 1 for a in reduced_axes(node.op, len(shape) - 1))
        kept = [1 if a in axes else d for a, d in enumerate(shape)]
        g = Shared(k.reshape(dy.share, tuple(kept)))
        if mean:
            g = div_public(ctx, g, math.prod(shape[a] for a in axes))
        return [Shared(k.broadcast_to(g.share, shape))], {}

    return rule


def _exp(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
         needs: list[bool]) -> Grads:
    """d e^x = e^x dx: one product with the forward's output."""
    with env.ctx.messenger.label("exp_grad"):
        return [mul(env.ctx, dy, y)], {}


def _matmul(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
            needs: list[bool]) -> Grads:
    """d a = dy b^T, d b = a^T dy (batched over the leading axes): [dy] masked once, each
    needed product's other operand opened with it (``batched.mask_many``).  Rounds 1,
    bytes |dy| + |a| + |b| (|dy| + the one operand when one gradient is needed)."""
    ctx, k = env.ctx, env.ctx.kernels
    a, b = xs
    rank = len(_shape(env, a))
    swap = (*range(rank - 2), rank - 1, rank - 2)
    out: list[Shared | None] = [None, None]
    with ctx.messenger.label("matmul_grad"):
        operands = [Shared(k.transpose(v.share, swap)) for v, need in zip((b, a), needs, strict=True) if need]
        *opened, dy_masked = mask_many(ctx, [*operands, dy])  # one round opens dy and bt, at
        if needs[0]:
            bt = opened.pop(0)
            out[0] = truncate(ctx, masked_product(ctx, bt, dy_masked, lambda u, d: batch_matmul_ring(k, d, u),
                                                  _shape(env, a)))
        if needs[1]:
            at = opened.pop(0)
            out[1] = truncate(ctx, masked_product(ctx, at, dy_masked, lambda u, d: batch_matmul_ring(k, u, d),
                                                  _shape(env, b)))
    return out, {}


def _embedding(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
               needs: list[bool]) -> Grads:
    """y = one_hot @ table (the data owner shared the one-hot rows): d table = one_hot^T dy,
    one Beaver product over every row and step (|one_hot| + |dy| opened, one round).  The
    servers learn nothing of the ids: the one-hot rows stay shared, the product is a Beaver
    one.  The one-hot rows' own gradient dy table^T is computed only when asked for (tests):
    training never needs it, token inputs being data."""
    ctx, k = env.ctx, env.ctx.kernels
    in_shape = _shape(env, xs[0])
    depth, width = in_shape[-1], _shape(env, dy)[-1]
    rows = Shared(k.reshape(xs[0].share, (-1, depth)))
    grads = Shared(k.reshape(dy.share, (-1, width)))
    t = lambda a: k.transpose(a, (1, 0))  # noqa: E731
    dx = None
    with ctx.messenger.label("embedding_grad"):
        if needs[0]:
            grads = mask_operand(ctx, grads)
            table_param = env.param(node, "embeddings")
            masked = table_param if isinstance(table_param, Masked) else mask_operand(ctx, table_param)
            flat = truncate(ctx, masked_product(ctx, grads, masked, lambda a, b: k.matmul(a, t(b)),
                                                (math.prod(in_shape[:-1]), depth)))
            dx = Shared(k.reshape(flat.share, in_shape))
        table = truncate(ctx, beaver(ctx, rows, grads, lambda a, b: k.matmul(t(a), b), (depth, width)))
    return [dx], {"embeddings": table}


def _reverse(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
             needs: list[bool]) -> Grads:
    """Flip the gradient back along the same axis (local)."""
    k = env.ctx.kernels
    shape = _shape(env, dy)
    axis = node.op.axis % (len(shape) - 1) + 1
    return [Shared(k.gather(dy.share, np.arange(shape[axis] - 1, -1, -1), axis=axis))], {}


class _PlainConv:
    """The stride-1 'valid' Conv2D Conv2DTranspose's forward runs on its dilated input."""

    kind, groups = "conv2d", 1


def _conv2d_transpose(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
                      needs: list[bool]) -> Grads:
    """The forward is y = conv(D(x), flip(K)), D the local zero dilation and padding: so
    dK = flip(patches(D(x))^T dy) and dx = D^T(scatter(dy flip(K)^T)), D^T a gather of the
    cells D placed x at.  As conv2d: [dy] opened once (masked) for both, the kernel's opening
    is the forward's; bytes |dy| + |x|, one round; no truncation but the final one each."""
    ctx, k, op = env.ctx, env.ctx.kernels, node.op
    x = xs[0]
    in_shape = k.shape(x.share)
    n, h, w, c = in_shape
    _, oh, ow, filters = _shape(env, dy)
    (kh, kw), (sh, sw) = op.kernel_size, op.strides
    kernel = env.param(node, "kernel")
    kernel_shape = _shape(env, kernel.value if isinstance(kernel, Masked) else kernel)
    plan = im2col_plan(oh + kh - 1, ow + kw - 1, c, kh, kw, (1, 1), "valid")
    grad_w, grad_x = conv_gradients(k, _PlainConv(), plan, (n, oh + kh - 1, ow + kw - 1, c), (kh, kw, c, filters))
    before = [window - 1 - conv_transpose_offset(window, stride, op.padding)
              for window, stride in ((kh, sh), (kw, sw))]

    def undilate(t: Any) -> Any:  # D^T: the cells D put x's values at
        t = k.gather(t, before[0] + sh * np.arange(h), axis=1)
        return k.gather(t, before[1] + sw * np.arange(w), axis=2)

    def kernel_grad(a: Any, b: Any) -> Any:
        return _flip(k, grad_w(_dilate_and_pad(k, a, op), b))

    def input_grad(a: Any, b: Any) -> Any:
        return undilate(grad_x(a, _flip(k, b)))

    with ctx.messenger.label("conv2d_transpose_grad"):
        if needs[0]:
            x_masked, dy_masked = mask_many(ctx, [x, dy])  # one round opens both
            masked = kernel if isinstance(kernel, Masked) else mask_operand(ctx, kernel)
            dx = truncate(ctx, masked_product(ctx, dy_masked, masked, input_grad, in_shape))
            dk = truncate(ctx, masked_product(ctx, x_masked, dy_masked, kernel_grad, kernel_shape))
        else:
            dx, dk = None, truncate(ctx, beaver(ctx, x, dy, kernel_grad, kernel_shape))
    grads = {"kernel": dk}
    if op.use_bias:
        grads["bias"] = Shared(k.sum(dy.share, axis=(0, 1, 2)))
    return [dx], grads


def _add_constant(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: Any, dy: Shared,
                  needs: list[bool]) -> Grads:
    """y = x + c (c the model owner's, broadcast from the right): dx = dy, dc = dy summed over
    the axes c was broadcast on (a frozen constant's is dropped).  Local."""
    k = env.ctx.kernels
    c = env.param(node, "constant")
    c_shape = _shape(env, c.value if isinstance(c, Masked) else c)
    lifted = (1,) * (len(_shape(env, dy)) - len(c_shape)) + tuple(c_shape)
    return [dy], {"constant": Shared(k.reshape(unbroadcast(k, dy, lifted).share, c_shape))}


def _multi_head_attention(env: LayerEnv, node: Node, xs: list[Shared], y: Shared, cache: tuple, dy: Shared,
                          needs: list[bool]) -> Grads:
    """Back through the output projection, heads = weights v, the softmax over keys, scores =
    q k^T and the three input projections, from the forward's q (scaled), k, v, weights and
    heads.  Each gradient that feeds two products is masked once ([dy], [d heads], [d scores],
    each projection's [d]), in one opening with the other operands of its products (the three
    projections' in one); kernels are masked already (their products open nothing more).
    6 rounds; the softmax's error (5e-3) enters d scores through the weights."""
    ctx, k, op = env.ctx, env.ctx.kernels, node.op
    q, keys, v, weights, flat = cache
    query, value = xs[0], xs[1]
    key = xs[2] if len(xs) == 3 else value
    n, steps_q, width = _shape(env, dy)
    heads, hv = op.num_heads, op.num_heads * op.value_dim
    t = lambda a: k.transpose(a, (1, 0))  # noqa: E731
    last2 = lambda a: k.transpose(a, (0, 1, 3, 2))  # noqa: E731
    bmm = lambda a, b: batch_matmul_ring(k, a, b)  # noqa: E731

    def masked_param(role: str, shape: tuple[int, ...]) -> Masked:
        p = env.param(node, role)
        return reshape_param(k, p if isinstance(p, Masked) else mask_operand(ctx, p), shape)

    grads: dict[str, Shared] = {}
    with ctx.messenger.label("attention_grad"):
        # each opening below carries every operand of its independent products (``mask_many``)
        flat_m, rows = mask_many(ctx, [flat, Shared(k.reshape(dy.share, (n * steps_q, width)))])
        d_out = truncate(ctx, masked_product(ctx, flat_m, rows, lambda a, b: k.matmul(t(a), b), (hv, width)))
        grads["output_kernel"] = Shared(k.reshape(d_out.share, (heads, op.value_dim, width)))
        if op.use_bias:
            grads["output_bias"] = Shared(k.sum(rows.value.share, axis=0))
        d_flat = truncate(ctx, masked_product(ctx, rows, masked_param("output_kernel", (hv, width)),
                                              lambda a, b: k.matmul(a, t(b)), (n * steps_q, hv)))
        d_heads, v_m, weights_m = mask_many(ctx, [
            Shared(k.transpose(k.reshape(d_flat.share, (n, steps_q, heads, op.value_dim)), (0, 2, 1, 3))), v, weights])
        d_weights = truncate(ctx, masked_product(ctx, v_m, d_heads, lambda a, b: bmm(b, last2(a)),
                                                 _shape(env, weights)))
        d_v = truncate(ctx, masked_product(ctx, weights_m, d_heads, lambda a, b: bmm(last2(a), b), _shape(env, v)))
        dot = Shared(k.sum(mul(ctx, d_weights, weights).share, axis=3, keepdims=True))
        d_scores, keys_m, q_m = mask_many(ctx, [mul(ctx, weights, sub(ctx, d_weights, dot)), keys, q])
        d_q = truncate(ctx, masked_product(ctx, keys_m, d_scores, lambda a, b: bmm(b, a), _shape(env, q)))
        d_q = mul_public(ctx, d_q, 1.0 / math.sqrt(op.key_dim))
        d_k = truncate(ctx, masked_product(ctx, q_m, d_scores, lambda a, b: bmm(last2(b), a), _shape(env, keys)))
        d_inputs: dict[str, Shared] = {}
        parts = (("query", query, d_q), ("key", key, d_k), ("value", value, d_v))
        projections = []  # per part: its d (heads flattened) and its input, as rows
        for _, x, d in parts:
            size, dims = _shape(env, d)[3], _shape(env, x)[-1]
            projections += [Shared(k.reshape(k.transpose(d.share, (0, 2, 1, 3)), (-1, heads * size))),
                            Shared(k.reshape(x.share, (-1, dims)))]
        opened = mask_many(ctx, projections)
        for i, (part, x, d) in enumerate(parts):
            _, _, steps, size = _shape(env, d)
            dims = _shape(env, x)[-1]
            d2, x2 = opened[2 * i], opened[2 * i + 1]
            d_w = truncate(ctx, masked_product(ctx, x2, d2, lambda a, b: k.matmul(t(a), b), (dims, heads * size)))
            grads[f"{part}_kernel"] = Shared(k.reshape(d_w.share, (dims, heads, size)))
            if op.use_bias:
                grads[f"{part}_bias"] = Shared(k.reshape(k.sum(d2.value.share, axis=0), (heads, size)))
            d_x = truncate(ctx, masked_product(ctx, d2, masked_param(f"{part}_kernel", (dims, heads * size)),
                                               lambda a, b: k.matmul(a, t(b)), (n * steps, dims)))
            d_inputs[part] = Shared(k.reshape(d_x.share, _shape(env, x)))
    out = [d_inputs["query"], d_inputs["value"] if len(xs) == 3 else add(ctx, d_inputs["value"], d_inputs["key"])]
    if len(xs) == 3:
        out.append(d_inputs["key"])
    return out, grads


RULES: dict[str, Callable[..., Grads]] = {
    "multi_head_attention": _multi_head_attention,
    "add_constant": _add_constant,
    "conv2d_transpose": _conv2d_transpose,
    "embedding": _embedding,
    "reverse": _reverse,
    "layer_norm": _layer_norm,
    "layer_scale": _layer_scale,
    "reduce_sum": _reduce(mean=False),
    "reduce_mean": _reduce(mean=True),
    "exp": _exp,
    "matmul": _matmul,
    "relu": _relu,
    "softmax": _softmax,
    "global_avg_pool2d": _global_avg,
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
    "elu": _elu,
    "gelu": _gelu,
    "silu": _silu,
    "hard_sigmoid": _hard_sigmoid,
    "hard_silu": _hard_silu,
    "softplus": _softplus,
    "softsign": _softsign,
}

SECURE_BACKWARD.update(RULES)
