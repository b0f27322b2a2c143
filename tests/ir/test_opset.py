"""Opset versions: programs record theirs, v1 programs still load, newer ones are refused by name;
serving-only ops are refused when training is prepared."""

from __future__ import annotations

import json

import pytest

from bridge.ir import Graph, Loss, Node, Placement, Program, SGDSpec, TensorSpec, TrainingSpec
from bridge.ir import ops as irops
from bridge.ir.io import program_from_json
from bridge.ir.validate import IRValidationError
from bridge.reference_train import TrainingRefused, loss_head


def _program(op: irops.Op, opset: int | None = None, **extra) -> Program:
    graph = Graph(
        inputs={"x": TensorSpec(shape=(None, 4))},
        outputs={"y": TensorSpec(shape=(None, 4))},
        nodes=(Node(name="act", op=op, inputs=("x",), output="y"),),
    )
    fields = {"graph": graph, "placement": Placement.default(["x"], ["y"]), **extra}
    if opset is not None:
        fields["opset_version"] = opset
    return Program(**fields)


def test_new_programs_record_the_current_opset():
    assert irops.OPSET_VERSION == 2
    assert _program(irops.Relu()).opset_version == 2
    assert json.loads(_program(irops.Relu()).model_dump_json())["opset_version"] == 2


def test_a_v1_program_file_still_loads_with_v1_meaning():
    raw = json.loads(_program(irops.Relu()).model_dump_json())
    raw["opset_version"] = 1
    # a v1 file knows nothing of the attributes v2 added: they take their v1 meaning
    raw["graph"]["nodes"][0]["op"] = {"kind": "relu"}
    program = program_from_json(json.dumps(raw))
    assert program.opset_version == 1
    assert program.graph.nodes[0].op.plain


def test_a_newer_opset_is_refused_with_what_to_do():
    raw = json.loads(_program(irops.Relu()).model_dump_json())
    raw["opset_version"] = 3
    with pytest.raises(IRValidationError, match=r"opset v3; this privacy-bridge reads opsets v1 to v2\. Upgrade"):
        program_from_json(json.dumps(raw))


def test_a_v1_program_using_a_v2_op_is_refused_by_node():
    raw = json.loads(_program(irops.Softsign()).model_dump_json())
    raw["opset_version"] = 1
    with pytest.raises(IRValidationError, match=r"node 'act' uses op 'softsign', which opset v2 introduced"):
        program_from_json(json.dumps(raw))


def test_every_v2_kind_is_dated_and_v1_kinds_are_unchanged():
    assert set(irops.SINCE) == set(irops.OP_KINDS)
    assert {k for k, v in irops.SINCE.items() if v == 1} == set(irops.V1_KINDS)
    assert len(irops.V1_KINDS) == 14


def test_serving_only_ops_are_refused_when_training_is_prepared(monkeypatch):
    """Whatever SERVING_ONLY holds is refused by loss_head, naming the layer (softsign is made
    serving-only here, so the check holds whichever kinds are left without backward rules)."""
    monkeypatch.setitem(irops.SERVING_ONLY, "softsign", "its backward rule is not written yet; encrypted serving only")
    spec = TrainingSpec(loss=Loss.MSE, optimizer=SGDSpec(learning_rate=0.1))
    program = _program(irops.Softsign(), training=spec)
    with pytest.raises(TrainingRefused, match=r"layer 'act' \(softsign\) cannot be trained encrypted: .*encrypted serving only"):
        loss_head(program)


@pytest.mark.parametrize("op", [irops.Softsign(), irops.Relu(max_value=6.0), irops.Softmax(axis=0)])
def test_v2_ops_and_options_with_backward_rules_train(op):
    spec = TrainingSpec(loss=Loss.MSE, optimizer=SGDSpec(learning_rate=0.1))
    assert loss_head(_program(op, training=spec)).output == "y"


def test_plain_v1_ops_are_still_trainable():
    spec = TrainingSpec(loss=Loss.MSE, optimizer=SGDSpec(learning_rate=0.1))
    assert loss_head(_program(irops.Relu(), training=spec)).output == "y"
