"""``privacy-bridge bench``: every workload on every secure backend, table by table.

Each table is handed to ``emit(title, rows)`` as soon as it is complete (the command
line prints it as text, or as JSON lines with ``--json``).  Figures are printed and
kept in the README, never asserted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.bench.workloads import ALL_WORKLOADS, INFERENCE_WORKLOADS, mlp_infer

Emit = Callable[[str, list[dict[str, Any]]], None]


def secure_backend_names() -> list[str]:
    from bridge.registry import available_backends

    return [b for b in available_backends() if b != "plaintext"]


def run_all(
    backends: list[str] | None = None,
    quick: bool = False,
    workloads: list[str] | None = None,
    emit: Emit | None = None,
) -> list[dict[str, Any]]:
    """Run the chosen workloads (default: all) on the chosen backends; returns every row."""
    from bridge.bench.report import format_table

    emit = emit or (lambda title, rows: print(f"{title}\n{format_table(rows)}\n", flush=True))
    names = backends or secure_backend_names()
    chosen = workloads or list(ALL_WORKLOADS)
    unknown = sorted(set(chosen) - set(ALL_WORKLOADS))
    if unknown:
        raise ValueError(f"unknown workloads {unknown}; choose from {list(ALL_WORKLOADS)}")
    rows: list[dict[str, Any]] = []

    def table(title: str, made: list[dict[str, Any]]) -> None:
        emit(title, made)
        rows.extend(made)

    inference = [w for w in chosen if w in INFERENCE_WORKLOADS]
    if inference:
        from bridge.bench.inference import run_inference

        table("Inference (embedded, all parties in one process)",
              [run_inference(INFERENCE_WORKLOADS[w](), b, repeats=1 if quick else 3) for w in inference for b in names])
    if "mlp_infer_stream" in chosen:
        from bridge.bench.inference import run_batches

        table("Serving a stream of batches (weights masked once)",
              [run_batches(mlp_infer(), b, batches=3 if quick else 10) for b in names])
    if "offline" in chosen:
        from bridge.bench.offline import offline_rows

        table("Offline phase: mlp_infer online (material made before) vs inline (dealer's work in the run)",
              offline_rows(names, quick=quick))
    if "distributed" in chosen:
        from bridge.bench.distributed import distributed_rows, training_rows
        from bridge.bench.workloads import cnn_infer

        made = distributed_rows([mlp_infer(), cnn_infer()], names, repeats=2 if quick else 5)
        made += training_rows(names, quick=quick)
        table("One process per party on loopback (one thread each)", made)
    if "mlp_train" in chosen:
        from bridge.bench.training import mlp_train

        table("Encrypted training", [mlp_train(b, quick=quick) for b in names])
    if "federated" in chosen:
        from bridge.bench.federated import federated_bench

        made = [federated_bench(b, quick=quick) for b in names]
        made.append(federated_bench(names[0], secure_aggregation=False, quick=quick))
        table("Federated (FedAvg vs the same local training without aggregation)", made)
    return rows
