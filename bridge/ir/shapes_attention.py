"""Shape rules of the normalization, attention, reduction and transposed-convolution ops.

Registered in ``bridge.ir.shapes.SHAPE_RULES``; kept here so that the shared table only
holds one line per kind.  Shapes exclude the batch dimension, as everywhere in the IR.
"""

from __future__ import annotations

from bridge.ir import ops
from bridge.ir.shapes import Shape, ShapeError, feature_axis


def layer_norm_axes(op: ops.LayerNorm, rank: int) -> tuple[int, ...]:
    """The op's axes as ascending feature-axis indices 0..rank-1."""
    axes = tuple(sorted({feature_axis(a, rank, "layer_norm") for a in op.axes}))
    if len(axes) != len(op.axes):
        raise ShapeError(f"layer_norm axes {op.axes} name one axis twice")
    return axes


def _layer_norm(op: ops.LayerNorm, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    x = xs[0]
    expected = tuple(x[a] for a in layer_norm_axes(op, len(x)))
    for role in op.param_roles:
        if ps[role] != expected:
            raise ShapeError(f"layer_norm {role} must be {expected} (the normalized axes), received {ps[role]}")
    return x


def _layer_scale(op: ops.LayerScale, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    if ps["gamma"] != (xs[0][-1],):
        raise ShapeError(f"layer_scale gamma must be {(xs[0][-1],)}, received {ps['gamma']}")
    return xs[0]


def _multi_head_attention(op: ops.MultiHeadAttention, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    if len(xs) not in (2, 3):
        raise ShapeError(f"multi_head_attention takes (query, value) or (query, value, key), received {len(xs)} inputs")
    query, value = xs[0], xs[1]
    key = xs[2] if len(xs) == 3 else value
    for what, s in (("query", query), ("value", value), ("key", key)):
        if len(s) != 2:
            raise ShapeError(f"multi_head_attention expects (batch, steps, features) {what}, received (batch, {s})")
    if key[0] != value[0]:
        raise ShapeError(f"multi_head_attention key and value must have as many steps, received {key} and {value}")
    h, kd, vd = op.num_heads, op.key_dim, op.value_dim
    out = ps["output_kernel"][-1] if len(ps["output_kernel"]) == 3 else -1
    expected = {
        "query_kernel": (query[1], h, kd), "key_kernel": (key[1], h, kd), "value_kernel": (value[1], h, vd),
        "output_kernel": (h, vd, out),
    }
    if op.use_bias:
        expected.update(query_bias=(h, kd), key_bias=(h, kd), value_bias=(h, vd), output_bias=(out,))
    for role, shape in expected.items():
        if ps[role] != shape:
            raise ShapeError(f"multi_head_attention {role} must be {shape}, received {ps[role]}")
    return (query[0], out)


def _matmul(op: ops.MatMul, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    a, b = xs
    if len(a) < 2 or len(a) != len(b) or a[:-2] != b[:-2] or a[-1] != b[-2]:
        raise ShapeError(f"matmul expects (batch, ..., M, K) @ (batch, ..., K, N) with equal leading axes, "
                         f"received (batch, {a}) and (batch, {b})")
    return (*a[:-1], b[-1])


def reduced_axes(op: ops.ReduceSum | ops.ReduceMean, rank: int) -> tuple[int, ...]:
    if op.axes is None:
        return tuple(range(rank))
    axes = tuple(sorted({feature_axis(a, rank, op.kind) for a in op.axes}))
    if len(axes) != len(op.axes):
        raise ShapeError(f"{op.kind} axes {op.axes} name one axis twice")
    return axes


def _reduce(op: ops.ReduceSum | ops.ReduceMean, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    x = xs[0]
    axes = reduced_axes(op, len(x))
    if op.keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(x))
    out = tuple(d for i, d in enumerate(x) if i not in axes)
    if not out:
        raise ShapeError(f"{op.kind} over every feature axis without keepdims leaves a (batch,) tensor; "
                         "the IR keeps at least one feature axis: use keepdims=True")
    return out


def transpose_output(size: int, window: int, stride: int, padding: str) -> int:
    """Keras' Conv2DTranspose output length for one axis (output_padding None)."""
    return size * stride if padding == "same" else size * stride + max(window - stride, 0)


def _conv2d_transpose(op: ops.Conv2DTranspose, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    if len(xs[0]) != 3:
        raise ShapeError(f"conv2d_transpose expects NHWC input (batch, h, w, c), received (batch, {xs[0]})")
    h, w, c = xs[0]
    expected = (*op.kernel_size, op.filters, c)
    if ps["kernel"] != expected:
        raise ShapeError(f"conv2d_transpose kernel must be {expected}, received {ps['kernel']}")
    if op.use_bias and ps["bias"] != (op.filters,):
        raise ShapeError(f"conv2d_transpose bias must be {(op.filters,)}, received {ps['bias']}")
    oh, ow = (transpose_output(n, k, s, op.padding) for n, k, s in zip((h, w), op.kernel_size, op.strides))
    return (oh, ow, op.filters)


def _add_constant(op: ops.AddConstant, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    c, x = ps["constant"], xs[0]
    if len(c) > len(x) or any(a not in (1, b) for a, b in zip(c[::-1], x[::-1])):
        raise ShapeError(f"add_constant's constant of shape {c} does not broadcast over the features {x}")
    return x


def _elementwise(op, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    return xs[0]


RULES = {
    "layer_norm": _layer_norm,
    "layer_scale": _layer_scale,
    "multi_head_attention": _multi_head_attention,
    "matmul": _matmul,
    "reduce_sum": _reduce,
    "reduce_mean": _reduce,
    "exp": _elementwise,
    "conv2d_transpose": _conv2d_transpose,
    "add_constant": _add_constant,
}

__all__ = ["RULES", "layer_norm_axes", "reduced_axes", "transpose_output"]
