"""One validator, run before any backend sees a Program.

Every error names the node or party at fault and what to do about it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bridge.ir.graph import Graph
from bridge.ir.placement import Role
from bridge.ir.program import Program
from bridge.ir.shapes import Shape, ShapeError, infer_shape


class IRValidationError(ValueError):
    """A Program is malformed; the message says where and how to fix it."""


def infer_value_shapes(graph: Graph) -> dict[str, Shape]:
    """Feature shape (no batch dim) of every value in the graph, checking each node."""
    shapes: dict[str, Shape] = {name: spec.feature_shape for name, spec in graph.inputs.items()}
    for node in graph.nodes:
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
    return shapes


def validate_graph(graph: Graph) -> dict[str, Shape]:
    names = [n.name for n in graph.nodes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise IRValidationError(f"duplicate node names {duplicates}; node names must be unique")
    shapes = infer_value_shapes(graph)
    for name, spec in graph.outputs.items():
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
    return shapes


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
        if value.shape != spec.shape:
            raise IRValidationError(f"parameter {name!r} must have shape {spec.shape}, received {value.shape}")
        if not np.all(np.isfinite(value)):
            raise IRValidationError(f"parameter {name!r} contains NaN or inf")
