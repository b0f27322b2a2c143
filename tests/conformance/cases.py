"""Conformance cases as data: one small Program per op (ONNX's ``expect`` style).

Each case is built straight in the IR, so the suite needs no front end; the zoo
models (whole Keras models) are in ``test_zoo.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bridge.ir import Graph, Node, ParamSpec, Placement, PrivacyMode, Program, TensorSpec
from bridge.ir import ops as irops
from bridge.ir.validate import validate_graph

#: max |backend - reference| per op kind, from each protocol's documented error
#: (fixed-point rounding 2^-16 per product, approximations in bridge.mpc.functions)
TOLERANCE: dict[str, float] = {
    "dense": 2e-3,
    "conv2d": 2e-3,
    "avg_pool2d": 1e-4,
    "max_pool2d": 1e-4,
    "global_avg_pool2d": 1e-4,
    "flatten": 1e-4,
    "reshape": 1e-4,
    "add": 1e-4,
    "relu": 1e-4,
    "sigmoid": 4e-3,
    "tanh": 8e-3,
    "softmax": 5e-3,
    "batch_norm": 2e-3,
    "identity": 1e-4,
}


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    program: Program
    weights: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]

    def for_privacy(self, mode: PrivacyMode) -> Program:
        return self.program.model_copy(update={"privacy": mode})


def _case(
    name: str,
    op: irops.Op,
    in_shapes: list[tuple[int, ...]],
    params: dict[str, np.ndarray] | None = None,
    batch: int = 3,
    scale: float = 2.0,
    seed: int = 0,
) -> Case:
    rng = np.random.default_rng(seed)
    params = params or {}
    input_names = [f"x{i}" for i in range(len(in_shapes))]
    node = Node(
        name="op",
        op=op,
        inputs=tuple(input_names),
        output="y",
        params={role: f"op/{role}" for role in params},
    )
    specs = {f"op/{r}": ParamSpec(shape=v.shape) for r, v in params.items()}
    probe = Graph(
        inputs={n: TensorSpec(shape=(None, *s)) for n, s in zip(input_names, in_shapes)},
        outputs={},
        parameters=specs,
        nodes=(node,),
    )
    out_shape = validate_graph(probe)["y"]
    graph = probe.model_copy(update={"outputs": {"y": TensorSpec(shape=(None, *out_shape))}})
    program = Program(
        name=name,
        graph=graph,
        placement=Placement.default(input_names, ["y"]),
        privacy=PrivacyMode.ENCRYPTED_SERVING,
    )
    inputs = {n: rng.normal(size=(batch, *s)) * scale for n, s in zip(input_names, in_shapes)}
    weights = {f"op/{r}": v.astype(np.float32) for r, v in params.items()}
    return Case(name, op.kind, program, weights, inputs)


def _w(*shape: int, seed: int = 1, scale: float = 0.5) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape) * scale


def all_cases() -> list[Case]:
    bn = {
        "gamma": _w(4, seed=2) + 1.0,
        "beta": _w(4, seed=3),
        "moving_mean": _w(4, seed=4),
        "moving_variance": np.abs(_w(4, seed=5)) + 0.5,
    }
    return [
        _case("dense", irops.Dense(units=5), [(7,)], {"kernel": _w(7, 5), "bias": _w(5, seed=2)}),
        _case("dense_nobias", irops.Dense(units=3, use_bias=False), [(4,)], {"kernel": _w(4, 3)}),
        _case("conv2d_valid", irops.Conv2D(filters=3, kernel_size=3), [(6, 6, 2)],
              {"kernel": _w(3, 3, 2, 3), "bias": _w(3, seed=2)}),
        _case("conv2d_same_strided", irops.Conv2D(filters=2, kernel_size=(3, 2), strides=2, padding="same"),
              [(7, 5, 3)], {"kernel": _w(3, 2, 3, 2), "bias": _w(2, seed=2)}),
        _case("avg_pool2d", irops.AvgPool2D(pool_size=2, strides=2), [(6, 6, 3)]),
        _case("avg_pool2d_same", irops.AvgPool2D(pool_size=3, strides=2, padding="same"), [(5, 5, 2)]),
        _case("max_pool2d", irops.MaxPool2D(pool_size=2, strides=2), [(6, 6, 3)]),
        _case("max_pool2d_same", irops.MaxPool2D(pool_size=3, strides=2, padding="same"), [(5, 5, 2)]),
        _case("global_avg_pool2d", irops.GlobalAvgPool2D(), [(4, 5, 3)]),
        _case("flatten", irops.Flatten(), [(3, 4, 2)]),
        _case("reshape", irops.Reshape(target_shape=(4, -1)), [(12,)]),
        _case("add", irops.Add(), [(5,), (5,), (5,)]),
        _case("relu", irops.Relu(), [(11,)]),
        _case("sigmoid", irops.Sigmoid(), [(11,)], scale=4.0),
        _case("tanh", irops.Tanh(), [(11,)]),
        _case("softmax", irops.Softmax(), [(10,)], scale=3.0),
        _case("batch_norm", irops.BatchNorm(epsilon=1e-3), [(3, 3, 4)], bn),
        _case("identity", irops.Identity(), [(6,)]),
    ]
