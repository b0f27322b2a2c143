"""Shape rules, one per op kind.

Shapes here exclude the batch dimension: every op maps per-example feature shapes,
and the batch dimension rides along unchanged.
"""

from __future__ import annotations

import math

import numpy as np
from typing import Callable

from bridge.ir import ops

Shape = tuple[int, ...]


class ShapeError(ValueError):
    """An op received inputs or parameters of shapes it cannot take."""


def window_output(size: int, window: int, stride: int, padding: str) -> int:
    """Keras' output length for one spatial axis."""
    if padding == "same":
        return math.ceil(size / stride)
    return (size - window) // stride + 1


def same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """Keras/TF 'same' padding for one axis: (before, after); extra goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def _dense(op: ops.Dense, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    """Keras Dense: the kernel applies to the last axis of an input of any rank."""
    (x,) = xs
    kernel = ps["kernel"]
    if kernel != (x[-1], op.units):
        raise ShapeError(f"dense kernel must be {(x[-1], op.units)}, received {kernel}")
    if op.use_bias and ps["bias"] != (op.units,):
        raise ShapeError(f"dense bias must be {(op.units,)}, received {ps['bias']}")
    return (*x[:-1], op.units)


def _spatial(x: Shape, what: str) -> tuple[int, int, int]:
    if len(x) != 3:
        raise ShapeError(f"{what} expects NHWC input (batch, h, w, c), received (batch, {x})")
    return x[0], x[1], x[2]


def feature_axis(axis: int, rank: int, what: str) -> int:
    """A feature-axis index (negative counts from the end) as 0..rank-1, or a ShapeError."""
    if not -rank <= axis < rank:
        raise ShapeError(f"{what} axis {axis} is out of range for a feature shape of rank {rank}")
    return axis % rank


def dilated(window: int, rate: int) -> int:
    """The span of a window of ``window`` taps spaced ``rate`` apart."""
    return (window - 1) * rate + 1


def _conv2d(op: ops.Conv2D, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    h, w, c = _spatial(xs[0], "conv2d")
    kh, kw = op.kernel_size
    if c % op.groups:
        raise ShapeError(f"conv2d with groups={op.groups} needs channels divisible by it, received {c}")
    expected = (kh, kw, c // op.groups, op.filters)
    if ps["kernel"] != expected:
        raise ShapeError(f"conv2d kernel must be {expected}, received {ps['kernel']}")
    if op.use_bias and ps["bias"] != (op.filters,):
        raise ShapeError(f"conv2d bias must be {(op.filters,)}, received {ps['bias']}")
    oh = window_output(h, dilated(kh, op.dilation_rate[0]), op.strides[0], op.padding)
    ow = window_output(w, dilated(kw, op.dilation_rate[1]), op.strides[1], op.padding)
    if oh < 1 or ow < 1:
        raise ShapeError(f"conv2d kernel {op.kernel_size} is larger than its input {(h, w)}")
    return (oh, ow, op.filters)


def _depthwise_conv2d(op: ops.DepthwiseConv2D, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    h, w, c = _spatial(xs[0], op.kind)
    kh, kw = op.kernel_size
    out_c = c * op.depth_multiplier
    if ps["kernel"] != (kh, kw, c, op.depth_multiplier):
        raise ShapeError(f"{op.kind} kernel must be {(kh, kw, c, op.depth_multiplier)}, received {ps['kernel']}")
    if op.use_bias and ps["bias"] != (out_c,):
        raise ShapeError(f"{op.kind} bias must be {(out_c,)}, received {ps['bias']}")
    oh = window_output(h, dilated(kh, op.dilation_rate[0]), op.strides[0], op.padding)
    ow = window_output(w, dilated(kw, op.dilation_rate[1]), op.strides[1], op.padding)
    if oh < 1 or ow < 1:
        raise ShapeError(f"{op.kind} kernel {op.kernel_size} is larger than its input {(h, w)}")
    return (oh, ow, out_c)


def _steps(x: Shape, what: str) -> tuple[int, int]:
    if len(x) != 2:
        raise ShapeError(f"{what} expects (batch, steps, channels) input, received (batch, {x})")
    return x[0], x[1]


def _via_2d(rule2d: Callable[..., Shape]) -> Callable[..., Shape]:
    """A 1-D op's rule: its 2-D form on a (1, steps) image, kernels given a leading 1."""

    def rule(op, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
        steps, c = _steps(xs[0], op.kind)
        lifted = {r: ((1, *s) if r == "kernel" else s) for r, s in ps.items()}
        _, out_steps, out_c = rule2d(op.as_2d(), [(1, steps, c)], lifted)
        return (out_steps, out_c)

    return rule


def _pool(op: ops.AvgPool2D | ops.MaxPool2D, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    h, w, c = _spatial(xs[0], op.kind)
    oh = window_output(h, op.pool_size[0], op.strides[0], op.padding)
    ow = window_output(w, op.pool_size[1], op.strides[1], op.padding)
    if oh < 1 or ow < 1:
        raise ShapeError(f"{op.kind} window {op.pool_size} is larger than its input {(h, w)}")
    return (oh, ow, c)


def _global_pool(op, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    rank = 2 if op.kind.endswith("1d") else 3
    if len(xs[0]) != rank:
        raise ShapeError(f"{op.kind} expects inputs of rank {rank + 1} (batch first), received (batch, {xs[0]})")
    c = xs[0][-1]
    return (*(1,) * (rank - 1), c) if op.keepdims else (c,)


def _upsample2d(op: ops.UpSample2D, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    h, w, c = _spatial(xs[0], op.kind)
    return (h * op.size[0], w * op.size[1], c)


def _upsample1d(op: ops.UpSample1D, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    steps, c = _steps(xs[0], op.kind)
    return (steps * op.size, c)


def _pad(op: ops.Pad, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    if len(op.pads) != len(xs[0]) or any(b < 0 or a < 0 for b, a in op.pads):
        raise ShapeError(f"pad needs one non-negative (before, after) pair per feature axis of {xs[0]}, "
                         f"received {op.pads}")
    return tuple(d + b + a for d, (b, a) in zip(xs[0], op.pads))


def _crop(op: ops.Crop, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    if len(op.crops) != len(xs[0]) or any(b < 0 or a < 0 for b, a in op.crops):
        raise ShapeError(f"crop needs one non-negative (before, after) pair per feature axis of {xs[0]}, "
                         f"received {op.crops}")
    out = tuple(d - b - a for d, (b, a) in zip(xs[0], op.crops))
    if min(out) < 1:
        raise ShapeError(f"cropping {op.crops} leaves nothing of an input of shape {xs[0]}")
    return out


def _transpose(op: ops.Transpose, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    if sorted(op.perm) != list(range(len(xs[0]))):
        raise ShapeError(f"transpose perm {op.perm} is not a permutation of the feature axes of {xs[0]}")
    return tuple(xs[0][i] for i in op.perm)


def _repeat_vector(op: ops.RepeatVector, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    if len(xs[0]) != 1:
        raise ShapeError(f"repeat_vector expects (batch, features) input, received (batch, {xs[0]})")
    return (op.n, xs[0][0])


def _concat(op: ops.Concat, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    if len(xs) < 2:
        raise ShapeError(f"concat needs at least two inputs, received {len(xs)}")
    rank = len(xs[0])
    axis = feature_axis(op.axis, rank, "concat")
    rest = {x[:axis] + x[axis + 1:] for x in xs}
    if any(len(x) != rank for x in xs) or len(rest) > 1:
        raise ShapeError(f"concat inputs must agree on every axis but {op.axis}, received {xs}")
    return xs[0][:axis] + (sum(x[axis] for x in xs),) + xs[0][axis + 1:]


def _same_shapes(op, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    if len(xs) < 2:
        raise ShapeError(f"{op.kind} needs at least two inputs, received {len(xs)}")
    if any(x != xs[0] for x in xs):
        raise ShapeError(f"{op.kind} inputs must share one shape, received {xs}")
    return xs[0]


def _broadcast(op, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    """Inputs of one rank whose axes agree or are 1 (a squeeze-and-excitation gate times its image)."""
    if len(xs) < 2:
        raise ShapeError(f"{op.kind} needs at least two inputs, received {len(xs)}")
    if len({len(x) for x in xs}) > 1:
        raise ShapeError(f"{op.kind} inputs must share one rank, received {xs}")
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*xs))
    except ValueError:
        raise ShapeError(f"{op.kind} inputs must agree on each axis or be 1 there, received {xs}") from None


def _prelu(op: ops.PRelu, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    alpha = ps["alpha"]
    if len(alpha) != len(xs[0]) or any(a not in (1, d) for a, d in zip(alpha, xs[0])):
        raise ShapeError(f"prelu alpha of shape {alpha} does not broadcast over the features {xs[0]}")
    return xs[0]


def _channel_constants(value, channels: int, what: str) -> None:
    if isinstance(value, tuple) and len(value) not in (1, channels):
        raise ShapeError(f"rescale {what} has {len(value)} values; expected 1 or one per channel ({channels})")


def _rescale(op: ops.Rescale, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    _channel_constants(op.scale, xs[0][-1], "scale")
    _channel_constants(op.offset, xs[0][-1], "offset")
    return xs[0]


def _softmax(op: ops.Softmax, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    feature_axis(op.axis, len(xs[0]), "softmax")
    return xs[0]


def _flatten(op: ops.Flatten, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    return (math.prod(xs[0]),)


def _reshape(op: ops.Reshape, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    size = math.prod(xs[0])
    target = list(op.target_shape)
    if target.count(-1) > 1:
        raise ShapeError(f"reshape target {op.target_shape} has more than one -1")
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        if known == 0 or size % known:
            raise ShapeError(f"cannot reshape {xs[0]} into {op.target_shape}")
        target[target.index(-1)] = size // known
    if math.prod(target) != size:
        raise ShapeError(f"cannot reshape {xs[0]} ({size} values) into {tuple(target)}")
    return tuple(target)


def _elementwise(op, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    return xs[0]


def _batch_norm(op: ops.BatchNorm, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    channels = xs[0][feature_axis(op.axis, len(xs[0]), "batch_norm")]
    for role in op.param_roles:
        if ps[role] != (channels,):
            raise ShapeError(f"batch_norm {role} must be {(channels,)}, received {ps[role]}")
    return xs[0]


SHAPE_RULES: dict[str, Callable[..., Shape]] = {
    "dense": _dense,
    "conv2d": _conv2d,
    "avg_pool2d": _pool,
    "max_pool2d": _pool,
    "global_avg_pool2d": _global_pool,
    "flatten": _flatten,
    "reshape": _reshape,
    "add": _same_shapes,
    "relu": _elementwise,
    "sigmoid": _elementwise,
    "tanh": _elementwise,
    "softmax": _softmax,
    "batch_norm": _batch_norm,
    "identity": _elementwise,
    "conv1d": _via_2d(_conv2d),
    "depthwise_conv2d": _depthwise_conv2d,
    "depthwise_conv1d": _via_2d(_depthwise_conv2d),
    "avg_pool1d": _via_2d(_pool),
    "max_pool1d": _via_2d(_pool),
    "global_max_pool2d": _global_pool,
    "global_avg_pool1d": _global_pool,
    "global_max_pool1d": _global_pool,
    "upsample2d": _upsample2d,
    "upsample1d": _upsample1d,
    "pad": _pad,
    "crop": _crop,
    "transpose": _transpose,
    "repeat_vector": _repeat_vector,
    "concat": _concat,
    "subtract": _same_shapes,
    "multiply": _broadcast,
    "average": _same_shapes,
    "maximum": _same_shapes,
    "minimum": _same_shapes,
    "prelu": _prelu,
    "rescale": _rescale,
    "elu": _elementwise,
    "gelu": _elementwise,
    "silu": _elementwise,
    "hard_sigmoid": _elementwise,
    "hard_silu": _elementwise,
    "softplus": _elementwise,
    "softsign": _elementwise,
}

# LayerNorm, MultiHeadAttention, matmul, reductions, exp, Conv2DTranspose (imports this module's helpers)
from bridge.ir.shapes_attention import RULES as _ATTENTION_RULES  # noqa: E402

SHAPE_RULES.update(_ATTENTION_RULES)

# Embedding, SimpleRNN/LSTM/GRU, Reverse
from bridge.ir.shapes_recurrent import RULES as _RECURRENT_RULES  # noqa: E402

SHAPE_RULES.update(_RECURRENT_RULES)


def infer_shape(op, input_shapes: list[Shape], param_shapes: dict[str, Shape]) -> Shape:
    return SHAPE_RULES[op.kind](op, input_shapes, param_shapes)
