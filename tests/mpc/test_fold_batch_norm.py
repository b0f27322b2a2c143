"""Serving folds inference BatchNormalization into the linear op before it (bridge/ir/fold.py):
the same answers as the literal program, fewer nodes and fewer range-checked values, and
nothing folded where another reader or a model output needs the linear op's own output."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.ir import Graph, Node, ParamSpec, PrivacyMode, Program, TensorSpec
from bridge.ir import ops as irops
from bridge.ir.fold import fold_batch_norm
from bridge.ir.validate import infer_value_shapes
from bridge.mpc.range_check import serving_check_plan
from bridge.reference import run_reference
from tests.distributed.models import placement

ATOL = 3e-3


def _bn(rng: np.random.Generator, name: str, channels: int) -> dict[str, np.ndarray]:
    return {
        f"{name}/gamma": rng.uniform(0.5, 1.5, channels), f"{name}/beta": rng.normal(size=channels) * 0.2,
        f"{name}/moving_mean": rng.normal(size=channels) * 0.3,
        f"{name}/moving_variance": rng.uniform(0.5, 2.0, channels),
    }


def _bn_node(name: str, x: str, out: str) -> Node:
    roles = ("gamma", "beta", "moving_mean", "moving_variance")
    return Node(name=name, op=irops.BatchNorm(epsilon=1e-3), inputs=(x,), output=out,
                params={r: f"{name}/{r}" for r in roles})


def conv_bn_model(shared_conv_output: bool = False) -> tuple[Program, dict[str, np.ndarray]]:
    """x (6, 6, 2) -> conv 3x3 (4, no bias) -> BN -> relu -> flatten -> dense 5 -> BN -> y.
    ``shared_conv_output``: the conv's output also feeds an Add after the ReLU."""
    rng = np.random.default_rng(3)
    weights = {"c/kernel": rng.normal(size=(3, 3, 2, 4)) * 0.4, "d/kernel": rng.normal(size=(64, 5)) * 0.2,
               "d/bias": rng.normal(size=5) * 0.1, **_bn(rng, "bn0", 4), **_bn(rng, "bn1", 5)}
    nodes = [
        Node(name="c", op=irops.Conv2D(filters=4, kernel_size=3, use_bias=False), inputs=("x",), output="h",
             params={"kernel": "c/kernel"}),
        _bn_node("bn0", "h", "hn"),
        Node(name="r", op=irops.Relu(), inputs=("hn",), output="a"),
    ]
    if shared_conv_output:
        nodes.append(Node(name="sum", op=irops.Add(), inputs=("a", "h"), output="a2"))
    nodes += [
        Node(name="f", op=irops.Flatten(), inputs=("a2" if shared_conv_output else "a",), output="v"),
        Node(name="d", op=irops.Dense(units=5), inputs=("v",), output="z", params={"kernel": "d/kernel",
                                                                                 "bias": "d/bias"}),
        _bn_node("bn1", "z", "y"),
    ]
    graph = Graph(inputs={"x": TensorSpec(shape=(None, 6, 6, 2))}, outputs={"y": TensorSpec(shape=(None, 5))},
                  parameters={n: ParamSpec(shape=w.shape) for n, w in weights.items()}, nodes=tuple(nodes))
    program = Program(name="conv_bn", graph=graph, placement=placement(["x"], ["y"]),
                      privacy=PrivacyMode.ENCRYPTED_SERVING)
    return program, weights


def _checked_values(program: Program, plan) -> int:
    shapes = infer_value_shapes(program.graph)
    return sum(int(np.prod(shapes[e.value])) for e in plan.entries)


def _query() -> np.ndarray:
    return np.random.default_rng(7).uniform(-1.0, 1.0, size=(3, 6, 6, 2))


def test_folded_weights_are_the_hand_computation():
    program, weights = conv_bn_model()
    folded, fw = fold_batch_norm(program, weights)
    assert fw is not None
    assert [n.name for n in folded.graph.nodes] == ["c", "r", "f", "d"]
    conv, dense = folded.graph.node("c"), folded.graph.node("d")
    assert conv.output == "hn" and conv.op.use_bias and dense.output == "y"
    scale0 = weights["bn0/gamma"] / np.sqrt(weights["bn0/moving_variance"] + 1e-3)
    np.testing.assert_allclose(fw["c/kernel"], weights["c/kernel"] * scale0, rtol=1e-12)
    np.testing.assert_allclose(fw[conv.params["bias"]], weights["bn0/beta"] - weights["bn0/moving_mean"] * scale0,
                               rtol=1e-12)
    scale1 = weights["bn1/gamma"] / np.sqrt(weights["bn1/moving_variance"] + 1e-3)
    np.testing.assert_allclose(fw["d/kernel"], weights["d/kernel"] * scale1, rtol=1e-12)
    np.testing.assert_allclose(
        fw["d/bias"], (weights["d/bias"] - weights["bn1/moving_mean"]) * scale1 + weights["bn1/beta"], rtol=1e-12)
    # the batch norms' parameters are gone, a bias was declared for the conv
    assert set(folded.graph.parameters) == set(fw) == {"c/kernel", conv.params["bias"], "d/kernel", "d/bias"}
    # the plaintext reference of the folded program is the literal program's answer
    x = _query()
    np.testing.assert_allclose(run_reference(folded, fw, {"x": x})["y"], run_reference(program, weights, {"x": x})["y"],
                               atol=1e-9)
    # the parties without weights derive the same structure
    assert fold_batch_norm(program, None)[0] == folded


