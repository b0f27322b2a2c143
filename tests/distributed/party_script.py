"""The user script the distributed tests launch: the same code in every party's process.

    party_script.py PROGRAM_DIR BACKEND OUT_DIR [fault VICTIM SENDS | train TRAIN_PROGRAM_DIR EPOCHS]

Each process prepares the saved Program as its own party (``cluster_from_environment``)
and serves the batches of ``models.batches``; it writes what it received and its own
traffic per label to ``OUT_DIR/<party>.json``.  With ``fault``, party VICTIM kills
itself (SIGKILL, no goodbye) on its SENDS-th message of the first run, and the
others record when and how they stopped.  With ``train``, the same processes then train
TRAIN_PROGRAM_DIR over the transport they have open (``train_script.train``) and write
``OUT_DIR/<party>.train.json``: one launch checks serving and training (each launch
costs every party's imports, seconds of CPU each).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch  # noqa: F401 - before TensorFlow, as everywhere in this project

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from bridge.cluster import cluster_from_environment  # noqa: E402
from bridge.ir import load_program  # noqa: E402
from bridge.registry import get_backend  # noqa: E402
from tests.distributed.models import batches  # noqa: E402


class KillOnSend:
    """A transport wrapper that SIGKILLs this process on its n-th send (a crash mid-protocol)."""

    def __init__(self, inner, sends: int, marker: Path) -> None:
        self.inner, self.left, self.marker = inner, sends, marker
        self.party = inner.party

    def send(self, peer: str, message: bytes) -> None:
        self.left -= 1
        if self.left <= 0:
            self.marker.write_text(json.dumps({"killed_at": time.time()}))
            os.kill(os.getpid(), signal.SIGKILL)
        self.inner.send(peer, message)

    def recv(self, peer: str) -> bytes:
        return self.inner.recv(peer)

    def abort(self, reason: str) -> None:
        self.inner.abort(reason)

    def close(self) -> None:
        self.inner.close()


def snapshot(stats) -> dict:
    return {party: {label: list(v) for label, v in labels.items()} for party, labels in stats.snapshot().items()}


def main() -> None:
    program_dir, backend_name, out_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    extra = sys.argv[4:7]
    fault = extra if extra[:1] == ["fault"] else None
    then_train = extra if extra[:1] == ["train"] else None
    found = cluster_from_environment(os.environ)
    assert found is not None, "run me with privacy-bridge party/launch"
    cluster, party = found
    program, weights = load_program(program_dir)
    owner = program.placement.param_owner
    backend = get_backend(backend_name)
    record: dict = {"party": party, "outputs": [], "run_stats": []}
    started = time.time()
    try:
        executable = backend.prepare(program, weights if party == owner else None, cluster=cluster, party=party)
        record["setup_stats"] = snapshot(executable.setup_stats)
        if fault is not None and party == fault[1]:
            ctx = executable.parties.contexts[party]
            ctx.messenger.transport = KillOnSend(ctx.messenger.transport, int(fault[2]), out_dir / f"{party}.killed")
        for x in batches():
            mine = x if party in program.placement.input_owners.values() else np.zeros_like(x)
            result = executable.run({"x": mine})
            record["outputs"].append({k: v.tolist() for k, v in result.outputs.items()})
            record["run_stats"].append(snapshot(result.stats))
    except Exception as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["failed_after_s"] = time.time() - started
        record["failed_at"] = time.time()
        (out_dir / f"{party}.json").write_text(json.dumps(record))
        raise
    (out_dir / f"{party}.json").write_text(json.dumps(record))
    if then_train is not None:
        from tests.distributed.train_script import train

        train(then_train[1], backend_name, out_dir / f"{party}.train.json", int(then_train[2]))


if __name__ == "__main__":
    main()
