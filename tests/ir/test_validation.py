"""Every validation error, each naming the node, value, parameter or party at fault."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bridge.ir import (
    Graph,
    IRValidationError,
    Node,
    ParamSpec,
    Placement,
    Program,
    TensorSpec,
    load_program,
    program_from_json,
    save_program,
    validate_program,
    validate_weights,
)
from bridge.ir import ops as irops
from bridge.ir.io import STRUCTURE_FILE


def tiny_program(nodes: tuple[Node, ...] | None = None, **graph_changes) -> tuple[Program, dict[str, np.ndarray]]:
    """x (batch, 4) -> dense 'fc' (3 units) -> relu 'act' -> y."""
    nodes = nodes or (
        Node(name="fc", op=irops.Dense(units=3), inputs=("x",), output="h",
             params={"kernel": "fc/kernel", "bias": "fc/bias"}),
        Node(name="act", op=irops.Relu(), inputs=("h",), output="y"),
    )
    graph = Graph(
        inputs={"x": TensorSpec(shape=(None, 4))},
        outputs={"y": TensorSpec(shape=(None, 3))},
        parameters={"fc/kernel": ParamSpec(shape=(4, 3)), "fc/bias": ParamSpec(shape=(3,))},
        nodes=nodes,
    ).model_copy(update=graph_changes)
    program = Program(graph=graph, placement=Placement.default(["x"], ["y"]))
    rng = np.random.default_rng(0)
    weights = {"fc/kernel": rng.normal(size=(4, 3)).astype(np.float32), "fc/bias": np.ones(3, np.float32)}
    return program, weights


def _with_placement(program: Program, **changes) -> Program:
    return program.model_copy(update={"placement": program.placement.model_copy(update=changes)})


def test_the_tiny_program_is_valid():
    program, weights = tiny_program()
    assert validate_program(program) == {"x": (4,), "h": (3,), "y": (3,)}
    validate_weights(program, weights)


def test_unknown_op_kind_in_json_names_the_node_and_the_kind():
    program, _ = tiny_program()
    raw = json.loads(program.model_dump_json())
    raw["graph"]["nodes"][1]["op"] = {"kind": "leaky_relu", "alpha": 0.1}
    with pytest.raises(IRValidationError, match=r"node 'act' uses op kind 'leaky_relu', which opset v2 does not"):
        program_from_json(json.dumps(raw))


def test_unknown_op_attribute_in_json_is_refused():
    program, _ = tiny_program()
    raw = json.loads(program.model_dump_json())
    raw["graph"]["nodes"][0]["op"]["dilation"] = 2
    with pytest.raises(IRValidationError, match=r"does not match the IR schema(.|\n)*graph\.nodes\.0\.op\.dense\.dilation"):
        program_from_json(json.dumps(raw))


def test_dangling_value_names_the_reading_node():
    program, _ = tiny_program(
        nodes=(
            Node(name="fc", op=irops.Dense(units=3), inputs=("x",), output="h",
                 params={"kernel": "fc/kernel", "bias": "fc/bias"}),
            Node(name="act", op=irops.Relu(), inputs=("hh",), output="y"),
        )
    )
    with pytest.raises(IRValidationError, match=r"node 'act' reads value 'hh', which no input or earlier node"):
        validate_program(program)


def test_output_that_no_node_produces_is_dangling():
    program, _ = tiny_program(outputs={"z": TensorSpec(shape=(None, 3))})
    with pytest.raises(IRValidationError, match=r"graph output 'z' is produced by no node"):
        validate_program(program)


@pytest.mark.parametrize("clash", ["h", "x"])
def test_duplicate_value_name_names_the_writing_node(clash):
    program, _ = tiny_program(
        nodes=(
            Node(name="fc", op=irops.Dense(units=3), inputs=("x",), output="h",
                 params={"kernel": "fc/kernel", "bias": "fc/bias"}),
            Node(name="act", op=irops.Relu(), inputs=("h",), output="y"),
            Node(name="again", op=irops.Identity(), inputs=("y",), output=clash),
        )
    )
    with pytest.raises(IRValidationError, match=rf"node 'again' writes value '{clash}', which already exists"):
        validate_program(program)


def test_duplicate_node_names_are_listed():
    program, _ = tiny_program(
        nodes=(
            Node(name="fc", op=irops.Dense(units=3), inputs=("x",), output="h",
                 params={"kernel": "fc/kernel", "bias": "fc/bias"}),
            Node(name="fc", op=irops.Relu(), inputs=("h",), output="y"),
        )
    )
    with pytest.raises(IRValidationError, match=r"duplicate node names \['fc'\]"):
        validate_program(program)


def test_shape_mismatch_between_connected_nodes_names_the_consumer():
    # fc makes 3 features, fc2's kernel expects 5.
    program, _ = tiny_program(
        nodes=(
            Node(name="fc", op=irops.Dense(units=3), inputs=("x",), output="h",
                 params={"kernel": "fc/kernel", "bias": "fc/bias"}),
            Node(name="fc2", op=irops.Dense(units=3, use_bias=False), inputs=("h",), output="y",
                 params={"kernel": "fc2/kernel"}),
        ),
        parameters={"fc/kernel": ParamSpec(shape=(4, 3)), "fc/bias": ParamSpec(shape=(3,)),
                    "fc2/kernel": ParamSpec(shape=(5, 3))},
    )
    with pytest.raises(IRValidationError, match=r"shape mismatch at node 'fc2' \(dense\): dense kernel must be \(3, 3\), received \(5, 3\)"):
        validate_program(program)


def test_add_of_different_shapes_names_the_node():
    program, _ = tiny_program(
        nodes=(
            Node(name="fc", op=irops.Dense(units=3), inputs=("x",), output="h",
                 params={"kernel": "fc/kernel", "bias": "fc/bias"}),
            Node(name="sum", op=irops.Add(), inputs=("h", "x"), output="y"),
        )
    )
    with pytest.raises(IRValidationError, match=r"shape mismatch at node 'sum' \(add\): add inputs must share one shape"):
        validate_program(program)


def test_declared_output_shape_must_match_the_graph():
    program, _ = tiny_program(outputs={"y": TensorSpec(shape=(None, 4))})
    with pytest.raises(IRValidationError, match=r"graph output 'y' is declared with shape \(batch, \(4,\)\) but the graph computes \(batch, \(3,\)\)"):
        validate_program(program)


def test_wrong_arity_and_wrong_parameter_roles_name_the_node():
    program, _ = tiny_program(
        nodes=(
            Node(name="fc", op=irops.Dense(units=3), inputs=("x",), output="h",
                 params={"kernel": "fc/kernel", "bias": "fc/bias"}),
            Node(name="act", op=irops.Relu(), inputs=("h", "h"), output="y"),
        )
    )
    with pytest.raises(IRValidationError, match=r"node 'act' \(relu\) takes 1 input\(s\), received 2"):
        validate_program(program)
    program, _ = tiny_program(
        nodes=(
            Node(name="fc", op=irops.Dense(units=3), inputs=("x",), output="h", params={"kernel": "fc/kernel"}),
            Node(name="act", op=irops.Relu(), inputs=("h",), output="y"),
        )
    )
    with pytest.raises(IRValidationError, match=r"node 'fc' \(dense\) needs parameters \['bias', 'kernel'\], received \['kernel'\]"):
        validate_program(program)


def test_parameter_that_the_graph_does_not_declare_names_node_and_parameter():
    program, _ = tiny_program(parameters={"fc/kernel": ParamSpec(shape=(4, 3))})
    with pytest.raises(IRValidationError, match=r"node 'fc' uses parameter 'fc/bias' as its bias, but the graph declares no such parameter"):
        validate_program(program)


def test_parameters_owned_by_an_unknown_party():
    program, _ = tiny_program()
    program = _with_placement(program, param_owner="mallory")
    with pytest.raises(IRValidationError, match=r"parameters are owned by unknown party 'mallory'; known parties: \["):
        validate_program(program)


def test_input_owned_by_an_unknown_party_and_input_without_owner():
    program, _ = tiny_program()
    with pytest.raises(IRValidationError, match=r"input 'x' is owned by unknown party 'eve'"):
        validate_program(_with_placement(program, input_owners={"x": "eve"}))
    with pytest.raises(IRValidationError, match=r"graph input 'x' has no owner"):
        validate_program(_with_placement(program, input_owners={}))
    with pytest.raises(IRValidationError, match=r"placement names an owner for 'q', which is not a graph input"):
        validate_program(_with_placement(program, input_owners={"x": "client", "q": "client"}))


def test_output_for_an_unknown_party_and_output_without_receiver():
    program, _ = tiny_program()
    with pytest.raises(IRValidationError, match=r"output 'y' goes to unknown party 'eve'"):
        validate_program(_with_placement(program, output_receivers={"y": ("client", "eve")}))
    with pytest.raises(IRValidationError, match=r"graph output 'y' has no receiver"):
        validate_program(_with_placement(program, output_receivers={}))


def test_duplicate_party_names_are_refused():
    program, _ = tiny_program()
    parties = program.placement.parties
    with pytest.raises(IRValidationError, match=r"party names must be unique"):
        validate_program(_with_placement(program, parties=(*parties, parties[0])))


def test_missing_extra_misshapen_and_non_finite_weights_name_the_parameter():
    program, weights = tiny_program()
    with pytest.raises(IRValidationError, match=r"weights are missing for parameters \['fc/bias'\]"):
        validate_weights(program, {"fc/kernel": weights["fc/kernel"]})
    with pytest.raises(IRValidationError, match=r"weights given for undeclared parameters \['fc/extra'\]"):
        validate_weights(program, {**weights, "fc/extra": np.zeros(1)})
    with pytest.raises(IRValidationError, match=r"parameter 'fc/kernel' must have shape \(4, 3\), received \(3, 4\)"):
        validate_weights(program, {**weights, "fc/kernel": weights["fc/kernel"].T})
    bad = weights["fc/bias"].copy()
    bad[1] = np.nan
    with pytest.raises(IRValidationError, match=r"parameter 'fc/bias' contains NaN or inf"):
        validate_weights(program, {**weights, "fc/bias": bad})


def test_save_refuses_missing_weights(tmp_path):
    program, weights = tiny_program()
    with pytest.raises(IRValidationError, match=r"weights are missing for parameters \['fc/kernel'\]"):
        save_program(tmp_path, program, {"fc/bias": weights["fc/bias"]})
    assert not (tmp_path / STRUCTURE_FILE).exists()


@pytest.mark.parametrize("version", [2, 0, None, "1"])
def test_schema_version_mismatch_is_refused_on_load(tmp_path, version):
    program, weights = tiny_program()
    save_program(tmp_path, program, weights)
    raw = json.loads((tmp_path / STRUCTURE_FILE).read_text())
    if version is None:
        del raw["schema_version"]
    else:
        raw["schema_version"] = version
    (tmp_path / STRUCTURE_FILE).write_text(json.dumps(raw))
    with pytest.raises(IRValidationError, match=rf"program has schema_version {version!r}; this privacy-bridge reads version 1"):
        load_program(tmp_path)


def test_program_file_that_is_not_json_is_refused():
    with pytest.raises(IRValidationError, match=r"program file is not valid JSON"):
        program_from_json("{not json")


# -- issue 12, finding 6: every malformed program is an IRValidationError naming the problem ------

def _with_parties(program: Program, roles: dict[str, frozenset]) -> Program:
    from bridge.ir import Party

    parties = tuple(Party(name=n, roles=r) for n, r in roles.items())
    return _with_placement(program, parties=parties)


def _default_roles() -> dict:
    from bridge.ir import Role

    return {"model_owner": frozenset({Role.MODEL_OWNER}), "client": frozenset({Role.DATA_OWNER, Role.CLIENT}),
            "server0": frozenset({Role.COMPUTE}), "server1": frozenset({Role.COMPUTE}),
            "dealer": frozenset({Role.DEALER})}


def test_a_dealer_that_is_also_a_compute_party_is_refused():
    # It loaded, then failed at run time with "addressed unknown party" (a party cannot message itself).
    from bridge.ir import Role

    program, _ = tiny_program()
    roles = _default_roles()
    del roles["dealer"]
    roles["server1"] = frozenset({Role.COMPUTE, Role.DEALER})
    with pytest.raises(IRValidationError, match=r"party 'server1' is the dealer and also has roles \['compute'\]; "
                                                r"the dealer knows every compute party's correlated randomness"):
        validate_program(_with_parties(program, roles))


@pytest.mark.parametrize("extra", ["model_owner", "data_owner", "client"])
def test_a_dealer_holds_no_other_role(extra):
    from bridge.ir import Role

    program, _ = tiny_program()
    roles = _default_roles()
    roles["dealer"] = frozenset({Role.DEALER, Role(extra)})
    with pytest.raises(IRValidationError, match=rf"party 'dealer' is the dealer and also has roles \['{extra}'\]"):
        validate_program(_with_parties(program, roles))


def test_a_dealer_owns_no_input_no_parameters_and_receives_no_output():
    program, _ = tiny_program()
    with pytest.raises(IRValidationError, match=r"the dealer 'dealer' owns inputs \['x'\]; the dealer owns no data"):
        validate_program(_with_placement(program, input_owners={"x": "dealer"}))
    with pytest.raises(IRValidationError, match=r"the dealer 'dealer' owns the parameters"):
        validate_program(_with_placement(program, param_owner="dealer"))
    with pytest.raises(IRValidationError, match=r"the dealer 'dealer' receives outputs \['y'\]"):
        validate_program(_with_placement(program, output_receivers={"y": ("client", "dealer")}))


def test_compute_parties_may_also_own_data_and_receive_outputs():
    # The three-process layout of the distributed tests stays valid.
    from bridge.ir import Role

    program, _ = tiny_program()
    roles = {"server0": frozenset({Role.COMPUTE, Role.MODEL_OWNER}),
             "server1": frozenset({Role.COMPUTE, Role.DATA_OWNER, Role.CLIENT}), "dealer": frozenset({Role.DEALER})}
    placement = program.placement.model_copy(update={
        "parties": _with_parties(program, roles).placement.parties, "input_owners": {"x": "server1"},
        "param_owner": "server0", "output_receivers": {"y": ("server1",)}})
    assert validate_program(program.model_copy(update={"placement": placement}))["y"] == (3,)


def tiny_cnn(op: irops.Op, in_shape: tuple[int, ...] = (5, 5, 2)) -> Program:
    """x (batch, *in_shape) -> one parameter-free op -> y, output shape whatever the rule says."""
    graph = Graph(inputs={"x": TensorSpec(shape=(None, *in_shape))}, outputs={"y": TensorSpec(shape=(None, 1))},
                  nodes=(Node(name="op", op=op, inputs=("x",), output="y"),))
    return Program(graph=graph, placement=Placement.default(["x"], ["y"]))


@pytest.mark.parametrize(
    ("op", "attr"),
    [
        (irops.MaxPool2D(pool_size=(2, 2), strides=(0, 1)), r"strides=\(0, 1\)"),  # was ZeroDivisionError
        (irops.AvgPool2D(pool_size=(2, 2), strides=(1, 0), padding="same"), r"strides=\(1, 0\)"),
        (irops.MaxPool2D(pool_size=(0, 2), strides=(1, 1)), r"pool_size=\(0, 2\)"),  # was accepted
        (irops.AvgPool2D(pool_size=(-1, 2), strides=(1, 1)), r"pool_size=\(-1, 2\)"),
    ],
)
def test_windows_and_strides_must_be_positive(op, attr):
    with pytest.raises(IRValidationError, match=rf"node 'op' \({op.kind}\) has {attr}; every entry must be a positive integer"):
        validate_program(tiny_cnn(op))


def test_conv_kernel_sizes_must_be_positive():
    program, _ = tiny_program(
        nodes=(Node(name="conv", op=irops.Conv2D(filters=3, kernel_size=(0, 1)), inputs=("x",), output="y",
                    params={"kernel": "k", "bias": "b"}),),
        inputs={"x": TensorSpec(shape=(None, 4, 4, 1))}, outputs={"y": TensorSpec(shape=(None, 5, 4, 3))},
        parameters={"k": ParamSpec(shape=(1, 1, 1, 3)), "b": ParamSpec(shape=(3,))},
    )
    with pytest.raises(IRValidationError, match=r"node 'conv' \(conv2d\) has kernel_size=\(0, 1\)"):
        validate_program(program)


def test_reshape_targets_are_positive_or_one_minus_one():
    # (-2, -3) multiplies to 6 and was accepted for a 6-value input.
    with pytest.raises(IRValidationError, match=r"has target_shape=\(-2, -3\); entries must be positive, or -1"):
        validate_program(tiny_cnn(irops.Reshape(target_shape=(-2, -3)), in_shape=(6,)))


@pytest.mark.parametrize(
    ("shape", "shown"),
    [((None, None), r"\(None,\)"), ((None, -3), r"\(-3,\)"), ((None, 0), r"\(0,\)"), ((None, 2**40), r"\(1099511627776,\)")],
)
def test_input_dimensions_are_positive_bounded_integers(shape, shown):
    # None used to raise TypeError in feature_shape; -3 and 0 were accepted.
    program, _ = tiny_program(inputs={"x": TensorSpec(shape=shape)})
    with pytest.raises(IRValidationError, match=rf"graph input 'x' has shape {shown}; every dimension must be an integer from 1 to"):
        validate_program(program)


def test_a_dimension_too_large_for_float_math_is_refused_before_the_shape_rule():
    # 'same' padding computes ceil(size / stride) in floats: OverflowError for 10**309.
    with pytest.raises(IRValidationError, match=r"graph input 'x' has shape \(10{309}, 4, 1\)"):
        validate_program(tiny_cnn(irops.MaxPool2D(pool_size=(2, 2), strides=(2, 2), padding="same"),
                                  in_shape=(10**309, 4, 1)))


def test_a_value_with_too_many_elements_is_refused():
    with pytest.raises(IRValidationError, match=r"graph input 'x' has shape \(65536, 65536, 2\), more than 2147483648 elements"):
        validate_program(tiny_cnn(irops.Flatten(), in_shape=(2**16, 2**16, 2)))


def test_a_shape_rule_that_raises_another_type_is_wrapped_with_the_node(monkeypatch):
    # Rules index, divide and multiply attributes; whatever they trip on must not escape as
    # ZeroDivisionError / IndexError / TypeError (the loaders promise IRValidationError only).
    from bridge.ir import shapes

    def trips(op, xs, ps):
        return xs[0][5]

    monkeypatch.setitem(shapes.SHAPE_RULES, "relu", trips)
    program, _ = tiny_program()
    with pytest.raises(IRValidationError, match=r"node 'act' \(relu\) cannot take its inputs \[\(3,\)\]: IndexError"):
        validate_program(program)


def test_non_finite_op_attributes_are_refused():
    with pytest.raises(IRValidationError, match=r"node 'op' \(batch_norm\) has epsilon=inf; it must be finite"):
        program, _ = tiny_program(
            nodes=(Node(name="op", op=irops.BatchNorm(epsilon=float("inf")), inputs=("x",), output="y",
                        params={r: f"p/{r}" for r in ("gamma", "beta", "moving_mean", "moving_variance")}),),
            outputs={"y": TensorSpec(shape=(None, 4))},
            parameters={f"p/{r}": ParamSpec(shape=(4,)) for r in ("gamma", "beta", "moving_mean", "moving_variance")},
        )
        validate_program(program)


def test_parameters_of_zero_or_negative_size_and_object_weights_are_refused():
    program, weights = tiny_program(parameters={"fc/kernel": ParamSpec(shape=(4, 3)), "fc/bias": ParamSpec(shape=(0,))})
    with pytest.raises(IRValidationError, match=r"parameter 'fc/bias' has shape \(0,\); every dimension must be"):
        validate_program(program)
    program, weights = tiny_program()
    with pytest.raises(IRValidationError, match=r"parameter 'fc/bias' has dtype object; weights are real numbers"):
        validate_weights(program, {**weights, "fc/bias": np.array([1, "a", None], dtype=object)})
