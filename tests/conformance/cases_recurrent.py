"""Conformance cases of Embedding, SimpleRNN, LSTM, GRU and Reverse (registered in ``cases``).

Tolerances, from the documented errors (``bridge.mpc.recurrent``):
- embedding: one_hot @ table is exact but for one truncation and the table's encoding,
  2^-16 + 2^-17 < 1e-4; reverse is a gather: exact but for the input's encoding.
- recurrent cells: each step adds the cell's error e_cell (sigmoid 4e-3, tanh 8e-3, and a
  product of the two for LSTM's h = o tanh(c)) and carries the previous step's error through
  h U, amplified at most by L (the recurrent kernel's largest absolute row sum times the
  activations' slopes).  The cases use recurrent kernels with L < 1 (contractive, as trained
  recurrent layers mostly are), so the error stays below e_cell / (1 - L): with e_cell about
  1e-2 and L about 0.6 that is 2.5e-2, the tolerance.  The measured worst case over the cases
  below on both backends is printed by ``scripts/recurrent_error.py`` and quoted in the README.
"""

from __future__ import annotations

import numpy as np

from bridge.ir import Graph, Node, ParamSpec, Placement, PrivacyMode, Program, TensorSpec
from bridge.ir import ops as irops
from bridge.ir.validate import validate_graph

#: max |backend - reference| per kind (module docstring)
TOLERANCE: dict[str, float] = {
    "embedding": 1e-4,
    "reverse": 1e-4,
    "simple_rnn": 2.5e-2,
    "lstm": 2.5e-2,
    "gru": 2.5e-2,
}

STEPS, FEATURES, UNITS, BATCH = 5, 3, 4, 3


def _w(*shape: int, seed: int, scale: float) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape) * scale


def _contractive(units: int, width: int, seed: int, norm: float = 0.6) -> np.ndarray:
    """A recurrent kernel whose every gate block has largest absolute row sum ``norm``."""
    u = _w(units, width, seed=seed, scale=1.0)
    blocks = np.split(u, width // units, axis=1)
    return np.concatenate([b * norm / np.abs(b).sum(axis=1).max() for b in blocks], axis=1)


def _program(name: str, nodes: list[Node], inputs: dict[str, TensorSpec], params: dict[str, np.ndarray]) -> Program:
    probe = Graph(inputs=inputs, outputs={}, parameters={n: ParamSpec(shape=v.shape) for n, v in params.items()},
                  nodes=tuple(nodes))
    out = validate_graph(probe)["y"]
    graph = probe.model_copy(update={"outputs": {"y": TensorSpec(shape=(None, *out))}})
    return Program(name=name, graph=graph, placement=Placement.default(list(inputs), ["y"]),
                   privacy=PrivacyMode.ENCRYPTED_SERVING)


def _recurrent_case(name: str, op, seed: int = 0, features: int = FEATURES, steps: int = STEPS):
    from tests.conformance.cases import Case

    gates = {"simple_rnn": 1, "lstm": 4, "gru": 3}[op.kind]
    width = gates * op.units
    params = {"op/kernel": _w(features, width, seed=seed + 1, scale=0.5),
              "op/recurrent_kernel": _contractive(op.units, width, seed + 2)}
    if op.use_bias:
        shape = (2, width) if getattr(op, "reset_after", False) else (width,)
        params["op/bias"] = _w(*shape, seed=seed + 3, scale=0.3)
    node = Node(name="op", op=op, inputs=("x0",), output="y",
                params={r: f"op/{r}" for r in op.param_roles})
    program = _program(name, [node], {"x0": TensorSpec(shape=(None, steps, features))}, params)
    inputs = {"x0": np.random.default_rng(seed).normal(size=(BATCH, steps, features))}
    weights = {n: v.astype(np.float32) for n, v in params.items()}
    return Case(name, op.kind, program, weights, inputs)


def embedding_case():
    from tests.conformance.cases import Case

    vocab, dim = 11, 4
    table = _w(vocab, dim, seed=5, scale=1.0)
    node = Node(name="op", op=irops.Embedding(), inputs=("x0",), output="y", params={"embeddings": "op/embeddings"})
    program = _program("embedding", [node], {"x0": TensorSpec(shape=(None, STEPS, vocab), dtype="int32")},
                       {"op/embeddings": table})
    ids = np.random.default_rng(6).integers(0, vocab, size=(BATCH, STEPS)).astype(np.int32)
    ids[0, 0], ids[1, 1] = 0, vocab - 1  # both ends of the vocabulary
    return Case("embedding", "embedding", program, {"op/embeddings": table.astype(np.float32)}, {"x0": ids})


def cases() -> list:
    from tests.conformance.cases import _case

    return [
        embedding_case(),
        _case("reverse", irops.Reverse(axis=0), [(4, 3)]),
        _recurrent_case("simple_rnn", irops.SimpleRNN(units=UNITS)),
        _recurrent_case("simple_rnn_seq_backwards", irops.SimpleRNN(units=UNITS, return_sequences=True,
                                                                    go_backwards=True), seed=10),
        _recurrent_case("lstm", irops.LSTM(units=UNITS)),
        _recurrent_case("lstm_seq_backwards", irops.LSTM(units=UNITS, return_sequences=True, go_backwards=True),
                        seed=20),
        _recurrent_case("gru_reset_after", irops.GRU(units=UNITS, return_sequences=True), seed=30),
        _recurrent_case("gru_reset_before", irops.GRU(units=UNITS, reset_after=False), seed=40),
        _recurrent_case("gru_nobias", irops.GRU(units=UNITS, use_bias=False, go_backwards=True), seed=50),
    ]
