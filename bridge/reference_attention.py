"""Float64 reference rules of the normalization, attention, reduction and transposed-convolution
ops: Keras' semantics stated directly in NumPy (registered in ``bridge.reference``)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from bridge.ir import Node
from bridge.ir.ops import MultiHeadAttention
from bridge.ir.shapes_attention import layer_norm_axes, reduced_axes, transpose_output

Arrays = dict[str, np.ndarray]

#: what Keras adds to masked attention scores before the softmax (its _large_negative_number
#: is -1e9 in float32; any value that makes e^score vanish gives the same result)
MASKED_SCORE = -1e9


def _layer_norm(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    op, x = node.op, xs[0]
    axes = tuple(a + 1 for a in layer_norm_axes(op, x.ndim - 1))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + op.epsilon)
    shape = [1] * x.ndim
    for a in axes:
        shape[a] = x.shape[a]
    return y * p["gamma"].reshape(shape) + p["beta"].reshape(shape)


def _layer_scale(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return xs[0] * p["gamma"]


def causal_mask(steps_q: int, steps_k: int) -> np.ndarray:
    """Keras' use_causal_mask: query step t attends to key steps s <= t."""
    return np.tril(np.ones((steps_q, steps_k), dtype=bool))


class AttentionForward(NamedTuple):
    """Multi-head attention up to its attention weights, in float64: what the forward rule
    finishes and the backward rule (``bridge.reference_train_v2``) differentiates."""

    query: np.ndarray
    key: np.ndarray  #: the value input when no separate key was given
    value: np.ndarray
    q: np.ndarray  #: the query projection over sqrt(key_dim), (batch, T, heads, key_dim)
    k: np.ndarray
    v: np.ndarray
    weights: np.ndarray  #: softmax over keys of q k^T (causal-masked), (batch, heads, T, S)


def attention_forward(op: MultiHeadAttention, xs: list[np.ndarray], p: Arrays) -> AttentionForward:
    """The three input projections, the scores q k^T, the causal mask and the softmax."""
    query, value = xs[0], xs[1]
    key = xs[2] if len(xs) == 3 else value

    def project(x: np.ndarray, part: str) -> np.ndarray:
        y = np.einsum("btd,dhk->bthk", x, p[f"{part}_kernel"])
        return y + p[f"{part}_bias"] if op.use_bias else y

    q = project(query, "query") / math.sqrt(op.key_dim)
    k, v = project(key, "key"), project(value, "value")
    scores = np.einsum("bshk,bthk->bhts", k, q)
    if op.causal:
        scores = np.where(causal_mask(scores.shape[2], scores.shape[3]), scores, MASKED_SCORE)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return AttentionForward(query, key, value, q, k, v, e / e.sum(axis=-1, keepdims=True))


def _multi_head_attention(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    op = node.op
    parts = attention_forward(op, xs, p)
    heads = np.einsum("bhts,bshv->bthv", parts.weights, parts.v)
    out = np.einsum("bthv,hvo->bto", heads, p["output_kernel"])
    return out + p["output_bias"] if op.use_bias else out


def _matmul(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return np.matmul(xs[0], xs[1])


def _reduce(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    axes = tuple(a + 1 for a in reduced_axes(node.op, xs[0].ndim - 1))
    reduce = np.sum if node.op.kind == "reduce_sum" else np.mean
    return reduce(xs[0], axis=axes, keepdims=node.op.keepdims)


def _exp(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return np.exp(xs[0])


def conv_transpose_offset(window: int, stride: int, padding: str) -> int:
    """Cells of the full transposed convolution dropped before the output: the forward
    convolution's 'same' padding before its first window (TensorFlow's convention)."""
    return max(window - stride, 0) // 2 if padding == "same" else 0


def _conv2d_transpose(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    """Each input cell (i, j) adds its kernel-weighted copy at (i s_h + a, j s_w + b)."""
    op, x, kernel = node.op, xs[0], p["kernel"]
    n, h, w, _ = x.shape
    (kh, kw), (sh, sw) = op.kernel_size, op.strides
    full = np.zeros((n, (h - 1) * sh + kh, (w - 1) * sw + kw, op.filters))
    for a in range(kh):
        for b in range(kw):
            full[:, a : a + (h - 1) * sh + 1 : sh, b : b + (w - 1) * sw + 1 : sw] += np.einsum(
                "nhwc,fc->nhwf", x, kernel[a, b])
    oh, ow = transpose_output(h, kh, sh, op.padding), transpose_output(w, kw, sw, op.padding)
    top, left = conv_transpose_offset(kh, sh, op.padding), conv_transpose_offset(kw, sw, op.padding)
    y = np.zeros((n, oh, ow, op.filters))
    crop = full[:, top : top + oh, left : left + ow]
    y[:, : crop.shape[1], : crop.shape[2]] = crop
    return y + p["bias"] if op.use_bias else y


RULES = {
    "layer_norm": _layer_norm,
    "layer_scale": _layer_scale,
    "multi_head_attention": _multi_head_attention,
    "matmul": _matmul,
    "reduce_sum": _reduce,
    "reduce_mean": _reduce,
    "exp": _exp,
    "conv2d_transpose": _conv2d_transpose,
    "add_constant": lambda node, xs, p: xs[0] + p["constant"],
}
