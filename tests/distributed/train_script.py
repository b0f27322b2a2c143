"""The training script the distributed tests launch: the same code in every party's process.

    train_script.py PROGRAM_DIR BACKEND OUT_DIR EPOCHS

Each process prepares encrypted training of the saved Program as its own party; the
data owner shares ``models.training_data()`` (every other process passes zeros of
the same shape: only the owner's values are used).  After EPOCHS epochs in
``batch_schedule`` order, the model owner receives the weights, and the client
queries the model kept shared (``serving``) with ``models.batches()[0]``.  Each
process writes what it learned and its own traffic per step to ``OUT_DIR/<party>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch  # noqa: F401 - before TensorFlow, as everywhere in this project

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from bridge.cluster import cluster_from_environment  # noqa: E402
from bridge.ir import load_program  # noqa: E402
from bridge.reference_train import batch_schedule  # noqa: E402
from bridge.registry import get_backend  # noqa: E402
from tests.distributed.models import batches, training_data  # noqa: E402


def snapshot(stats) -> dict:
    return {party: {label: list(v) for label, v in labels.items()} for party, labels in stats.snapshot().items()}


def train(program_dir: str, backend_name: str, out_path: Path, epochs: int) -> None:
    """This process's party trains the Program at ``program_dir``; its record goes to ``out_path``.
    Also called by ``party_script.py`` after serving, over the transport the process has open."""
    found = cluster_from_environment(os.environ)
    assert found is not None, "run me with privacy-bridge party/launch"
    cluster, party = found
    program, weights = load_program(program_dir)
    placement = program.placement
    (owner,) = set(placement.input_owners.values())
    x, y = training_data()
    if party != owner:
        x, y = np.zeros_like(x), np.zeros_like(y)
    executable = get_backend(backend_name).prepare_training(
        program, weights if party == placement.param_owner else None, cluster=cluster, party=party,
        metrics=("accuracy",),
    )
    rows = executable.load_data({owner: (x, y)})
    record: dict = {"party": party, "setup_stats": snapshot(executable.setup_stats), "losses": [], "step_stats": []}
    for epoch in range(epochs):
        for batch in batch_schedule(rows, program.training.batch_size, epoch, seed=0):
            step = executable.train_batch(batch)
            record["losses"].append(None if np.isnan(step.loss) else [step.loss, step.metrics["accuracy"]])
            record["step_stats"].append(snapshot(step.stats))
    served = executable.serving().run({"x": batches()[0] if party == owner else np.zeros_like(batches()[0])})
    record["served"] = {k: v.tolist() for k, v in served.outputs.items()}
    record["weights"] = {k: v.tolist() for k, v in executable.weights().items()}
    out_path.write_text(json.dumps(record))


def main() -> None:
    program_dir, backend_name, out_dir, epochs = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    found = cluster_from_environment(os.environ)
    assert found is not None, "run me with privacy-bridge party/launch"
    train(program_dir, backend_name, out_dir / f"{found[1]}.json", epochs)


if __name__ == "__main__":
    main()
