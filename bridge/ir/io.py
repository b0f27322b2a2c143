"""Save and load a Program: structure as JSON, weights as .npz (never pickled)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from bridge.ir.ops import OP_KINDS, OPSET_VERSION
from bridge.ir.program import SCHEMA_VERSION, Program
from bridge.ir.validate import IRValidationError, validate_program, validate_weights

Weights = dict[str, np.ndarray]

STRUCTURE_FILE = "program.json"
WEIGHTS_FILE = "weights.npz"


def save_program(directory: str | Path, program: Program, weights: Mapping[str, np.ndarray]) -> Path:
    """Write ``program.json`` and ``weights.npz`` into ``directory`` (created if needed)."""
    validate_program(program)
    validate_weights(program, weights)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / STRUCTURE_FILE).write_text(program.model_dump_json(indent=2))
    # npz keys cannot hold '/', which Keras weight paths use: store an index instead.
    names = sorted(weights)
    arrays = {f"w{i}": np.asarray(weights[n]) for i, n in enumerate(names)}
    arrays["__names__"] = np.array(names, dtype=np.str_)
    np.savez(out / WEIGHTS_FILE, **arrays)
    return out


def program_from_json(text: str) -> Program:
    """Parse a Program, refusing schema versions this library does not understand."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IRValidationError(f"program file is not valid JSON: {exc}") from exc
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise IRValidationError(
            f"program has schema_version {version!r}; this privacy-bridge reads version "
            f"{SCHEMA_VERSION}. Re-export the model with this version."
        )
    _check_op_kinds(raw)
    try:
        return Program.model_validate(raw)
    except ValidationError as exc:
        raise IRValidationError(f"program file does not match the IR schema:\n{exc}") from exc


def _check_op_kinds(raw: dict) -> None:
    """Name the node whose op this opset does not define (pydantic would give only its index)."""
    graph = raw.get("graph")
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    for node in nodes if isinstance(nodes, list) else []:
        op = node.get("op") if isinstance(node, dict) else None
        kind = op.get("kind") if isinstance(op, dict) else None
        if isinstance(kind, str) and kind not in OP_KINDS:
            raise IRValidationError(
                f"node {node.get('name')!r} uses op kind {kind!r}, which opset v{OPSET_VERSION} does not "
                f"define; known kinds: {list(OP_KINDS)}. Upgrade privacy-bridge or re-export the model "
                "with ops this version supports."
            )


def load_program(directory: str | Path) -> tuple[Program, Weights]:
    src = Path(directory)
    program = program_from_json((src / STRUCTURE_FILE).read_text())
    with np.load(src / WEIGHTS_FILE, allow_pickle=False) as data:
        names = [str(n) for n in data["__names__"]]
        weights = {n: data[f"w{i}"] for i, n in enumerate(names)}
    validate_program(program)
    validate_weights(program, weights)
    return program, weights
