"""The user script of the launched abort-notice test: every party serves one batch, and the
client's batch holds a value its input check refuses (9.87654e+14).

    refused_input_script.py PROGRAM_DIR BACKEND

Whatever a party raises, it prints as an uncaught exception would, so that the test reads
each party's own output exactly as a user of ``privacy-bridge launch`` would.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch  # noqa: F401 - before TensorFlow, as everywhere in this project

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from bridge.cluster import cluster_from_environment  # noqa: E402
from bridge.ir import load_program  # noqa: E402
from bridge.registry import get_backend  # noqa: E402
from tests.distributed.models import CLIENT  # noqa: E402

SECRET = 9.87654e14


def main() -> None:
    found = cluster_from_environment(os.environ)
    assert found is not None, "run me with privacy-bridge party/launch"
    cluster, party = found
    program, weights = load_program(sys.argv[1])
    backend = get_backend(sys.argv[2])
    owner = program.placement.param_owner
    executable = backend.prepare(program, weights if party == owner else None, cluster=cluster, party=party)
    x = np.zeros((2, 6))
    if party == CLIENT:
        x[1, 3] = SECRET
    executable.run({"x": x})
    print(f"party {party} finished", flush=True)


if __name__ == "__main__":
    main()
