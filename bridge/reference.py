"""The plaintext reference: any Program evaluated in NumPy float64, in the clear.

It is the oracle every backend is checked against (``tests/conformance``), so each
forward rule states Keras' semantics exactly and nothing else: one function per
op kind in ``REFERENCE_FORWARD``, with the signature
``rule(node, inputs, params) -> output`` (params keyed by role, e.g. "kernel").
Convolution and pooling use ``bridge.im2col``, the same patch plan the secure
backends gather with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from bridge.im2col import extract_patches, im2col_plan
from bridge.ir import Node, Program, validate_program, validate_weights
from bridge.ir import ops as irops
from bridge.ir.tokens import one_hot_inputs
from bridge.reference_attention import RULES as ATTENTION_RULES
from bridge.reference_recurrent import RULES as RECURRENT_RULES

Arrays = dict[str, np.ndarray]
ForwardRule = Callable[[Node, list[np.ndarray], Arrays], np.ndarray]


class InputValidationError(ValueError):
    """Inputs given to a run do not match the Program; the message names the input."""


# -- forward rules ---------------------------------------------------------------------------------

def _dense(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    y = xs[0] @ p["kernel"]
    return y + p["bias"] if node.op.use_bias else y


def _window_plan(op: irops.Conv2D | irops.DepthwiseConv2D | irops.AvgPool2D | irops.MaxPool2D, x: np.ndarray):
    _, h, w, c = x.shape
    if isinstance(op, (irops.AvgPool2D, irops.MaxPool2D)):
        return im2col_plan(h, w, c, *op.pool_size, op.strides, op.padding)
    return im2col_plan(h, w, c, *op.kernel_size, op.strides, op.padding, op.dilation_rate)


def _conv2d(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    """Group g convolves channels [g C/G, (g+1) C/G) into filters [g F/G, (g+1) F/G)."""
    x, kernel, groups = xs[0], p["kernel"], node.op.groups
    n, c, filters = x.shape[0], x.shape[3], kernel.shape[-1]
    plan = _window_plan(node.op, x)
    taps = kernel.shape[0] * kernel.shape[1]
    cols = extract_patches(plan, x).reshape(n, plan.positions, taps, groups, c // groups)
    weights = kernel.reshape(taps, c // groups, groups, filters // groups)
    y = np.einsum("nptgc,tcgf->npgf", cols, weights)
    if node.op.use_bias:
        y = y.reshape(n, plan.positions, filters) + p["bias"]
    return y.reshape(n, plan.out_h, plan.out_w, filters)


def _depthwise_conv2d(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    """Output channel c M + m is channel c's window times kernel[..., c, m]."""
    x, kernel = xs[0], p["kernel"]
    n, c = x.shape[0], x.shape[3]
    plan = _window_plan(node.op, x)
    cols = extract_patches(plan, x).reshape(n, plan.positions, -1, c)
    y = np.einsum("nptc,tcm->npcm", cols, kernel.reshape(-1, c, kernel.shape[-1]))
    y = y.reshape(n, plan.out_h, plan.out_w, -1)
    return y + p["bias"] if node.op.use_bias else y


