"""Online and offline time of one query, apart: the offline phase's benchmark.

For a workload at a batch size, on one backend, every party in threads of this process:
``inline_s`` is a query whose correlated randomness is drawn during the run (the dealer
computes its triples and comparison material and P0/P1 expand their seeds while the
query runs: the state before the offline phase), ``online_s`` the same query after
``precompute`` made its material (the dealer only sends its recorded corrections),
``offline_s`` what ``precompute`` took for that one query in all parties.  Best of
``repeats`` each, after warm-ups of both paths; the answer of the precomputed query is
checked against the inline one's.  Figures are printed, never asserted.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from bridge.bench.workloads import Workload, mlp_infer


def with_batch(workload: Workload, batch: int) -> Workload:
    return dataclasses.replace(workload, batch=int(batch))


def split_times(executable: Any, inputs: dict[str, np.ndarray], batch: int, repeats: int) -> dict[str, Any]:
    """(inline, online, offline) seconds of ``repeats`` queries each, on a prepared executable."""
    executable.run(inputs)  # warm-up: first-call costs
    executable.precompute(batch, 1)
    executable.run(inputs)  # warm-up of the precomputed path
    inline, online, offline = [], [], []
    diff = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        first = executable.run(inputs).outputs
        inline.append(time.perf_counter() - start)
        offline.append(executable.precompute(batch, 1))
        start = time.perf_counter()
        second = executable.run(inputs).outputs
        online.append(time.perf_counter() - start)
        if not all(executable.last_material.values()):
            raise RuntimeError(f"a precomputed query drew material inline: {executable.last_material}")
        diff = max(diff, max(float(np.abs(first[n] - second[n]).max()) for n in first))
    return {"inline": inline, "online": online, "offline": offline, "max_abs_diff": diff}


def offline_row(workload: Workload, backend_name: str, repeats: int = 5) -> dict[str, Any]:
    from bridge.registry import get_backend

    executable = get_backend(backend_name).prepare(workload.program, workload.weights)
    try:
        t = split_times(executable, workload.inputs(), workload.batch, repeats)
    finally:
        executable.close()
    inline, online = float(np.min(t["inline"])), float(np.min(t["online"]))
    return {
        "workload": workload.name,
        "backend": backend_name,
        "batch": workload.batch,
        "inline_s": inline,
        "online_s": online,
        "offline_s": float(np.min(t["offline"])),
        "online_over_inline": online / inline,
        "median_online_over_inline": float(np.median(np.asarray(t["online"]) / np.asarray(t["inline"]))),
        "max_abs_diff": t["max_abs_diff"],
    }


def offline_rows(backends: list[str], quick: bool = False) -> list[dict[str, Any]]:
    """mlp_infer at batch 1 (the serving target) and at its own batch, per backend."""
    repeats = 3 if quick else 7
    return [offline_row(with_batch(mlp_infer(), batch), b, repeats) for batch in (1, 128) for b in backends]
