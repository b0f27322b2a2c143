"""``privacy-bridge bench``: the command-line face of ``bridge.bench``.

Text tables by default; ``--json`` writes one JSON object per row on stdout (the
tables go to stderr, for a person watching); ``--kernels`` prints the kernel table
(each backend's exact matmul paths, timed on this host, and the choice).
"""

from __future__ import annotations

import sys
from typing import Any

from bridge.bench.report import format_table, json_lines
from bridge.bench.workloads import INFERENCE_WORKLOADS, Workload, cnn_infer, mlp_infer

__all__ = ["INFERENCE_WORKLOADS", "Workload", "cnn_infer", "format_table", "mlp_infer", "run_bench"]


def run_bench(
    backends: list[str] | None,
    workloads: list[str] | None,
    quick: bool = False,
    as_json: bool = False,
    kernels: bool = False,
    recalibrate: bool = False,
    zoo: bool = False,
    models: list[str] | None = None,
) -> list[dict[str, Any]]:
    from bridge.bench.suite import run_all, secure_backend_names

    def emit(title: str, rows: list[dict[str, Any]]) -> None:
        text = f"{title}\n{format_table(rows)}\n"
        if as_json:
            print(text, file=sys.stderr, flush=True)
            if rows:
                print(json_lines(title, rows), flush=True)
        else:
            print(text, flush=True)

    if kernels:
        from bridge.bench.kernels import kernel_rows
        from bridge.mpc.calibration import cpu_model

        names = backends or secure_backend_names()
        rows = kernel_rows(names, recalibrate=recalibrate)
        emit(f"Exact matmul paths timed on this host ({cpu_model()}), milliseconds, and the choice", rows)
        return rows
    if zoo:
        from bridge.bench.zoo import zoo_rows

        rows = zoo_rows(models, backends, repeats=0 if quick else 1)
        emit("Model zoo, encrypted serving embedded (one child process per row; --quick: the first query only)", rows)
        return rows
    return run_all(backends, quick=quick, workloads=workloads, emit=emit)
