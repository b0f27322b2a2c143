"""The benchmark workloads, defined once: the same three CrypTen's anchor runs.

  mlp_infer   784-128-128-10 ReLU MLP, batch 128, private input and private model
  cnn_infer   conv5x5x16-relu-avgpool2-conv5x5x16-relu-avgpool2-fc100-relu-fc10 on
              28x28x1, batch 32
  mlp_train   784-128-128-10, softmax cross-entropy, SGD (learning rate 0.1), batch 64,
              one epoch of 1024 samples

Each is a Program with He-initialised random weights (seeded); inputs are uniform in
[0, 1) (seeded).  Every benchmark (embedded, one process per party, the kernel table)
and every plaintext baseline reads its shapes from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bridge.ir import (
    Graph,
    Loss,
    Node,
    ParamSpec,
    Party,
    Placement,
    PrivacyMode,
    Program,
    Role,
    SGDSpec,
    TensorSpec,
    TrainingSpec,
)
from bridge.ir import ops as irops

#: mlp_train: layer sizes, batch, learning rate, samples per epoch (quick: a quarter)
SIZES = (784, 128, 128, 10)
BATCH = 64
LEARNING_RATE = 0.1
EPOCH_ROWS = 1024


@dataclass(frozen=True)
class Workload:
    """An inference workload: a serving Program, its weights and its batch size."""

    name: str
    program: Program
    weights: dict[str, np.ndarray]
    batch: int

    def inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        spec = self.program.graph.inputs["x"]
        return {"x": rng.uniform(0.0, 1.0, size=(self.batch, *spec.feature_shape))}


class _Builder:
    """Builds a chain-shaped Program with He-initialised random weights."""

    def __init__(self, input_shape: tuple[int, ...], seed: int = 0) -> None:
        self.shape = input_shape
        self.nodes: list[Node] = []
        self.params: dict[str, ParamSpec] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.value = "x"
        self.input_shape = input_shape
        self.rng = np.random.default_rng(seed)

    def _node(self, op: Any, out_shape: tuple[int, ...], **params: np.ndarray) -> None:
        name = f"{op.kind}_{len(self.nodes)}"
        roles = {}
        for role, value in params.items():
            pname = f"{name}/{role}"
            self.params[pname] = ParamSpec(shape=value.shape)
            self.weights[pname] = value.astype(np.float32)
            roles[role] = pname
        self.nodes.append(Node(name=name, op=op, inputs=(self.value,), output=name, params=roles))
        self.value, self.shape = name, out_shape

    def dense(self, units: int) -> _Builder:
        fan_in = self.shape[-1]
        w = self.rng.normal(size=(fan_in, units)) * np.sqrt(2.0 / fan_in)
        self._node(irops.Dense(units=units), (units,), kernel=w, bias=np.zeros(units))
        return self

    def conv(self, filters: int, size: int) -> _Builder:
        h, w, c = self.shape
        kernel = self.rng.normal(size=(size, size, c, filters)) * np.sqrt(2.0 / (size * size * c))
        op = irops.Conv2D(filters=filters, kernel_size=size)
        self._node(op, (h - size + 1, w - size + 1, filters), kernel=kernel, bias=np.zeros(filters))
        return self

    def relu(self) -> _Builder:
        self._node(irops.Relu(), self.shape)
        return self

    def avg_pool(self) -> _Builder:
        h, w, c = self.shape
        self._node(irops.AvgPool2D(pool_size=2, strides=2), (h // 2, w // 2, c))
        return self

    def flatten(self) -> _Builder:
        self._node(irops.Flatten(), (int(np.prod(self.shape)),))
        return self

    def build(self, name: str, batch: int) -> Workload:
        graph = Graph(
            inputs={"x": TensorSpec(shape=(None, *self.input_shape))},
            outputs={self.value: TensorSpec(shape=(None, *self.shape))},
            parameters=self.params,
            nodes=tuple(self.nodes),
        )
        placement = Placement.default(["x"], [self.value])
        program = Program(name=name, graph=graph, placement=placement, privacy=PrivacyMode.ENCRYPTED_SERVING)
        return Workload(name, program, self.weights, batch)


def mlp_infer() -> Workload:
    """784-128-128-10 ReLU, batch 128."""
    b = _Builder((784,)).dense(128).relu().dense(128).relu().dense(10)
    return b.build("mlp_infer", 128)


def cnn_infer() -> Workload:
    """conv5x5x16-relu-avgpool2-conv5x5x16-relu-avgpool2-fc100-relu-fc10 on 28x28x1, batch 32."""
    b = _Builder((28, 28, 1)).conv(16, 5).relu().avg_pool().conv(16, 5).relu().avg_pool()
    b = b.flatten().dense(100).relu().dense(10)
    return b.build("cnn_infer", 32)


INFERENCE_WORKLOADS: dict[str, Callable[[], Workload]] = {"mlp_infer": mlp_infer, "cnn_infer": cnn_infer}


def mlp_train_program(sizes: tuple[int, ...] = SIZES, seed: int = 0) -> tuple[Program, dict[str, np.ndarray]]:
    """mlp_train's Program (He-initialised weights) with its training spec and placement:
    a model owner, one data owner (alice), two compute servers and a dealer."""
    rng = np.random.default_rng(seed)
    nodes, params, weights = [], {}, {}
    value = "x"
    for i, (fan_in, units) in enumerate(zip(sizes, sizes[1:])):
        name = f"dense_{i}"
        params[f"{name}/kernel"] = ParamSpec(shape=(fan_in, units))
        params[f"{name}/bias"] = ParamSpec(shape=(units,))
        weights[f"{name}/kernel"] = (rng.normal(size=(fan_in, units)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        weights[f"{name}/bias"] = np.zeros(units, np.float32)
        nodes.append(Node(name=name, op=irops.Dense(units=units), inputs=(value,), output=name,
                          params={"kernel": f"{name}/kernel", "bias": f"{name}/bias"}))
        activation = irops.Relu() if i < len(sizes) - 2 else irops.Softmax()
        nodes.append(Node(name=f"{activation.kind}_{i}", op=activation, inputs=(name,), output=f"{activation.kind}_{i}"))
        value = f"{activation.kind}_{i}"
    graph = Graph(inputs={"x": TensorSpec(shape=(None, sizes[0]))}, outputs={value: TensorSpec(shape=(None, sizes[-1]))},
                  parameters=params, nodes=tuple(nodes))
    roles = {"model_owner": Role.MODEL_OWNER, "alice": Role.DATA_OWNER, "server0": Role.COMPUTE,
             "server1": Role.COMPUTE, "dealer": Role.DEALER}
    placement = Placement(
        parties=tuple(Party(name=n, roles=frozenset({r})) for n, r in roles.items()),
        input_owners={"x": "alice"}, param_owner="model_owner", output_receivers={value: ("alice",)},
    )
    spec = TrainingSpec(loss=Loss.SPARSE_CATEGORICAL_CROSSENTROPY, optimizer=SGDSpec(learning_rate=LEARNING_RATE),
                        batch_size=BATCH)
    program = Program(name="mlp_train", graph=graph, placement=placement,
                      privacy=PrivacyMode.ENCRYPTED_TRAINING, training=spec)
    return program, weights


def random_data(rows: int, seed: int = 0, sizes: tuple[int, ...] = SIZES) -> tuple[np.ndarray, np.ndarray]:
    """mlp_train's samples: features uniform in [0, 1), labels uniform over the classes."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, size=(rows, sizes[0])), rng.integers(0, sizes[-1], size=rows)


#: every workload name ``privacy-bridge bench --workload`` takes, in the order it runs them
ALL_WORKLOADS = ("mlp_infer", "cnn_infer", "mlp_infer_stream", "offline", "distributed", "mlp_train", "federated")
