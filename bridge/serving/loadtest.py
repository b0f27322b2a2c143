"""Many clients at once against a service: throughput, latency percentiles, errors
(``privacy-bridge loadtest``).  Each client is a thread with its own connections;
inputs are uniform in [0, 1), the shape the deployed model takes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from bridge.serving.client import ServingClient
from bridge.serving.stats import percentiles


def run_loadtest(cluster: str | Path, identity: str | Path, clients: int, requests: int, batch: int,
                 seed: int = 0) -> dict[str, float | int]:
    """``clients`` threads, each with its own connection, send ``requests`` in all."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    shares = [requests // clients + (i < requests % clients) for i in range(clients)]
    conns = [ServingClient(cluster, identity) for _ in range(clients)]
    spec = conns[0].spec()
    rng = np.random.default_rng(seed)
    dtypes = spec.get("input_dtypes") or {}  # token inputs (int32) take ids below their one-hot depth
    inputs = {n: rng.integers(0, shape[-1], size=(batch, *shape[:-1])) if dtypes.get(n) == "int32"
              else rng.uniform(0, 1, size=(batch, *shape)) for n, shape in spec["inputs"].items()}
    x = next(iter(inputs.values())) if len(inputs) == 1 else inputs
    barrier = threading.Barrier(clients)

    def body(i: int) -> None:
        barrier.wait()
        for _ in range(shares[i]):
            t0 = time.perf_counter()
            try:
                conns[i].predict(x)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for c in conns:
        c.close()
    p = percentiles(latencies)
    return {"clients": clients, "requests": requests, "batch": batch, "answered": len(latencies),
            "errors": len(errors), "wall_s": wall, "requests_per_s": len(latencies) / wall,
            "rows_per_s": len(latencies) * batch / wall, "p50_s": p["p50"], "p95_s": p["p95"], "p99_s": p["p99"],
            "first_error": errors[0] if errors else ""}
