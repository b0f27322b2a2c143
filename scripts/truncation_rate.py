"""How often local truncation fails on the bench models, and whether serving notices.

SecureML's local truncation of [x] is wrong by about 2^(64 - f) ring units (2^32 in real
value at f = 16) when the shares wrap, with probability |x| / 2^64 per element for the
uniform share x0.  This script serves each inference workload N times (embedded, one
backend) with every truncation instrumented: it pairs the two compute parties' shares of
each truncated tensor, so it knows the exact value x, the exact failure probability of
that truncation, and whether it actually failed.  It prints, per workload:
  truncated elements per query, the expected failures per query (sum of |x| / 2^64),
  the failures observed in N queries, and the reruns serving's range check made.
Every observed failure must have caused a rerun (the check's promise); the script exits
non-zero otherwise.

    .venv/bin/python scripts/truncation_rate.py --queries 50 --backend torch-spdz
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections import defaultdict

import numpy as np

import bridge.mpc.protocol as protocol
from bridge.registry import get_backend

ORIGINAL = protocol.truncate


class TruncationProbe:
    """Wraps ``protocol.truncate`` in every module that imported it; pairs the shares."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.shares: dict[str, list[tuple[np.ndarray, int]]] = defaultdict(list)

    def __call__(self, ctx, x, bits=None):
        if ctx.is_compute:
            d = ctx.numerics.frac_bits if bits is None else bits
            with self.lock:
                self.shares[ctx.name].append((np.array(ctx.kernels.to_numpy(x.share), dtype=np.int64), d))
        return ORIGINAL(ctx, x, bits)

    def install(self) -> None:
        for module in [m for name, m in sys.modules.items() if name.startswith("bridge.mpc")]:
            if getattr(module, "truncate", None) is ORIGINAL:
                module.truncate = self  # type: ignore[attr-defined]

    def drain(self, compute: tuple[str, str]) -> tuple[int, float, int]:
        """(elements, expected failures, observed failures) of the truncations since the last drain."""
        with self.lock:
            first, second = self.shares.pop(compute[0], []), self.shares.pop(compute[1], [])
        elements, expected, observed = 0, 0.0, 0
        with np.errstate(over="ignore"):
            for (x0, d), (x1, _) in zip(first, second, strict=True):
                x = x0 + x1
                exact = x >> d
                local = (x0 >> d) + (-((-x1) >> d))
                elements += x.size
                expected += float(np.sum(np.abs(x.astype(np.float64)))) / 2.0**64
                observed += int(np.count_nonzero(np.abs(local - exact) > 1))
        return elements, expected, observed


def measure(workload_name: str, backend_name: str, queries: int) -> dict[str, float]:
    from frontends.cli.bench import INFERENCE_WORKLOADS

    workload = INFERENCE_WORKLOADS[workload_name]()
    probe = TruncationProbe()
    probe.install()
    executable = get_backend(backend_name).prepare(workload.program, workload.weights)
    compute = tuple(workload.program.placement.compute_parties)
    probe.drain(compute)  # setup
    elements = observed = reruns = 0
    expected = 0.0
    try:
        for seed in range(queries):
            result = executable.run(workload.inputs(seed=seed))
            n, e, o = probe.drain(compute)
            elements, expected, observed, reruns = elements + n, expected + e, observed + o, reruns + result.reruns
    finally:
        executable.close()
    return {
        "workload": workload_name, "queries": queries, "truncated_per_query": elements / queries,
        "expected_failures_per_query": expected / queries, "observed_failures": observed, "reruns": reruns,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=50, help="queries per workload")
    parser.add_argument("--backend", default="torch-spdz", help="secure backend to serve on")
    parser.add_argument("--workload", action="append", help="mlp_infer, cnn_infer (default: both)")
    args = parser.parse_args(argv)
    ok = True
    for name in args.workload or ["mlp_infer", "cnn_infer"]:
        row = measure(name, args.backend, args.queries)
        print(
            f"{row['workload']:<10} {args.backend:<11} queries {row['queries']:>5}  truncated/query "
            f"{row['truncated_per_query']:>10,.0f}  expected failures/query {row['expected_failures_per_query']:.2e}"
            f"  observed {row['observed_failures']}  reruns {row['reruns']}"
        )
        ok = ok and row["reruns"] >= min(row["observed_failures"], 1)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
