"""Float64 reference rules of Embedding, SimpleRNN, LSTM, GRU and Reverse (Keras 3 semantics).

Registered in ``bridge.reference.REFERENCE_FORWARD``.  Each rule is the cell equation of the
Keras layer, stepped over time in NumPy; it is the oracle of the conformance tests.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bridge.ir import Node

Arrays = dict[str, np.ndarray]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


#: Keras activation name -> float64 function
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
    "hard_sigmoid": lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0),
}


def _embedding(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    """one_hot @ table: exactly table[ids] (one non-zero per row)."""
    return xs[0] @ p["embeddings"]


def _steps(node: Node, x: np.ndarray) -> np.ndarray:
    """(batch, steps, features) in the order the cell reads them."""
    return x[:, ::-1] if node.op.go_backwards else x


def _finish(node: Node, states: list[np.ndarray]) -> np.ndarray:
    return np.stack(states, axis=1) if node.op.return_sequences else states[-1]


def _simple_rnn(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    op = node.op
    act = ACTIVATIONS[op.activation]
    x = _steps(node, xs[0])
    inputs = x @ p["kernel"] + (p["bias"] if op.use_bias else 0.0)
    h = np.zeros((x.shape[0], op.units))
    states = []
    for t in range(x.shape[1]):
        h = act(inputs[:, t] + h @ p["recurrent_kernel"])
        states.append(h)
    return _finish(node, states)


def _lstm(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    op, u = node.op, node.op.units
    act, gate = ACTIVATIONS[op.activation], ACTIVATIONS[op.recurrent_activation]
    x = _steps(node, xs[0])
    inputs = x @ p["kernel"] + (p["bias"] if op.use_bias else 0.0)
    h = np.zeros((x.shape[0], u))
    c = np.zeros_like(h)
    states = []
    for t in range(x.shape[1]):
        z = inputs[:, t] + h @ p["recurrent_kernel"]
        i, f, g, o = gate(z[:, :u]), gate(z[:, u:2 * u]), act(z[:, 2 * u:3 * u]), gate(z[:, 3 * u:])
        c = f * c + i * g
        h = o * act(c)
        states.append(h)
    return _finish(node, states)


def _gru(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    op, u = node.op, node.op.units
    act, gate = ACTIVATIONS[op.activation], ACTIVATIONS[op.recurrent_activation]
    x = _steps(node, xs[0])
    bias = p["bias"] if op.use_bias else np.zeros((2, 3 * u) if op.reset_after else (3 * u,))
    input_bias, recurrent_bias = (bias[0], bias[1]) if op.reset_after else (bias, np.zeros(3 * u))
    inputs = x @ p["kernel"] + input_bias
    rk = p["recurrent_kernel"]
    h = np.zeros((x.shape[0], u))
    states = []
    for t in range(x.shape[1]):
        xz, xr, xh = inputs[:, t, :u], inputs[:, t, u:2 * u], inputs[:, t, 2 * u:]
        if op.reset_after:
            inner = h @ rk + recurrent_bias
            z, r = gate(xz + inner[:, :u]), gate(xr + inner[:, u:2 * u])
            candidate = act(xh + r * inner[:, 2 * u:])
        else:
            z, r = gate(xz + h @ rk[:, :u]), gate(xr + h @ rk[:, u:2 * u])
            candidate = act(xh + (r * h) @ rk[:, 2 * u:])
        h = z * h + (1.0 - z) * candidate
        states.append(h)
    return _finish(node, states)


def _reverse(node: Node, xs: list[np.ndarray], p: Arrays) -> np.ndarray:
    return np.flip(xs[0], axis=node.op.axis % (xs[0].ndim - 1) + 1)


RULES = {
    "embedding": _embedding,
    "simple_rnn": _simple_rnn,
    "lstm": _lstm,
    "gru": _gru,
    "reverse": _reverse,
}
