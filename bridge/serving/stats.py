"""What an operator asks a serving party: counters, latency percentiles, batch sizes.

Latencies are kept for the last ``WINDOW`` answers: ``latency`` is a request's time
from its arrival at this party to its answer (queueing, batching and the secure run),
``online`` one secure run (the forward pass and the range check), split by where its
correlated randomness came from: ``online_precomputed_s`` from the offline pool (the
dealer only sends what it made before), ``online_inline_s`` drawn during the run (the
pool had none for that batch size yet).  The offline work itself is the pool's
``offline_s`` (``bridge.serving.offline``), reported beside these by ``status``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np

WINDOW = 10_000


def percentiles(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    a = np.asarray(samples)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


class ServiceStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._values: dict[str, float] = {}
        self._latency: deque[float] = deque(maxlen=WINDOW)
        self._online: deque[float] = deque(maxlen=WINDOW)
        self._online_split: dict[bool, deque[float]] = {True: deque(maxlen=WINDOW), False: deque(maxlen=WINDOW)}
        self._batch_rows: deque[int] = deque(maxlen=WINDOW)
        self.started = time.time()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self._values[name] = value

    def batch(self, rows: int, online_s: float, flagged: bool, precomputed: bool = False) -> None:
        with self._lock:
            self._counts["batches"] += 1
            self._counts["precomputed_batches" if precomputed else "inline_batches"] += 1
            self._online_split[precomputed].append(online_s)
            self._counts["rows"] += rows
            self._counts["flagged_batches"] += int(flagged)
            self._online.append(online_s)
            self._batch_rows.append(rows)

    def answered(self, latency_s: float) -> None:
        with self._lock:
            self._counts["answered"] += 1
            self._latency.append(latency_s)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            rows = list(self._batch_rows)
            return {
                "uptime_s": time.time() - self.started,
                "counts": dict(self._counts),
                "values": dict(self._values),
                "latency_s": percentiles(list(self._latency)),
                "online_s": percentiles(list(self._online)),
                "online_precomputed_s": percentiles(list(self._online_split[True])),
                "online_inline_s": percentiles(list(self._online_split[False])),
                "mean_batch_rows": float(np.mean(rows)) if rows else None,
            }
