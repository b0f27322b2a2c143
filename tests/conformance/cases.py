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
from tests.conformance import cases_attention, cases_recurrent

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
    # -- opset v2 --
    # exact ring ops (gathers, pads, sums, comparisons): fixed-point encoding, 2^-17 per input
    "pad": 1e-4, "crop": 1e-4, "transpose": 1e-4, "repeat_vector": 1e-4, "concat": 1e-4,
    "upsample2d": 1e-4, "upsample1d": 1e-4, "subtract": 1e-4, "maximum": 1e-4, "minimum": 1e-4,
    "max_pool1d": 1e-4, "global_max_pool2d": 1e-4, "global_max_pool1d": 1e-4,
    # one public product and truncation: 2^-16 plus the constant's encoding error times |x|
    "avg_pool1d": 1e-4, "global_avg_pool1d": 1e-4, "average": 1e-4, "rescale": 2e-4,
    # Beaver products with truncation, as dense/conv2d: rounding grows with the fan-in
    "conv1d": 2e-3, "depthwise_conv2d": 2e-3, "depthwise_conv1d": 2e-3, "multiply": 1e-3, "prelu": 1e-3,
    # approximations (bridge.mpc.activations): exp's 2e-3; sigmoid's 4e-3 |x|; softsign's Newton
    # iteration to 2^-18; hard_* exact but for rounding
    "elu": 3e-3, "softplus": 3e-3, "silu": 2e-2, "gelu": 2e-2, "softsign": 1e-3,
    "hard_sigmoid": 1e-4, "hard_silu": 1e-3,
}

TOLERANCE.update(cases_attention.TOLERANCE)
TOLERANCE.update(cases_recurrent.TOLERANCE)


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
        # -- opset v2 --
        _case("conv2d_dilated", irops.Conv2D(filters=2, kernel_size=3, dilation_rate=2, padding="same"),
              [(7, 6, 2)], {"kernel": _w(3, 3, 2, 2), "bias": _w(2, seed=2)}),
        _case("conv2d_groups", irops.Conv2D(filters=4, kernel_size=2, groups=2), [(5, 5, 4)],
              {"kernel": _w(2, 2, 2, 4), "bias": _w(4, seed=2)}),
        _case("conv1d", irops.Conv1D(filters=3, kernel_size=3, strides=2, padding="same"), [(9, 2)],
              {"kernel": _w(3, 2, 3), "bias": _w(3, seed=2)}),
        _case("depthwise_conv2d", irops.DepthwiseConv2D(kernel_size=3, depth_multiplier=2, padding="same",
                                                        strides=2), [(6, 5, 3)],
              {"kernel": _w(3, 3, 3, 2), "bias": _w(6, seed=2)}),
        _case("depthwise_conv1d", irops.DepthwiseConv1D(kernel_size=2, dilation_rate=2, use_bias=False), [(7, 3)],
              {"kernel": _w(2, 3, 1)}),
        _case("avg_pool1d", irops.AvgPool1D(pool_size=3, strides=2, padding="same"), [(8, 2)]),
        _case("max_pool1d", irops.MaxPool1D(pool_size=2, strides=2), [(8, 3)]),
        _case("global_avg_pool2d_keepdims", irops.GlobalAvgPool2D(keepdims=True), [(3, 4, 2)]),
        _case("global_max_pool2d", irops.GlobalMaxPool2D(), [(3, 3, 2)]),
        _case("global_avg_pool1d", irops.GlobalAvgPool1D(), [(5, 3)]),
        _case("global_max_pool1d_keepdims", irops.GlobalMaxPool1D(keepdims=True), [(5, 3)]),
        _case("upsample2d", irops.UpSample2D(size=(2, 3)), [(2, 3, 2)]),
        _case("upsample1d", irops.UpSample1D(size=2), [(4, 2)]),
        _case("pad", irops.Pad(pads=((1, 2), (0, 1), (0, 0))), [(3, 3, 2)]),
        _case("crop", irops.Crop(crops=((1, 0), (1, 2), (0, 0))), [(4, 5, 2)]),
        _case("transpose", irops.Transpose(perm=(2, 0, 1)), [(2, 3, 4)]),
        _case("repeat_vector", irops.RepeatVector(n=3), [(4,)]),
        _case("concat", irops.Concat(axis=0), [(2, 3), (4, 3)]),
        _case("subtract", irops.Subtract(), [(6,), (6,)]),
        _case("multiply", irops.Multiply(), [(6,), (6,), (6,)]),
        _case("multiply_gate", irops.Multiply(), [(1, 1, 3), (2, 3, 3)]),
        _case("average", irops.Average(), [(6,), (6,), (6,)]),
        _case("maximum", irops.Maximum(), [(6,), (6,), (6,)]),
        _case("minimum", irops.Minimum(), [(6,), (6,)]),
        _case("relu6", irops.Relu(max_value=6.0), [(12,)], scale=5.0),
        _case("leaky_relu", irops.Relu(negative_slope=0.3), [(12,)]),
        _case("relu_threshold", irops.Relu(negative_slope=0.1, threshold=0.5, max_value=2.0), [(12,)]),
        _case("prelu", irops.PRelu(), [(2, 3)], {"alpha": _w(1, 3, seed=4)}),
        _case("rescale", irops.Rescale(scale=1 / 127.5, offset=-1.0), [(6,)], scale=100.0),
        _case("rescale_channels", irops.Rescale(scale=(0.5, 2.0), offset=(0.1, -0.2)), [(3, 2)]),
        _case("softmax_axis", irops.Softmax(axis=0), [(4, 3)], scale=3.0),
        _case("batch_norm_axis", irops.BatchNorm(epsilon=1e-3, axis=0), [(4, 3)], bn),
        _case("elu", irops.Elu(alpha=0.5), [(12,)]),
        _case("gelu", irops.Gelu(), [(12,)]),
        _case("gelu_tanh", irops.Gelu(approximate=True), [(12,)]),
        _case("silu", irops.Silu(), [(12,)]),
        _case("hard_sigmoid", irops.HardSigmoid(), [(12,)], scale=3.0),
        _case("hard_silu", irops.HardSilu(), [(12,)], scale=3.0),
        _case("softplus", irops.Softplus(), [(12,)], scale=3.0),
        _case("softsign", irops.Softsign(), [(12,)], scale=4.0),
        *cases_attention.cases(),
        *cases_recurrent.cases(),
    ]
