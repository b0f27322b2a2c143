"""Shape rules of Embedding, the recurrent layers and Reverse.

Registered in ``bridge.ir.shapes.SHAPE_RULES``; kept here so the shared table holds one
line.  Shapes exclude the batch dimension, as everywhere in the IR.
"""

from __future__ import annotations

from bridge.ir import ops
from bridge.ir.shapes import Shape, ShapeError, feature_axis

#: gates per recurrent kind: the kernels hold this many blocks of ``units`` columns
GATES: dict[str, int] = {"simple_rnn": 1, "lstm": 4, "gru": 3}


def _embedding(op: ops.Embedding, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    (x,) = xs
    table = ps["embeddings"]
    if len(table) != 2:
        raise ShapeError(f"embedding table must be (vocabulary, dim), received {table}")
    if len(x) < 2 or x[-1] != table[0]:
        raise ShapeError(
            f"embedding reads one-hot token rows (..., {table[0]}) of a token input, received (batch, {x})"
        )
    return (*x[:-1], table[1])


def _recurrent(op: ops.SimpleRNN | ops.LSTM | ops.GRU, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    (x,) = xs
    if len(x) != 2:
        raise ShapeError(f"{op.kind} expects (batch, steps, features) input, received (batch, {x})")
    steps, features = x
    width = GATES[op.kind] * op.units
    expected = {"kernel": (features, width), "recurrent_kernel": (op.units, width)}
    if op.use_bias:
        two = isinstance(op, ops.GRU) and op.reset_after
        expected["bias"] = (2, width) if two else (width,)
    for role, shape in expected.items():
        if ps[role] != shape:
            raise ShapeError(f"{op.kind} {role} must be {shape}, received {ps[role]}")
    return (steps, op.units) if op.return_sequences else (op.units,)


def _reverse(op: ops.Reverse, xs: list[Shape], ps: dict[str, Shape]) -> Shape:
    feature_axis(op.axis, len(xs[0]), "reverse")
    return xs[0]


RULES = {
    "embedding": _embedding,
    "simple_rnn": _recurrent,
    "lstm": _recurrent,
    "gru": _recurrent,
    "reverse": _reverse,
}
