"""Inference rows: a workload served embedded (every party in threads of this process).

Bytes are what one compute party sends during a run, the input owner's sharing and the
model's one-time sharing excluded, counted as CrypTen counts them; the dealer's traffic
has its own column.  ``wall_s`` is a query with the dealer's work inline; ``online_s``
the same query with its material made before (``SecureExecutable.precompute``), whose
time is ``offline_s`` (``bridge.bench.offline``).  Figures are printed, never asserted.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bridge.bench.offline import split_times
from bridge.bench.plaintext import inference_seconds
from bridge.bench.workloads import Workload

#: traffic labels left out of the per-run figures (the input owner's sharing)
EXCLUDE = ("share:",)


def run_inference(workload: Workload, backend_name: str, repeats: int = 5) -> dict[str, Any]:
    """One row: the best of ``repeats`` runs after a warm-up (first-call costs, kernel timing)."""
    from bridge.registry import get_backend

    executable = get_backend(backend_name).prepare(workload.program, workload.weights)
    inputs = workload.inputs()
    executable.run(inputs)
    times, stats = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = executable.run(inputs)
        times.append(time.perf_counter() - start)
        stats = result.stats
    split = split_times(executable, inputs, workload.batch, repeats)
    executable.close()
    wall = float(np.min(times))
    compute = workload.program.placement.compute_parties
    dealer = workload.program.placement.dealer
    plain = inference_seconds(workload)
    return {
        "workload": workload.name,
        "backend": backend_name,
        "wall_s": wall,
        "online_s": float(np.min(split["online"])),
        "offline_s": float(np.min(split["offline"])),
        "plaintext_torch_s": plain,
        "ratio": wall / plain,
        "bytes_per_party": max(stats.total_bytes(p, EXCLUDE) for p in compute),
        "rounds": max(stats.total_rounds(p, EXCLUDE) for p in compute),
        "dealer_bytes": stats.total_bytes(dealer) if dealer else 0,
    }


def run_batches(workload: Workload, backend_name: str, batches: int = 10) -> dict[str, Any]:
    """Serving a stream of batches: bytes of ``batches`` runs vs one, weights masked once."""
    from bridge.registry import get_backend

    executable = get_backend(backend_name).prepare(workload.program, workload.weights)
    compute = workload.program.placement.compute_parties
    setup = max(executable.setup_stats.total_bytes(p) for p in compute)
    per_run = []
    for i in range(batches):
        stats = executable.run(workload.inputs(seed=i)).stats
        per_run.append(max(stats.total_bytes(p, EXCLUDE) for p in compute))
    executable.close()
    return {
        "workload": f"{workload.name} x{batches}",
        "backend": backend_name,
        "bytes_one_batch": per_run[0] + setup,
        "bytes_all_batches": sum(per_run) + setup,
        "ratio_to_one": (sum(per_run) + setup) / (per_run[0] + setup),
    }
