"""Float64 backward rules of the opset-v2 ops: the oracle of their secure twins in
``bridge.mpc.backward_v2``, checked against TensorFlow's autodiff in tests/training.

Importing this module registers the rules in ``reference_train.REFERENCE_BACKWARD``
(``reference_train`` imports it, so the table is always complete).  Each rule has the
signature of ``reference_train.ReferenceBackward``: (node, inputs, output, params, dy)
-> (input gradients, parameter gradients by role).
"""

from __future__ import annotations

import math

import numpy as np

from bridge.ir import Node
from bridge.ir.shapes_attention import layer_norm_axes, reduced_axes
from bridge.reference_attention import attention_forward, conv_transpose_offset
from bridge.reference_train import (
    REFERENCE_BACKWARD,
    Arrays,
    ReferenceBackward,
    _avg_pool2d,
    _conv2d,
    _max_pool2d,
    unbroadcast,
)

Grads = tuple[list[np.ndarray], Arrays]


def _full_axis(axis: int, ndim: int) -> int:
    return axis % (ndim - 1) + 1


# -- linear and shape ops --------------------------------------------------------------------------

def _pad(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    index = tuple(slice(b, d - a) for d, (b, a) in zip(dy.shape[1:], node.op.pads, strict=True))
    return [dy[(slice(None), *index)]], {}


def _crop(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    return [np.pad(dy, [(0, 0), *node.op.crops])], {}


def _transpose(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    inverse = np.argsort(node.op.perm)
    return [dy.transpose(0, *(int(a) + 1 for a in inverse))], {}


def _repeat_vector(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    return [dy.sum(axis=1)], {}


def _concat(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    axis = _full_axis(node.op.axis, dy.ndim)
    ends = np.cumsum([x.shape[axis] for x in xs])[:-1]
    return list(np.split(dy, ends, axis=axis)), {}


def _subtract(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    return [unbroadcast(dy, xs[0].shape), unbroadcast(-dy, xs[1].shape)], {}


def _multiply(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    out = []
    for i, x in enumerate(xs):
        others = dy
        for j, other in enumerate(xs):
            if j != i:
                others = others * other
        out.append(unbroadcast(others, x.shape))
    return out, {}


def _average(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    return [unbroadcast(dy / len(xs), x.shape) for x in xs], {}


def _extremum(largest: bool) -> ReferenceBackward:
    """max (min) folded left to right, as the secure forward: each step's winner takes the
    gradient; ties go to the running result for max, to the new input for min."""

    def rule(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
        running, bits = xs[0], []
        for x in xs[1:]:
            bit = running >= x
            bits.append(bit)
            running = np.where(bit, running, x) if largest else np.where(bit, x, running)
        grads: list[np.ndarray] = [np.zeros_like(x) for x in xs]
        g = dy
        for i in range(len(xs) - 1, 0, -1):
            keep = bits[i - 1] if largest else ~bits[i - 1]
            grads[i] = np.where(keep, 0.0, g)
            g = np.where(keep, g, 0.0)
        grads[0] = g
        return grads, {}

    return rule


def _rescale(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    return [dy * np.asarray(node.op.scale, dtype=np.float64)], {}


# -- pools and upsampling --------------------------------------------------------------------------

def _via_2d(rule2d: ReferenceBackward) -> ReferenceBackward:
    """A 1-D op's gradient through its 2-D form on (n, 1, steps, C) images."""

    def rule(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
        lifted = node.model_copy(update={"op": node.op.as_2d()})
        params = {r: (v[None] if r == "kernel" else v) for r, v in p.items()}
        dxs, grads = rule2d(lifted, [xs[0][:, None]], y[:, None], params, dy[:, None])
        return [dxs[0][:, 0]], {r: (g[0] if r == "kernel" else g) for r, g in grads.items()}

    return rule


def _global_avg(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    x = xs[0]
    cells = int(np.prod(x.shape[1:-1]))
    per_channel = dy.reshape(x.shape[0], *(1,) * (x.ndim - 2), x.shape[-1]) / cells
    return [np.broadcast_to(per_channel, x.shape).copy()], {}


def _global_max(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    """The gradient goes to the first maximal cell of each channel (TensorFlow's choice)."""
    x = xs[0]
    n, c = x.shape[0], x.shape[-1]
    flat = x.reshape(n, -1, c)
    winner = np.argmax(flat, axis=1)
    one_hot = np.arange(flat.shape[1]).reshape(1, -1, 1) == winner[:, None, :]
    return [(one_hot * dy.reshape(n, 1, c)).reshape(x.shape)], {}


def _upsample(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    """Each input cell was repeated size times per spatial axis: sum its copies."""
    x = xs[0]
    sizes = node.op.size if isinstance(node.op.size, tuple) else (node.op.size,)
    split = [x.shape[0]]
    for dim, size in zip(x.shape[1:-1], sizes, strict=True):
        split += [dim, size]
    summed = dy.reshape(*split, x.shape[-1]).sum(axis=tuple(range(2, 2 * len(sizes) + 1, 2)))
    return [summed], {}


# -- elementwise activations -------------------------------------------------------------------------

def _relu(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    """Keras' relu: slope 1 on (threshold, max_value), negative_slope below, 0 from max_value on."""
    op, x = node.op, xs[0]
    if op.plain:
        return [dy * (x > 0)], {}
    slope = np.where(x > op.threshold, 1.0, op.negative_slope)
    if op.max_value is not None:
        slope = np.where(x >= op.max_value, 0.0, slope)
    return [dy * slope], {}


def _prelu(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    x, alpha = xs[0], p["alpha"]
    dalpha = unbroadcast(dy * np.minimum(x, 0.0), (1, *alpha.shape)).reshape(alpha.shape)
    return [dy * np.where(x >= 0, 1.0, alpha)], {"alpha": dalpha}


def _elu(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    return [dy * np.where(xs[0] > 0, 1.0, y + node.op.alpha)], {}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


_erf = np.frompyfunc(math.erf, 1, 1)
_GELU_C = math.sqrt(2.0 / math.pi)


def _gelu(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    x = xs[0]
    if node.op.approximate:
        t = np.tanh(_GELU_C * (x + 0.044715 * x**3))
        slope = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * x**2)
    else:
        cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))
        slope = cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return [dy * slope], {}


def _silu(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    s = _sigmoid(xs[0])
    return [dy * (s + xs[0] * s * (1 - s))], {}


def _hard_sigmoid(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    x = xs[0]
    return [dy * np.where((x > -3.0) & (x < 3.0), 1.0 / 6.0, 0.0)], {}


def _hard_silu(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    x = xs[0]
    inside = (x > -3.0) & (x < 3.0)
    return [dy * (np.clip(x / 6.0 + 0.5, 0.0, 1.0) + np.where(inside, x / 6.0, 0.0))], {}


def _softplus(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    return [dy * _sigmoid(xs[0])], {}


def _softsign(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    return [dy / (1.0 + np.abs(xs[0])) ** 2], {}


def _softmax(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    axis = _full_axis(node.op.axis, y.ndim)
    return [y * (dy - np.sum(dy * y, axis=axis, keepdims=True))], {}


# -- normalization, products and reductions (opset v2, second round) --------------------------------

def _layer_norm(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    """x-hat = (x - mean) r, r = 1 / sqrt(var + eps) over the normalized axes (N values):
    dx = r (g - mean(g) - x-hat mean(g x-hat)) with g = dy gamma; d gamma = sum dy x-hat and
    d beta = sum dy over the other axes."""
    op, x = node.op, xs[0]
    axes = tuple(a + 1 for a in layer_norm_axes(op, x.ndim - 1))
    other = tuple(a for a in range(x.ndim) if a not in axes)
    mean = x.mean(axis=axes, keepdims=True)
    r = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + op.epsilon)
    xhat = (x - mean) * r
    shape = [1] * x.ndim
    for a in axes:
        shape[a] = x.shape[a]
    g = dy * p["gamma"].reshape(shape) if "gamma" in p else dy
    dx = r * (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    grads = {}
    if "gamma" in p:
        grads["gamma"] = (dy * xhat).sum(axis=other).reshape(p["gamma"].shape)
    if "beta" in p:
        grads["beta"] = dy.sum(axis=other).reshape(p["beta"].shape)
    return [dx], grads


def _layer_scale(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    gamma = p["gamma"]
    return [dy * gamma], {"gamma": (dy * xs[0]).reshape(-1, gamma.shape[0]).sum(axis=0)}


def _reduce(mean: bool) -> ReferenceBackward:
    def rule(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
        x = xs[0]
        axes = tuple(a + 1 for a in reduced_axes(node.op, x.ndim - 1))
        kept = dy if node.op.keepdims else np.expand_dims(dy, axes)
        count = int(np.prod([x.shape[a] for a in axes])) if mean else 1
        return [np.broadcast_to(kept / count, x.shape).copy()], {}

    return rule


def _exp(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    return [dy * y], {}


def _matmul(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    a, b = xs
    return [dy @ np.swapaxes(b, -1, -2), np.swapaxes(a, -1, -2) @ dy], {}


def _embedding(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    """y = one_hot @ table: d table = one_hot^T dy over every row and step.  (The gradient of the
    one-hot rows, dy table^T, is never needed in training: token inputs are data.)"""
    depth, table = xs[0].shape[-1], p["embeddings"]
    return [dy @ table.T], {"embeddings": xs[0].reshape(-1, depth).T @ dy.reshape(-1, dy.shape[-1])}


def _reverse(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    return [np.flip(dy, axis=node.op.axis % (dy.ndim - 1) + 1)], {}


def _conv2d_transpose(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    """The forward adds x[i, j] K[a, b] at (i s_h + a - top, j s_w + b - left): so dx[i, j] and
    dK[a, b] read dy (zero outside the output) back at those cells."""
    op, x, kernel = node.op, xs[0], p["kernel"]
    n, h, w, _ = x.shape
    (kh, kw), (sh, sw) = op.kernel_size, op.strides
    top, left = conv_transpose_offset(kh, sh, op.padding), conv_transpose_offset(kw, sw, op.padding)
    full = np.zeros((n, (h - 1) * sh + kh, (w - 1) * sw + kw, op.filters))
    seen = dy[:, : full.shape[1] - top, : full.shape[2] - left]
    full[:, top : top + seen.shape[1], left : left + seen.shape[2]] = seen
    dx, dk = np.zeros_like(x), np.zeros_like(kernel)
    for a in range(kh):
        for b in range(kw):
            window = full[:, a : a + (h - 1) * sh + 1 : sh, b : b + (w - 1) * sw + 1 : sw]
            dx += np.einsum("nhwf,fc->nhwc", window, kernel[a, b])
            dk[a, b] = np.einsum("nhwf,nhwc->fc", window, x)
    grads = {"kernel": dk}
    if op.use_bias:
        grads["bias"] = dy.sum(axis=(0, 1, 2))
    return [dx], grads


def _add_constant(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    """y = x + c, c broadcast from the right: dx = dy, dc = dy summed over what c was broadcast on."""
    c = p["constant"]
    lifted = (1,) * (dy.ndim - c.ndim) + c.shape
    return [dy], {"constant": unbroadcast(dy, lifted).reshape(c.shape)}


def _multi_head_attention(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> Grads:
    """Back through the output projection, weights @ v, the softmax over keys, q k^T and the
    three input projections (a causal mask is a constant: no gradient)."""
    op = node.op
    query, key, value, q, k, v, weights = attention_forward(op, xs, p)
    root = math.sqrt(op.key_dim)
    heads = np.einsum("bhts,bshv->bthv", weights, v)
    grads = {"output_kernel": np.einsum("bthv,bto->hvo", heads, dy)}
    d_heads = np.einsum("bto,hvo->bthv", dy, p["output_kernel"])
    d_weights = np.einsum("bthv,bshv->bhts", d_heads, v)
    d_v = np.einsum("bhts,bthv->bshv", weights, d_heads)
    d_scores = weights * (d_weights - (d_weights * weights).sum(axis=-1, keepdims=True))
    d_q = np.einsum("bhts,bshk->bthk", d_scores, k) / root
    d_k = np.einsum("bhts,bthk->bshk", d_scores, q)
    dxs = {}
    for part, x, d in (("query", query, d_q), ("key", key, d_k), ("value", value, d_v)):
        grads[f"{part}_kernel"] = np.einsum("btd,bthk->dhk", x, d)
        if op.use_bias:
            grads[f"{part}_bias"] = d.sum(axis=(0, 1))
        dxs[part] = np.einsum("bthk,dhk->btd", d, p[f"{part}_kernel"])
    if op.use_bias:
        grads["output_bias"] = dy.sum(axis=(0, 1))
    out = [dxs["query"], dxs["value"] if len(xs) == 3 else dxs["value"] + dxs["key"]]
    if len(xs) == 3:
        out.append(dxs["key"])
    return out, grads


RULES: dict[str, ReferenceBackward] = {
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
    "conv1d": _via_2d(_conv2d),
    "depthwise_conv2d": _conv2d,
    "depthwise_conv1d": _via_2d(_conv2d),
    "avg_pool1d": _via_2d(_avg_pool2d),
    "max_pool1d": _via_2d(_max_pool2d),
    "global_avg_pool2d": _global_avg,
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

REFERENCE_BACKWARD.update(RULES)