def test_depthwise_kernel_scales_channel_times_multiplier():
    rng = np.random.default_rng(5)
    weights = {"dw/kernel": rng.normal(size=(3, 3, 2, 3)), "dw/bias": rng.normal(size=6), **_bn(rng, "bn", 6)}
    graph = Graph(inputs={"x": TensorSpec(shape=(None, 5, 5, 2))}, outputs={"y": TensorSpec(shape=(None, 3, 3, 6))},
                  parameters={n: ParamSpec(shape=w.shape) for n, w in weights.items()},
                  nodes=(Node(name="dw", op=irops.DepthwiseConv2D(kernel_size=3, depth_multiplier=3), inputs=("x",),
                              output="h", params={"kernel": "dw/kernel", "bias": "dw/bias"}),
                         _bn_node("bn", "h", "y")))
    program = Program(graph=graph, placement=placement(["x"], ["y"]), privacy=PrivacyMode.ENCRYPTED_SERVING)
    folded, fw = fold_batch_norm(program, weights)
    scale = weights["bn/gamma"] / np.sqrt(weights["bn/moving_variance"] + 1e-3)
    np.testing.assert_allclose(fw["dw/kernel"][:, :, 1, 2], weights["dw/kernel"][:, :, 1, 2] * scale[1 * 3 + 2])
    x = rng.uniform(-1, 1, size=(2, 5, 5, 2))
    np.testing.assert_allclose(run_reference(folded, fw, {"x": x})["y"], run_reference(program, weights, {"x": x})["y"],
                               atol=1e-9)


def test_a_conv_output_with_two_readers_or_a_model_output_is_not_folded():
    program, weights = conv_bn_model(shared_conv_output=True)
    folded, fw = fold_batch_norm(program, weights)
    names = [n.name for n in folded.graph.nodes]
    assert "bn0" in names and "bn1" not in names  # the conv's output h is read by bn0 and the Add
    np.testing.assert_array_equal(fw["c/kernel"], weights["c/kernel"])
    # a linear op whose output is a model output keeps its batch norm too
    graph = program.graph.model_copy(update={"outputs": {**program.graph.outputs, "z": TensorSpec(shape=(None, 5))}})
    exposed = program.model_copy(update={"graph": graph, "placement": placement(["x"], ["y", "z"])})
    assert "bn1" in [n.name for n in fold_batch_norm(exposed, weights)[0].graph.nodes]


def test_training_keeps_its_batch_norms(secure_backend):
    """Only serving folds: encrypted training runs the program as written (frozen batch norm)."""
    from bridge.ir import Loss, SGDSpec, TrainingSpec

    program, weights = conv_bn_model()
    frozen = {n: (s.model_copy(update={"trainable": False}) if n.startswith("bn") else s)
              for n, s in program.graph.parameters.items()}
    program = program.model_copy(update={
        "graph": program.graph.model_copy(update={"parameters": frozen}),
        "privacy": PrivacyMode.ENCRYPTED_TRAINING,
        "training": TrainingSpec(loss=Loss.MSE, optimizer=SGDSpec(learning_rate=0.1), batch_size=2)})
    executable = secure_backend.prepare_training(program, weights)
    try:
        assert [n.name for n in executable.program.graph.nodes] == ["c", "bn0", "r", "f", "d", "bn1"]
    finally:
        getattr(executable, "close", lambda: None)()


@pytest.mark.parametrize("shared", [False, True], ids=["folded", "conv-read-twice"])
def test_serving_answers_the_literal_program_with_fewer_checked_values(secure_backend, shared):
    program, weights = conv_bn_model(shared_conv_output=shared)
    literal_plan = serving_check_plan(program)
    executable = secure_backend.prepare(program, weights)
    try:
        x = _query()
        got = executable.run({"x": x}).outputs["y"]
        np.testing.assert_allclose(got, run_reference(program, weights, {"x": x})["y"], atol=ATOL)
        plan = executable.check_plan
        if shared:  # only the dense's batch norm folds: its check (the model output) stays, z's goes
            assert len(executable.program.graph.nodes) == len(program.graph.nodes) - 1
            assert [e.layer for e in literal_plan.entries] == ["c", "bn0", "sum", "d", "bn1"]
            assert [e.layer for e in plan.entries] == ["c", "bn0", "sum", "d"]
        else:
            assert len(executable.program.graph.nodes) == len(program.graph.nodes) - 2
            # literal: conv, bn0, dense, bn1 are checked; folded: the conv (its |x| from the ReLU)
            # and the dense. Per row: 4x4x4 + 4x4x4 + 5 + 5 = 138 values, then 64 + 5 = 69
            assert [e.layer for e in literal_plan.entries] == ["c", "bn0", "d", "bn1"]
            assert [e.layer for e in plan.entries] == ["c", "d"]
            assert _checked_values(program, literal_plan) == 138 and _checked_values(executable.program, plan) == 69
            assert plan.entries[0].rectified == "a" and literal_plan.entries[0].rectified is None
    finally:
        executable.close()
