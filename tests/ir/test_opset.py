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


@pytest.mark.parametrize(
    ("op", "kind"),
    [(irops.Softsign(), "softsign"), (irops.Relu(max_value=6.0), "relu"), (irops.Softmax(axis=0), "softmax")],
)
def test_serving_only_ops_are_refused_when_training_is_prepared(op, kind):
    spec = TrainingSpec(loss=Loss.MSE, optimizer=SGDSpec(learning_rate=0.1))
    program = _program(op, training=spec)
    with pytest.raises(TrainingRefused, match=rf"layer 'act' \({kind}\) cannot be trained encrypted: .*encrypted serving only"):
        loss_head(program)


def test_plain_v1_ops_are_still_trainable():
    spec = TrainingSpec(loss=Loss.MSE, optimizer=SGDSpec(learning_rate=0.1))
    assert loss_head(_program(irops.Relu(), training=spec)).output == "y"
