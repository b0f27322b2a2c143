"""Measure how the secure recurrent layers' error grows with the sequence length.

    python scripts/recurrent_error.py [--backend torch-spdz] [--steps 4 16 64]

For SimpleRNN, LSTM and GRU (4 units, 3 features, batch 4, inputs N(0, 1)), with two recurrent
kernels: a contractive one (every gate block's largest absolute row sum 0.6), Keras' default
(orthogonal) and an expansive one (orthogonal x 3, a chaotic regime trained layers avoid), it prints the largest |secure - float64 reference| over every
output step (return_sequences=True).  The README's "Sequence models" quotes the figures.
"""

from __future__ import annotations

import argparse

import numpy as np

from bridge.ir import Graph, Node, ParamSpec, Placement, PrivacyMode, Program, TensorSpec
from bridge.ir import ops as irops
from bridge.reference import run_reference
from bridge.registry import get_backend

GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}


def _recurrent_kernel(units: int, gates: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind in ("orthogonal", "expansive"):  # Keras' recurrent_initializer default; x 3: chaotic
        q, _ = np.linalg.qr(rng.normal(size=(units * gates, units)))
        return q.T * (3.0 if kind == "expansive" else 1.0)
    u = rng.normal(size=(units, units * gates))
    blocks = np.split(u, gates, axis=1)
    return np.concatenate([b * 0.6 / np.abs(b).sum(axis=1).max() for b in blocks], axis=1)


def measure(op, steps: int, recurrent: str, backend: str, features: int = 3, batch: int = 4) -> float:
    rng = np.random.default_rng(0)
    gates = GATES[op.kind]
    limit = np.sqrt(6.0 / (features + gates * op.units))  # glorot_uniform
    params = {
        "op/kernel": rng.uniform(-limit, limit, size=(features, gates * op.units)),
        "op/recurrent_kernel": _recurrent_kernel(op.units, gates, recurrent, rng),
        "op/bias": rng.normal(0, 0.1, size=(2, gates * op.units) if getattr(op, "reset_after", False)
                              else (gates * op.units,)),
    }
    node = Node(name="op", op=op, inputs=("x",), output="y", params={r: f"op/{r}" for r in op.param_roles})
    graph = Graph(inputs={"x": TensorSpec(shape=(None, steps, features))},
                  outputs={"y": TensorSpec(shape=(None, steps, op.units))},
                  parameters={n: ParamSpec(shape=v.shape) for n, v in params.items()}, nodes=(node,))
    program = Program(name="rnn", graph=graph, placement=Placement.default(["x"], ["y"]),
                      privacy=PrivacyMode.ENCRYPTED_SERVING)
    x = {"x": rng.normal(size=(batch, steps, features))}
    expected = run_reference(program, params, x)["y"]
    executable = get_backend(backend).prepare(program, params, timeout_s=600.0)  # idle parties wait the whole pass
    try:
        got = executable.run(x).outputs["y"]
    finally:
        executable.close()
    return float(np.abs(got - expected).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch-spdz")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--kernels", nargs="+", default=["contractive", "orthogonal", "expansive"])
    args = parser.parse_args()
    ops = {"simple_rnn": irops.SimpleRNN(units=4, return_sequences=True),
           "lstm": irops.LSTM(units=4, return_sequences=True),
           "gru": irops.GRU(units=4, return_sequences=True)}
    print(f"| layer | recurrent kernel | {' | '.join(f'T={t}' for t in args.steps)} |")
    print(f"|---|---|{'---|' * len(args.steps)}")
    for name, op in ops.items():
        for recurrent in args.kernels:
            errors = [measure(op, t, recurrent, args.backend) for t in args.steps]
            print(f"| {name} | {recurrent} | {' | '.join(f'{e:.1e}' for e in errors)} |", flush=True)


if __name__ == "__main__":
    main()
