"""One validator, run before any backend sees a Program.

Every error names the node or party at fault and what to do about it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from bridge.ir.graph import Graph, TensorSpec
from bridge.ir.placement import Placement, Role
from bridge.ir.program import Program
from bridge.ir.shapes import Shape, ShapeError, infer_shape
from bridge.ir.tokens import check_token_graph


class IRValidationError(ValueError):
    """A Program is malformed; the message says where and how to fix it."""


#: largest single dimension of any value or parameter
MAX_DIM = 2**31 - 1
#: largest element count of one example of a value, or of a parameter
MAX_ELEMENTS = 2**31
#: op attributes that count or step over elements: zero or negative ones are meaningless
#: (and a zero stride divides by zero in the shape rule)
POSITIVE_ATTRIBUTES = frozenset(
    {"units", "filters", "kernel_size", "pool_size", "strides", "dilation_rate", "size", "depth_multiplier"}
)


def _check_dims(where: str, dims: tuple, fix: str) -> None:
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_DIM:
            raise IRValidationError(
                f"{where} has shape {dims}; every dimension must be an integer from 1 to {MAX_DIM}, "
                f"received {d!r}. {fix}"
            )
    if math.prod(dims) > MAX_ELEMENTS:
        raise IRValidationError(f"{where} has shape {dims}, more than {MAX_ELEMENTS} elements. {fix}")


def _check_tensor_spec(where: str, spec: TensorSpec) -> None:
    """(batch, features...): batch None (free) or a size, every feature dimension positive."""
    if not spec.shape:
        raise IRValidationError(f"{where} has shape (); a value's shape starts with its batch dimension (None)")
    batch = spec.shape[0]
    if batch is not None and (isinstance(batch, bool) or not 1 <= batch <= MAX_DIM):
        raise IRValidationError(
            f"{where} has batch dimension {batch!r}; write None (any batch size) or a positive size"
        )
    _check_dims(where, tuple(spec.shape[1:]), "Give the shape as (None, d1, d2, ...) with positive sizes.")


def _check_op_attributes(node_name: str, op) -> None:
    """Attribute values the op's schema admits but no layer can mean (checked here, for every op kind)."""
    for attr, value in op:
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise IRValidationError(f"node {node_name!r} ({op.kind}) has {attr}={value!r}; it must be finite")
        if attr in POSITIVE_ATTRIBUTES and any(
            isinstance(v, int) and not isinstance(v, bool) and v < 1 for v in values
        ):
            raise IRValidationError(
                f"node {node_name!r} ({op.kind}) has {attr}={value!r}; every entry must be a positive integer"
            )
        if attr == "target_shape" and any(isinstance(v, int) and v < 1 and v != -1 for v in values):
            raise IRValidationError(
                f"node {node_name!r} ({op.kind}) has target_shape={value!r}; entries must be positive, "
                "or -1 (once) for the inferred one"
            )
        if attr == "target_shape" and any(isinstance(v, int) and v > MAX_DIM for v in values):
            raise IRValidationError(f"node {node_name!r} ({op.kind}) has target_shape={value!r}; entries are at most {MAX_DIM}")


def infer_value_shapes(graph: Graph) -> dict[str, Shape]:
    """Feature shape (no batch dim) of every value in the graph, checking each node."""
    for name, spec in graph.inputs.items():
        _check_tensor_spec(f"graph input {name!r}", spec)
    for name, spec in graph.outputs.items():
        _check_tensor_spec(f"graph output {name!r}", spec)
    for name, param in graph.parameters.items():
        _check_dims(f"parameter {name!r}", param.shape, "Declare the parameter with positive dimensions.")
    shapes: dict[str, Shape] = {name: spec.feature_shape for name, spec in graph.inputs.items()}
    for node in graph.nodes:
        _check_op_attributes(node.name, node.op)
        for value in node.inputs:
            if value not in shapes:
                raise IRValidationError(
                    f"node {node.name!r} reads value {value!r}, which no input or earlier node "
                    "produces (dangling value name); list nodes in topological order and check "
                    "the name"
                )
        if node.op.arity is not None and len(node.inputs) != node.op.arity:
            raise IRValidationError(
                f"node {node.name!r} ({node.op.kind}) takes {node.op.arity} input(s), "
                f"received {len(node.inputs)}"
            )
        expected_roles = set(node.op.param_roles)
        if set(node.params) != expected_roles:
            raise IRValidationError(
                f"node {node.name!r} ({node.op.kind}) needs parameters {sorted(expected_roles)}, "
                f"received {sorted(node.params)}"
            )
        for role, pname in node.params.items():
            if pname not in graph.parameters:
                raise IRValidationError(
                    f"node {node.name!r} uses parameter {pname!r} as its {role}, but the graph "
                    "declares no such parameter; add it to Graph.parameters"
                )
        if node.output in shapes:
            raise IRValidationError(
                f"node {node.name!r} writes value {node.output!r}, which already exists "
                "(duplicate value name); give the output a fresh name"
            )
        try:
            shapes[node.output] = infer_shape(
                node.op,
                [shapes[v] for v in node.inputs],
                {role: graph.parameters[p].shape for role, p in node.params.items()},
            )
        except ShapeError as exc:
            raise IRValidationError(f"shape mismatch at node {node.name!r} ({node.op.kind}): {exc}") from exc
        except Exception as exc:  # a shape rule that trips on input it did not expect
            raise IRValidationError(
                f"node {node.name!r} ({node.op.kind}) cannot take its inputs {[shapes[v] for v in node.inputs]}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        _check_dims(f"value {node.output!r} (written by node {node.name!r})", tuple(shapes[node.output]),
                    "Check the node's attributes.")
    return shapes


