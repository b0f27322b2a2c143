"""Small hand-built Programs for the distributed tests, and the three-party placement they use."""

from __future__ import annotations

import numpy as np

from bridge.ir import Graph, Node, ParamSpec, Party, Placement, PrivacyMode, Program, Role, TensorSpec
from bridge.ir import ops as irops

#: three processes: compute parties that also own the model and the data, and a dealer
PARTIES: dict[str, frozenset[Role]] = {
    "server0": frozenset({Role.COMPUTE, Role.MODEL_OWNER}),
    "server1": frozenset({Role.COMPUTE, Role.DATA_OWNER, Role.CLIENT}),
    "dealer": frozenset({Role.DEALER}),
}
CLIENT = "server1"


def placement(inputs: list[str], outputs: list[str]) -> Placement:
    return Placement(
        parties=tuple(Party(name=n, roles=r) for n, r in PARTIES.items()),
        input_owners={n: CLIENT for n in inputs},
        param_owner="server0",
        output_receivers={n: (CLIENT,) for n in outputs},
    )


def tiny_mlp(seed: int = 0) -> tuple[Program, dict[str, np.ndarray]]:
    """x(6) -> dense 8 -> relu -> dense 3: comparisons, Beaver products and truncations."""
    rng = np.random.default_rng(seed)
    weights = {
        "d0/kernel": rng.normal(size=(6, 8)).astype(np.float32) * 0.5,
        "d0/bias": rng.normal(size=(8,)).astype(np.float32) * 0.1,
        "d1/kernel": rng.normal(size=(8, 3)).astype(np.float32) * 0.5,
        "d1/bias": rng.normal(size=(3,)).astype(np.float32) * 0.1,
    }
    nodes = (
        Node(name="d0", op=irops.Dense(units=8), inputs=("x",), output="h0",
             params={"kernel": "d0/kernel", "bias": "d0/bias"}),
        Node(name="r0", op=irops.Relu(), inputs=("h0",), output="a0"),
        Node(name="d1", op=irops.Dense(units=3), inputs=("a0",), output="y",
             params={"kernel": "d1/kernel", "bias": "d1/bias"}),
    )
    graph = Graph(
        inputs={"x": TensorSpec(shape=(None, 6))},
        outputs={"y": TensorSpec(shape=(None, 3))},
        parameters={n: ParamSpec(shape=w.shape) for n, w in weights.items()},
        nodes=nodes,
    )
    program = Program(name="tiny_mlp", graph=graph, placement=placement(["x"], ["y"]),
                      privacy=PrivacyMode.ENCRYPTED_SERVING)
    return program, weights


def batches(count: int = 2, rows: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.uniform(-1.0, 1.0, size=(rows, 6)) for _ in range(count)]


def tiny_training(seed: int = 0) -> tuple[Program, dict[str, np.ndarray]]:
    """``tiny_mlp`` with a softmax head, trained by SGD on sparse labels: encrypted training."""
    from bridge.ir import Loss, SGDSpec, TrainingSpec

    program, weights = tiny_mlp(seed)
    graph = program.graph
    softmax = Node(name="p", op=irops.Softmax(), inputs=("y",), output="p")
    graph = graph.model_copy(update={"nodes": (*graph.nodes, softmax), "outputs": {"p": TensorSpec(shape=(None, 3))}})
    spec = TrainingSpec(loss=Loss.SPARSE_CATEGORICAL_CROSSENTROPY, optimizer=SGDSpec(learning_rate=0.25), batch_size=8)
    program = Program(name="tiny_training", graph=graph, placement=placement(["x"], ["p"]),
                      privacy=PrivacyMode.ENCRYPTED_TRAINING, training=spec)
    return program, weights


def training_data(rows: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Three classes a small MLP can learn: the label is the argmax of the first three features."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-1.0, 1.0, size=(rows, 6))
    return x, np.argmax(x[:, :3], axis=1)
