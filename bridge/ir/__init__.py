"""The protocol-neutral IR: what a model computes and who holds what."""

from bridge.ir import ops
from bridge.ir.graph import Graph, Node, ParamSpec, TensorSpec
from bridge.ir.io import Weights, load_program, program_from_json, save_program
from bridge.ir.ops import OPSET_VERSION, Op
from bridge.ir.placement import Party, Placement, Role
from bridge.ir.program import (
    SCHEMA_VERSION,
    AdamSpec,
    Loss,
    Numerics,
    PrivacyMode,
    Program,
    RMSpropSpec,
    SGDSpec,
    TrainingSpec,
)
from bridge.ir.shapes import ShapeError, infer_shape
from bridge.ir.validate import IRValidationError, validate_graph, validate_program, validate_weights

__all__ = [
    "AdamSpec",
    "OPSET_VERSION",
    "SCHEMA_VERSION",
    "Graph",
    "IRValidationError",
    "Loss",
    "Node",
    "Numerics",
    "Op",
    "ParamSpec",
    "Party",
    "Placement",
    "PrivacyMode",
    "Program",
    "RMSpropSpec",
    "Role",
    "SGDSpec",
    "ShapeError",
    "TensorSpec",
    "TrainingSpec",
    "Weights",
    "infer_shape",
    "load_program",
    "ops",
    "program_from_json",
    "save_program",
    "validate_graph",
    "validate_program",
    "validate_weights",
]
