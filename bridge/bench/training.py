"""The ``mlp_train`` row: one epoch of encrypted training, every party in this process.

Workload ``bridge.bench.workloads.mlp_train_program``: one epoch of 1024 random samples
(``quick``: 256).  Bytes and rounds are what one compute party sends during the epoch,
the initial masking of the weights included (the data owners' and the model owner's
sharing excluded: they are not compute traffic); the dealer's bytes have their own
column.  ``wall_s`` is end to end: party setup, sharing the weights and the data, the
epoch.  The plaintext baseline is the same epoch in float32 torch (autograd + SGD).
"""

from __future__ import annotations

import time
from typing import Any

from bridge.bench.inference import EXCLUDE
from bridge.bench.plaintext import training_seconds
from bridge.bench.workloads import BATCH, EPOCH_ROWS, mlp_train_program, random_data


def mlp_train(backend_name: str, quick: bool = False, check_overflow: bool = True) -> dict[str, Any]:
    """One epoch of encrypted training on ``backend_name``: a row of the bench table."""
    from bridge.reference_train import batch_schedule
    from bridge.registry import get_backend

    rows = EPOCH_ROWS // 4 if quick else EPOCH_ROWS
    program, weights = mlp_train_program()
    x, y = random_data(rows)
    backend = get_backend(backend_name)
    compute = program.placement.compute_parties
    dealer = program.placement.dealer
    start = time.perf_counter()
    executable = backend.prepare_training(program, weights, check_overflow=check_overflow, timeout_s=120)
    executable.load_data({"alice": (x, y)})
    before = executable.parties.stats.snapshot()
    for batch in batch_schedule(rows, BATCH, 0, seed=0):
        executable.train_batch(batch)
    wall = time.perf_counter() - start
    stats = executable.parties.stats.since(before)
    setup = executable.setup_stats
    executable.close()
    plain = training_seconds(weights, x, y)
    return {
        "workload": "mlp_train" + ("" if check_overflow else " (no overflow check)") + (" (quick)" if quick else ""),
        "backend": backend_name,
        "wall_s": wall,
        # training draws its dealer material inline (no offline phase for training yet): all online
        "online_s": wall,
        "offline_s": None,
        "plaintext_torch_s": plain,
        "ratio": wall / plain,
        "bytes_per_party": max(stats.total_bytes(p, EXCLUDE) + setup.total_bytes(p, EXCLUDE) for p in compute),
        "rounds": max(stats.total_rounds(p, EXCLUDE) + setup.total_rounds(p, EXCLUDE) for p in compute),
        "dealer_bytes": stats.total_bytes(dealer) + setup.total_bytes(dealer) if dealer else 0,
    }
