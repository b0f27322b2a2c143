"""What a party keeps of a deployment, so that it serves again after a restart without
the model owner: the program (architecture, ``program.json``) and, on a compute party,
its additive share of every parameter (``share.npz``, int64 ring elements).

Written atomically (temporary file, fsync, rename), mode 0600 in a 0700 directory; read
back with the project's bounded npz reader (no pickle) and checked against the
program's parameter shapes.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bridge.ir import Program, validate_program
from bridge.ir.io import program_from_json
from bridge.ir.npz import read_weights
from bridge.mpc.layers import secure_parameter_specs
from bridge.security.keys import write_private

PROGRAM_FILE = "program.json"
SHARE_FILE = "share.npz"
META_FILE = "deployment.json"


class StoreError(RuntimeError):
    """A stored deployment that cannot be used (missing, damaged, or for another model)."""


def program_digest(program_json: bytes) -> str:
    return hashlib.sha256(program_json).hexdigest()


@dataclass(frozen=True)
class Deployment:
    program: Program
    program_json: bytes
    #: this party's share of every parameter, as the compute parties hold them; None at the dealer
    share: dict[str, np.ndarray] | None

    @property
    def digest(self) -> str:
        return program_digest(self.program_json)


def check_share(program: Program, share: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    specs = secure_parameter_specs(program)
    if set(share) != set(specs):
        raise StoreError(f"a share must hold the parameters {sorted(specs)}; it holds {sorted(share)}")
    out = {}
    for name, shape in specs.items():
        value = np.asarray(share[name])
        if value.dtype != np.int64 or tuple(value.shape) != tuple(shape):
            raise StoreError(f"share of {name!r}: expected int64 of shape {tuple(shape)}, "
                             f"received {value.dtype} of shape {tuple(value.shape)}")
        out[name] = value
    return out


def parse_program(program_json: bytes) -> Program:
    program = program_from_json(program_json)
    validate_program(program)
    return program


def save(directory: Path, deployment: Deployment) -> None:
    """Write the deployment (share first, the program last: a program on disk means a complete one)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)
    if deployment.share is not None:
        names = sorted(deployment.share)
        buf = io.BytesIO()
        np.savez(buf, __names__=np.array(names), **{f"w{i}": deployment.share[n] for i, n in enumerate(names)})
        write_private(directory / SHARE_FILE, buf.getvalue())
    write_private(directory / META_FILE, json.dumps({"digest": deployment.digest,
                                                     "has_share": deployment.share is not None}).encode())
    write_private(directory / PROGRAM_FILE, deployment.program_json)


def load(directory: Path) -> Deployment | None:
    """The stored deployment, None if there is none; ``StoreError`` if it is damaged."""
    if not (directory / PROGRAM_FILE).is_file():
        return None
    try:
        program_json = (directory / PROGRAM_FILE).read_bytes()
        meta = json.loads((directory / META_FILE).read_bytes())
        if meta.get("digest") != program_digest(program_json):
            raise StoreError("program.json does not match the digest recorded at deployment")
        program = parse_program(program_json)
        share = None
        if meta.get("has_share"):
            share = check_share(program, read_weights(directory / SHARE_FILE, label=str(directory / SHARE_FILE)))
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - any damage is reported as one clear error
        raise StoreError(f"the deployment stored in {directory} cannot be read ({type(exc).__name__}: {exc}); "
                         "deploy the model again (privacy-bridge deploy) after removing that directory") from exc
    return Deployment(program, program_json, share)