def _via_2d(rule2d: ForwardRule) -> ForwardRule:
    """A 1-D op as its 2-D form on (n, 1, steps, C) images, kernels given a leading 1."""

    def rule(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
        lifted = node.model_copy(update={"op": node.op.as_2d()})
        params = {r: (v[None] if r == "kernel" else v) for r, v in p.items()}
        y = rule2d(lifted, [xs[0][:, None]], params)
        return y[:, 0]

    return rule


def _avg_pool2d(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    x = xs[0]
    n, c = x.shape[0], x.shape[3]
    plan = _window_plan(node.op, x)
    summed = extract_patches(plan, x).reshape(n, plan.positions, -1, c).sum(axis=2)
    # Keras 'same': padded cells are not counted, so border windows average fewer cells.
    y = summed / plan.valid_counts.reshape(1, -1, 1)
    return y.reshape(n, plan.out_h, plan.out_w, c)


def _max_pool2d(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    x = xs[0]
    n, c = x.shape[0], x.shape[3]
    plan = _window_plan(node.op, x)
    patches = extract_patches(plan, x, fill=-np.inf).reshape(n, plan.positions, -1, c)
    return patches.max(axis=2).reshape(n, plan.out_h, plan.out_w, c)


def _spatial_axes(x: np.ndarray) -> tuple[int, ...]:
    return tuple(range(1, x.ndim - 1))


def _global_avg(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return xs[0].mean(axis=_spatial_axes(xs[0]), keepdims=node.op.keepdims)


def _global_max(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return xs[0].max(axis=_spatial_axes(xs[0]), keepdims=node.op.keepdims)


def _upsample2d(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    sh, sw = node.op.size
    return np.repeat(np.repeat(xs[0], sh, axis=1), sw, axis=2)


def _upsample1d(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return np.repeat(xs[0], node.op.size, axis=1)


def _pad(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return np.pad(xs[0], [(0, 0), *node.op.pads])


def _crop(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    index = tuple(slice(b, d - a) for d, (b, a) in zip(xs[0].shape[1:], node.op.crops))
    return xs[0][(slice(None), *index)]


def _transpose(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return xs[0].transpose(0, *(a + 1 for a in node.op.perm))


def _repeat_vector(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return np.repeat(xs[0][:, None, :], node.op.n, axis=1)


def _concat(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return np.concatenate(xs, axis=node.op.axis % (xs[0].ndim - 1) + 1)


def _subtract(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return xs[0] - xs[1]


def _multiply(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    out = xs[0]
    for x in xs[1:]:
        out = out * x  # broadcasting: a (1, 1, C) gate may come first
    return out


def _average(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return _add(node, xs, p) / len(xs)


def _maximum(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return np.maximum.reduce(xs)


def _minimum(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return np.minimum.reduce(xs)


def _prelu(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    x = xs[0]
    return np.where(x >= 0, x, p["alpha"] * x)


def _rescale(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return xs[0] * np.asarray(node.op.scale) + np.asarray(node.op.offset)


def _elu(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    x = xs[0]
    return np.where(x > 0, x, node.op.alpha * np.expm1(np.minimum(x, 0.0)))


_erf = np.frompyfunc(math.erf, 1, 1)


def _gelu(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    x = xs[0]
    if node.op.approximate:
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def _silu(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return xs[0] * _sigmoid(node, xs, p)


def _hard_sigmoid(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return np.clip(xs[0] / 6.0 + 0.5, 0.0, 1.0)


def _hard_silu(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return xs[0] * _hard_sigmoid(node, xs, p)


def _softplus(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return np.logaddexp(0.0, xs[0])


def _softsign(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return xs[0] / (1.0 + np.abs(xs[0]))


def _flatten(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return xs[0].reshape(xs[0].shape[0], -1)


def _reshape(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return xs[0].reshape(xs[0].shape[0], *node.op.target_shape)


def _add(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    total = xs[0].copy()
    for x in xs[1:]:
        total += x
    return total


def _relu(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    """Keras' relu: x above threshold (clipped at max_value), negative_slope (x - threshold) below."""
    op, x = node.op, xs[0]
    if op.plain:
        return np.maximum(x, 0.0)
    y = np.where(x > op.threshold, x, op.negative_slope * (x - op.threshold))
    return y if op.max_value is None else np.where(x >= op.max_value, op.max_value, y)


def _sigmoid(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    # exp(-log(1 + exp(-x))): no overflow for large |x| of either sign.
    return np.exp(-np.logaddexp(0.0, -xs[0]))


def _tanh(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return np.tanh(xs[0])


def _full_axis(axis: int, x: np.ndarray) -> int:
    """A feature-axis index as an axis of the batched array."""
    return axis % (x.ndim - 1) + 1


def _softmax(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    axis = _full_axis(node.op.axis, xs[0])
    shifted = xs[0] - xs[0].max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def channel_shape(axis: int, x_ndim: int, channels: int) -> tuple[int, ...]:
    """Per-channel parameters of a feature axis, shaped to broadcast over a batched array."""
    shape = [1] * x_ndim
    shape[axis % (x_ndim - 1) + 1] = channels
    return tuple(shape)


def _batch_norm(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    shape = channel_shape(node.op.axis, xs[0].ndim, p["gamma"].shape[0])
    g, b, m, v = (p[r].reshape(shape) for r in ("gamma", "beta", "moving_mean", "moving_variance"))
    return g * (xs[0] - m) / np.sqrt(v + node.op.epsilon) + b


def _identity(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return xs[0]


REFERENCE_FORWARD: dict[str, ForwardRule] = {
    "dense": _dense,
    "conv2d": _conv2d,
    "avg_pool2d": _avg_pool2d,
    "max_pool2d": _max_pool2d,
    "global_avg_pool2d": _global_avg,
    "flatten": _flatten,
    "reshape": _reshape,
    "add": _add,
    "relu": _relu,
    "sigmoid": _sigmoid,
    "tanh": _tanh,
    "softmax": _softmax,
    "batch_norm": _batch_norm,
    "identity": _identity,
    "conv1d": _via_2d(_conv2d),
    "depthwise_conv2d": _depthwise_conv2d,
    "depthwise_conv1d": _via_2d(_depthwise_conv2d),
    "avg_pool1d": _via_2d(_avg_pool2d),
    "max_pool1d": _via_2d(_max_pool2d),
    "global_max_pool2d": _global_max,
    "global_avg_pool1d": _global_avg,
    "global_max_pool1d": _global_max,
    "upsample2d": _upsample2d,
    "upsample1d": _upsample1d,
    "pad": _pad,
    "crop": _crop,
    "transpose": _transpose,
    "repeat_vector": _repeat_vector,
    "concat": _concat,
    "subtract": _subtract,
    "multiply": _multiply,
    "average": _average,
    "maximum": _maximum,
    "minimum": _minimum,
    "prelu": _prelu,
    "rescale": _rescale,
    "elu": _elu,
    "gelu": _gelu,
    "silu": _silu,
    "hard_sigmoid": _hard_sigmoid,
    "hard_silu": _hard_silu,
    "softplus": _softplus,
    "softsign": _softsign,
    **ATTENTION_RULES,
    **RECURRENT_RULES,
}


# -- running a Program -----------------------------------------------------------------------------

def check_inputs(program: Program, inputs: Mapping[str, np.ndarray]) -> Arrays:
    """The inputs as float64 arrays, after checking names, shapes and finiteness against the graph.

    Shared by every backend: what the data owner passes is checked once, before
    anything is encoded or shared.
    """
    specs = program.graph.inputs
    if not isinstance(inputs, Mapping):
        raise InputValidationError(
            f"inputs must be a dict {{name: array}} with keys {list(specs)}, received {type(inputs).__name__}"
        )
    inputs = one_hot_inputs(program.graph, inputs)  # token ids -> one-hot rows, ids checked
    missing = [name for name in specs if name not in inputs]
    if missing:
        raise InputValidationError(
            f"missing input(s) {missing}; the program takes inputs {list(specs)}, received {list(inputs)}. "
            "Pass one array per input name."
        )
    unknown = [name for name in inputs if name not in specs]
    if unknown:
        raise InputValidationError(
            f"unexpected input(s) {unknown}; the program takes inputs {list(specs)}. Remove or rename them."
        )
    out: Arrays = {}
    batch: tuple[str, int] | None = None
    for name, spec in specs.items():
        raw = np.asarray(inputs[name])
        if raw.dtype.kind not in "biuf":
            raise InputValidationError(
                f"input {name!r} must hold real numbers, received an array of dtype {raw.dtype}"
            )
        expected = spec.feature_shape
        if raw.ndim != len(expected) + 1 or tuple(raw.shape[1:]) != expected:
            raise InputValidationError(
                f"input {name!r}: expected shape (batch, {', '.join(map(str, expected))}), "
                f"received {tuple(raw.shape)}. Reshape the data to the model's input shape."
            )
        value = raw.astype(np.float64)
        if not np.all(np.isfinite(value)):
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(value))[0])
            raise InputValidationError(
                f"input {name!r} contains NaN or inf (first at index {bad}); "
                "clean or impute the data before running the model"
            )
        if batch is not None and value.shape[0] != batch[1]:
            raise InputValidationError(
                f"inputs must share one batch size: {batch[0]!r} has {batch[1]} rows, "
                f"{name!r} has {value.shape[0]}"
            )
        batch = (name, value.shape[0])
        out[name] = value
    return out


def as_float64(weights: Mapping[str, np.ndarray]) -> Arrays:
    return {name: np.asarray(w, dtype=np.float64) for name, w in weights.items()}


def evaluate(program: Program, weights64: Mapping[str, np.ndarray], inputs64: Mapping[str, np.ndarray]) -> Arrays:
    """Every value of the graph, from already checked float64 weights and inputs."""
    values: Arrays = dict(inputs64)
    for node in program.graph.nodes:
        xs = [values[v] for v in node.inputs]
        params = {role: weights64[name] for role, name in node.params.items()}
        values[node.output] = REFERENCE_FORWARD[node.op.kind](node, xs, params)
    return values


def run_reference_all(
    program: Program, weights: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]
) -> Arrays:
    """Every value (graph inputs and each node's output), keyed by value name, in float64."""
    validate_program(program)
    validate_weights(program, weights)
    return evaluate(program, as_float64(weights), check_inputs(program, inputs))


def run_reference(
    program: Program, weights: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]
) -> Arrays:
    """The graph outputs, keyed by output name, in float64."""
    values = run_reference_all(program, weights, inputs)
    return {name: values[name] for name in program.graph.outputs}
