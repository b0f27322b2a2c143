"""The plaintext reference: any Program evaluated in NumPy float64, in the clear.

It is the oracle every backend is checked against (``tests/conformance``), so each
forward rule states Keras' semantics exactly and nothing else: one function per
op kind in ``REFERENCE_FORWARD``, with the signature
``rule(node, inputs, params) -> output`` (params keyed by role, e.g. "kernel").
Convolution and pooling use ``bridge.im2col``, the same patch plan the secure
backends gather with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from bridge.im2col import extract_patches, im2col_plan
from bridge.ir import Node, Program, validate_program, validate_weights
from bridge.ir import ops as irops

Arrays = dict[str, np.ndarray]
ForwardRule = Callable[[Node, list[np.ndarray], Arrays], np.ndarray]


class InputValidationError(ValueError):
    """Inputs given to a run do not match the Program; the message names the input."""


# -- forward rules ---------------------------------------------------------------------------------

def _dense(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    y = xs[0] @ p["kernel"]
    return y + p["bias"] if node.op.use_bias else y


def _window_plan(op: irops.Conv2D | irops.AvgPool2D | irops.MaxPool2D, x: np.ndarray):
    _, h, w, c = x.shape
    kh, kw = op.kernel_size if isinstance(op, irops.Conv2D) else op.pool_size
    return im2col_plan(h, w, c, kh, kw, op.strides, op.padding)


def _conv2d(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    x, kernel = xs[0], p["kernel"]
    plan = _window_plan(node.op, x)
    cols = extract_patches(plan, x)  # (n, positions, kh * kw * C)
    y = cols @ kernel.reshape(plan.window_size, kernel.shape[-1])
    if node.op.use_bias:
        y = y + p["bias"]
    return y.reshape(x.shape[0], plan.out_h, plan.out_w, kernel.shape[-1])


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


def _global_avg_pool2d(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return xs[0].mean(axis=(1, 2))


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
    return np.maximum(xs[0], 0.0)


def _sigmoid(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    # exp(-log(1 + exp(-x))): no overflow for large |x| of either sign.
    return np.exp(-np.logaddexp(0.0, -xs[0]))


def _tanh(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return np.tanh(xs[0])


def _softmax(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    shifted = xs[0] - xs[0].max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _batch_norm(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    inv_std = 1.0 / np.sqrt(p["moving_variance"] + node.op.epsilon)
    return p["gamma"] * (xs[0] - p["moving_mean"]) * inv_std + p["beta"]


def _identity(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return xs[0]


REFERENCE_FORWARD: dict[str, ForwardRule] = {
    "dense": _dense,
    "conv2d": _conv2d,
    "avg_pool2d": _avg_pool2d,
    "max_pool2d": _max_pool2d,
    "global_avg_pool2d": _global_avg_pool2d,
    "flatten": _flatten,
    "reshape": _reshape,
    "add": _add,
    "relu": _relu,
    "sigmoid": _sigmoid,
    "tanh": _tanh,
    "softmax": _softmax,
    "batch_norm": _batch_norm,
    "identity": _identity,
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
