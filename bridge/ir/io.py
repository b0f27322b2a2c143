"""Save and load a Program: structure as JSON, weights as .npz (never pickled).

Loading treats both files as untrusted: every malformed file ends in an
``IRValidationError`` that names what is wrong, never another exception type, and
nothing is allocated beyond what the files' own sizes justify (see ``bridge.ir.npz``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydantic import ValidationError

from bridge.ir.graph import Node
from bridge.ir.npz import read_weights
from bridge.ir.ops import OP_KINDS, OPSET_VERSION
from bridge.ir.program import SCHEMA_VERSION, Program
from bridge.ir.validate import IRValidationError, validate_program, validate_weights

Weights = dict[str, np.ndarray]

STRUCTURE_FILE = "program.json"
WEIGHTS_FILE = "weights.npz"

#: a program.json describes structure only; real ones are kilobytes
MAX_PROGRAM_BYTES = 64 * 2**20
#: real programs nest about 8 levels (program > graph > nodes > node > op > attribute > list)
MAX_JSON_DEPTH = 32
#: every number in a program is a shape, count, or setting; 2^53 keeps them exact as floats too
MAX_JSON_INT = 2**53
_MAX_INT_DIGITS = len(str(MAX_JSON_INT))


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


class _JsonLimit(ValueError):
    """A number in the program file is outside what a program can mean."""


def _parse_int(text: str) -> int:
    # Checked before int(): Python refuses > 4300 digits with a ValueError that names sys internals.
    digits = text.lstrip("-")
    if len(digits) > _MAX_INT_DIGITS or abs(int(text)) > MAX_JSON_INT:
        shown = text if len(text) <= 24 else f"{text[:12]}...({len(digits)} digits)"
        raise _JsonLimit(f"integer {shown} is out of range; program integers are at most 2^53 in magnitude")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _JsonLimit(f"number {text[:24]} overflows a float; program numbers must be finite")
    return value


def _refuse_constant(name: str) -> float:
    raise _JsonLimit(f"{name} is not a number a program may hold; program numbers must be finite")


def _check_depth(raw: Any) -> None:
    """Iteratively, so that checking a deep document cannot itself recurse too deep."""
    stack = [(raw, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise IRValidationError(
                f"program file nests deeper than {MAX_JSON_DEPTH} levels; a program needs about 8. "
                "The file is corrupt or crafted; re-export the model."
            )
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def program_from_json(text: str | bytes) -> Program:
    """Parse a Program, refusing schema versions this library does not understand.

    Only structure is checked here; ``validate_program`` checks shapes and placement.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise IRValidationError(f"program file is not UTF-8 text: {exc}") from exc
    if len(text) > MAX_PROGRAM_BYTES:
        raise IRValidationError(
            f"program file has {len(text)} characters; a program file holds structure only and is at most "
            f"{MAX_PROGRAM_BYTES} (weights go in {WEIGHTS_FILE})"
        )
    try:
        raw = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_refuse_constant)
    except _JsonLimit as exc:
        raise IRValidationError(f"program file holds a bad number: {exc}") from exc
    except RecursionError as exc:
        raise IRValidationError(
            f"program file nests deeper than Python can parse; a program needs about 8 levels "
            f"(at most {MAX_JSON_DEPTH} are accepted). The file is corrupt or crafted."
        ) from exc
    except ValueError as exc:  # json.JSONDecodeError and friends
        raise IRValidationError(f"program file is not valid JSON: {exc}") from exc
    _check_depth(raw)
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION or type(version) is not int:
        raise IRValidationError(
            f"program has schema_version {version!r}; this privacy-bridge reads version "
            f"{SCHEMA_VERSION}. Re-export the model with this version."
        )
    _check_op_kinds(raw)
    try:
        return Program.model_validate(raw)
    except ValidationError as exc:
        raise IRValidationError(f"program file does not match the IR schema:\n{exc}") from exc
    except Exception as exc:  # a validator's TypeError etc.: pydantic passes those through unwrapped
        raise IRValidationError(
            f"program file does not match the IR schema at {_locate(raw)}: {type(exc).__name__}: {exc}"
        ) from exc


def _locate(raw: dict) -> str:
    """The path of the node whose validation raised a non-pydantic error (pydantic gives none)."""
    graph = raw.get("graph")
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    for i, node in enumerate(nodes if isinstance(nodes, list) else []):
        try:
            Node.model_validate(node)
        except ValidationError:
            continue
        except Exception:
            name = node.get("name") if isinstance(node, dict) else None
            return f"graph.nodes.{i}.op (node {name!r})"
    return "the top level"


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


def program_from_parts(structure: str | bytes, weights: BinaryIO) -> tuple[Program, Weights]:
    """A Program and its weights from the two files' contents, both fully validated."""
    program = program_from_json(structure)
    validate_program(program)
    loaded = read_weights(weights, WEIGHTS_FILE)
    validate_weights(program, loaded)
    return program, loaded


def load_program(directory: str | Path) -> tuple[Program, Weights]:
    """Read what ``save_program`` wrote; any problem is an ``IRValidationError`` naming it."""
    src = Path(directory)
    structure = _read_structure(src / STRUCTURE_FILE)
    try:
        with open(src / WEIGHTS_FILE, "rb") as weights:
            return program_from_parts(structure, weights)
    except OSError as exc:
        raise IRValidationError(_unreadable(src / WEIGHTS_FILE, exc)) from exc


def _read_structure(path: Path) -> bytes:
    try:
        with open(path, "rb") as fp:
            data = fp.read(MAX_PROGRAM_BYTES + 1)
    except OSError as exc:
        raise IRValidationError(_unreadable(path, exc)) from exc
    if len(data) > MAX_PROGRAM_BYTES:
        raise IRValidationError(
            f"{path} is larger than {MAX_PROGRAM_BYTES} bytes; a program file holds structure only "
            f"(weights go in {WEIGHTS_FILE})"
        )
    return data


def _unreadable(path: Path, exc: OSError) -> str:
    return (
        f"cannot read {path}: {exc.strerror or exc}. A saved program is a directory holding "
        f"{STRUCTURE_FILE} and {WEIGHTS_FILE}, as save_program writes it."
    )
