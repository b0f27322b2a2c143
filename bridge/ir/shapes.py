"""Shape rules, one per op kind.

Shapes here exclude the batch dimension: every op maps per-example feature shapes,
and the batch dimension rides along unchanged.
"""

from __future__ import annotations

import math
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
    (x,) = xs
    kernel = ps["kernel"]
    if len(x) != 1:
        raise ShapeError(f"dense expects a rank-2 input (batch, features), received (batch, {x})")
    if kernel != (x[0], op.units):
        raise ShapeError(f"dense kernel must be {(x[0], op.units)}, received {kernel}")
    if op.use_bias and ps["bias"] != (op.units,):
        raise ShapeError(f"dense bias must be {(op.units,)}, received {ps['bias']}")
    return (op.units,)


def _spatial(x: Shape, what: str) -> tuple[int, int, int]:
    if len(x) != 3:
        raise ShapeError(f"{what} expects NHWC input (batch, h, w, c), received (batch, {x})")
    return x[0], x[1], x[2]


def _conv2d(op: ops.Conv2D, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    h, w, c = _spatial(xs[0], "conv2d")
    kh, kw = op.kernel_size
    if ps["kernel"] != (kh, kw, c, op.filters):
        raise ShapeError(f"conv2d kernel must be {(kh, kw, c, op.filters)}, received {ps['kernel']}")
    if op.use_bias and ps["bias"] != (op.filters,):
        raise ShapeError(f"conv2d bias must be {(op.filters,)}, received {ps['bias']}")
    oh = window_output(h, kh, op.strides[0], op.padding)
    ow = window_output(w, kw, op.strides[1], op.padding)
    if oh < 1 or ow < 1:
        raise ShapeError(f"conv2d kernel {op.kernel_size} is larger than its input {(h, w)}")
    return (oh, ow, op.filters)


def _pool(op: ops.AvgPool2D | ops.MaxPool2D, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    h, w, c = _spatial(xs[0], op.kind)
    oh = window_output(h, op.pool_size[0], op.strides[0], op.padding)
    ow = window_output(w, op.pool_size[1], op.strides[1], op.padding)
    if oh < 1 or ow < 1:
        raise ShapeError(f"{op.kind} window {op.pool_size} is larger than its input {(h, w)}")
    return (oh, ow, c)


def _global_pool(op: ops.GlobalAvgPool2D, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    return (_spatial(xs[0], op.kind)[2],)


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


def _add(op: ops.Add, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    if len(xs) < 2:
        raise ShapeError(f"add needs at least two inputs, received {len(xs)}")
    if any(x != xs[0] for x in xs):
        raise ShapeError(f"add inputs must share one shape, received {xs}")
    return xs[0]


def _elementwise(op, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    return xs[0]


def _batch_norm(op: ops.BatchNorm, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    channels = xs[0][-1]
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
    "add": _add,
    "relu": _elementwise,
    "sigmoid": _elementwise,
    "tanh": _elementwise,
    "softmax": _elementwise,
    "batch_norm": _batch_norm,
    "identity": _elementwise,
}


def infer_shape(op, input_shapes: list[Shape], param_shapes: dict[str, Shape]) -> Shape:
    return SHAPE_RULES[op.kind](op, input_shapes, param_shapes)
