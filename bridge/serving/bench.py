"""Load figures of the service on this host: ``python -m bridge.serving.bench --backend NAME``.

Starts the three parties (``privacy-bridge serve``, one process each, on loopback),
deploys ``mlp_infer``'s model (784-128-128-10 ReLU), and runs ``loadtest``: one client
sending batch-1 requests one after another, then 8 clients at once (dynamic batching
across them), then the same 8 with ``max_batch = 1`` (no batching).  Prints one row per
run: throughput, p50/p95/p99 latency, errors, and the servers' mean batch rows.

The offline phase: every service keeps its pool (``offline_depth``, default 2), and a
last service runs with ``offline_depth = 0`` (every batch's material drawn inline, the
dealer computing during the run).  ``online_p50_s`` is the leader's secure run alone
(forward pass and range check), ``offline_s`` the pool's making time per batch made.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bridge.security.keys import keygen

PARTIES = {"server0": "compute", "server1": "compute", "dealer": "dealer"}
ROOT = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_service(root: Path, max_batch: int, max_delay_ms: float, timeout_s: float = 60.0,
                  offline_depth: int = 2) -> Path:
    keygen(list(PARTIES), root / "keys")
    keygen(["owner", "load"], root / "clients")
    lines = [f"timeout_s = {timeout_s}", 'keys = "keys"', ""]
    for name, role in PARTIES.items():
        lines += ["[[parties]]", f'name = "{name}"', f'roles = ["{role}"]', f'address = "127.0.0.1:{_port()}"', ""]
    lines += ["[serving]", 'model_owner = "owner"', f"max_batch = {max_batch}", f"max_delay_ms = {max_delay_ms}",
              f"offline_depth = {offline_depth}", "", "[serving.listen]", *[f'{n} = "127.0.0.1:{_port()}"' for n in PARTIES]]
    (root / "cluster.toml").write_text("\n".join(lines) + "\n")
    return root / "cluster.toml"


def _cli(*args: str, **kw) -> subprocess.CompletedProcess | subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="torch")
    return subprocess.Popen([sys.executable, "-m", "frontends.cli", *args], cwd=ROOT, env=env, **kw)


def measure(backend: str, max_batch: int, runs: list[tuple[int, int]], max_delay_ms: float = 5.0,
            offline_depth: int = 2) -> list[dict]:
    """Per (clients, requests): the loadtest result, batch 1."""
    from bridge.bench.workloads import mlp_infer
    from bridge.serving.client import ServingClient, deploy
    from bridge.serving.loadtest import run_loadtest

    root = Path(tempfile.mkdtemp(prefix="privacy-bridge-serving-bench-"))
    cluster = write_service(root, max_batch, max_delay_ms, offline_depth=offline_depth)
    procs = [_cli("serve", "--cluster", str(cluster), "--name", p, "--backend", backend,
                  stdout=open(root / f"{p}.log", "w"), stderr=subprocess.STDOUT) for p in PARTIES]
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                workload = mlp_infer()
                deploy(cluster, workload.program, workload.weights, "owner")
                break
            except Exception:  # noqa: BLE001 - the parties are still starting
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        with ServingClient(cluster, "owner", parties=tuple(PARTIES)) as c:
            while not all(c.status(p)["ready"] for p in PARTIES):
                time.sleep(0.5)
        out = []
        for clients, requests in runs:
            run_loadtest(str(cluster), "load", clients, min(requests, 2 * clients), 1)  # warm up
            with ServingClient(cluster, "owner") as c:
                before = c.status("server0")["counts"]
            r = run_loadtest(str(cluster), "load", clients, requests, 1)
            with ServingClient(cluster, "owner") as c:
                s = c.status("server0")
            batches = s["counts"].get("batches", 0) - before.get("batches", 0)
            rows = s["counts"].get("rows", 0) - before.get("rows", 0)
            pool = s.get("pool") or {}
            r.update(backend=backend, max_batch=max_batch, mean_batch_rows=rows / batches if batches else 0.0,
                     offline_depth=offline_depth, online_p50_s=s["online_s"]["p50"],
                     online_precomputed_p50_s=s["online_precomputed_s"]["p50"],
                     online_inline_p50_s=s["online_inline_s"]["p50"],
                     offline_s=pool.get("offline_s", 0.0) / max(pool.get("made", 0), 1))
            out.append(r)
        return out
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", default=None)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for backend in args.backend or ["torch-spdz", "tf-pond"]:
        rows += measure(backend, 64, [(1, max(args.requests // 4, 10)), (8, args.requests)])
        rows += measure(backend, 1, [(8, args.requests)])
        rows += measure(backend, 64, [(1, max(args.requests // 4, 10))], offline_depth=0)
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print("backend    | max_batch | pool | clients | requests | errors | req/s  | p50 ms | p95 ms | p99 ms | batch rows "
          "| online p50 ms | offline ms/batch")
    for r in rows:
        print(f"{r['backend']:10s} | {r['max_batch']:9d} | {r['offline_depth']:4d} | {r['clients']:7d} | "
              f"{r['requests']:8d} | {r['errors']:6d} | "
              f"{r['requests_per_s']:6.2f} | {r['p50_s'] * 1000:6.1f} | {r['p95_s'] * 1000:6.1f} | "
              f"{r['p99_s'] * 1000:6.1f} | {r['mean_batch_rows']:10.2f} | {(r['online_p50_s'] or 0) * 1000:13.1f} | "
              f"{r['offline_s'] * 1000:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