def validate_graph(graph: Graph) -> dict[str, Shape]:
    names = [n.name for n in graph.nodes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise IRValidationError(f"duplicate node names {duplicates}; node names must be unique")
    shapes = infer_value_shapes(graph)
    try:
        check_token_graph(graph)
    except ValueError as exc:
        raise IRValidationError(str(exc)) from exc
    for name, spec in graph.outputs.items():
        if spec.dtype == "int32":
            raise IRValidationError(f"graph output {name!r} is declared int32; outputs are real numbers")
        if name not in shapes:
            raise IRValidationError(f"graph output {name!r} is produced by no node (dangling value name)")
        if spec.feature_shape != shapes[name]:
            raise IRValidationError(
                f"graph output {name!r} is declared with shape (batch, {spec.feature_shape}) but "
                f"the graph computes (batch, {shapes[name]})"
            )
    return shapes


def validate_program(program: Program) -> dict[str, Shape]:
    """Check graph and placement together; returns every value's feature shape."""
    shapes = validate_graph(program.graph)
    placement = program.placement
    known = set(placement.names)
    for value, owner in placement.input_owners.items():
        if value not in program.graph.inputs:
            raise IRValidationError(f"placement names an owner for {value!r}, which is not a graph input")
        if owner not in known:
            raise IRValidationError(
                f"input {value!r} is owned by unknown party {owner!r}; known parties: {sorted(known)}"
            )
    for value in program.graph.inputs:
        if value not in placement.input_owners:
            raise IRValidationError(f"graph input {value!r} has no owner; add it to placement.input_owners")
    if program.graph.parameters and placement.param_owner not in known:
        raise IRValidationError(
            f"parameters are owned by unknown party {placement.param_owner!r}; known parties: "
            f"{sorted(known)}"
        )
    for value in program.graph.outputs:
        receivers = placement.output_receivers.get(value)
        if not receivers:
            raise IRValidationError(f"graph output {value!r} has no receiver; add it to placement.output_receivers")
        for party in receivers:
            if party not in known:
                raise IRValidationError(
                    f"output {value!r} goes to unknown party {party!r}; known parties: {sorted(known)}"
                )
    names = list(placement.names)
    if len(set(names)) != len(names):
        raise IRValidationError(f"party names must be unique, received {names}")
    if len(placement.with_role(Role.DEALER)) > 1:
        raise IRValidationError("a placement has at most one dealer")
    _check_dealer(program, placement)
    return shapes


def _check_dealer(program: Program, placement: Placement) -> None:
    """The dealer knows every party's correlated randomness, so it must hold nothing else.

    A dealer that computes could unmask its own shares (and the runtime cannot route
    a party's messages to itself); one that owns an input or the weights sits out the
    protocol state it is given; one that receives outputs sees single shares it can
    unmask with the randomness it dealt.
    """
    dealer = placement.dealer
    if dealer is None:
        return
    fix = "Give the dealer role to a party of its own that holds no other role."
    others = sorted(r.value for r in placement.party(dealer).roles if r is not Role.DEALER)
    if others:
        raise IRValidationError(
            f"party {dealer!r} is the dealer and also has roles {others}; the dealer knows every compute "
            f"party's correlated randomness, so it must hold no other role. {fix}"
        )
    owned = sorted(v for v, owner in placement.input_owners.items() if owner == dealer)
    if owned:
        raise IRValidationError(f"the dealer {dealer!r} owns inputs {owned}; the dealer owns no data. {fix}")
    if program.graph.parameters and placement.param_owner == dealer:
        raise IRValidationError(f"the dealer {dealer!r} owns the parameters; the dealer owns no data. {fix}")
    receives = sorted(v for v, parties in placement.output_receivers.items() if dealer in parties)
    if receives:
        raise IRValidationError(
            f"the dealer {dealer!r} receives outputs {receives}; output shares plus the dealer's randomness "
            f"reveal more than the output. {fix}"
        )


def validate_weights(program: Program, weights: Mapping[str, np.ndarray]) -> None:
    """Every declared parameter present, of the declared shape, finite."""
    params = program.graph.parameters
    missing = sorted(set(params) - set(weights))
    if missing:
        raise IRValidationError(f"weights are missing for parameters {missing}")
    extra = sorted(set(weights) - set(params))
    if extra:
        raise IRValidationError(f"weights given for undeclared parameters {extra}")
    for name, spec in params.items():
        value = np.asarray(weights[name])
        if value.dtype.kind not in "fiu":
            raise IRValidationError(
                f"parameter {name!r} has dtype {value.dtype}; weights are real numbers (float or integer arrays)"
            )
        if value.shape != spec.shape:
            raise IRValidationError(f"parameter {name!r} must have shape {spec.shape}, received {value.shape}")
        if not np.all(np.isfinite(value)):
            raise IRValidationError(f"parameter {name!r} contains NaN or inf")
