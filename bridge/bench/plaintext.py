"""Plaintext baselines: the same workloads in float32 torch, in the measuring process.

Best-of-N on both sides keeps a ratio honest on a shared machine, where a median picks
up other processes' load.  torch is imported lazily (the benchmarks' only plaintext
framework, as in CrypTen's anchor, ``../shared/anchors/plain_bench.py``).
"""

from __future__ import annotations

import time

import numpy as np

from bridge.bench.workloads import BATCH, LEARNING_RATE, SIZES, Workload


def inference_seconds(workload: Workload, repeats: int = 50) -> float:
    """One batch of ``workload`` in plain float32 torch: the best of ``repeats`` runs."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(workload.inputs()["x"].astype(np.float32))
    w = {k: torch.from_numpy(v) for k, v in workload.weights.items()}

    def forward() -> torch.Tensor:
        h = x if x.dim() == 2 else x.permute(0, 3, 1, 2)
        for node in workload.program.graph.nodes:
            kind = node.op.kind
            if kind == "dense":
                h = h @ w[node.params["kernel"]] + w[node.params["bias"]]
            elif kind == "conv2d":
                h = F.conv2d(h, w[node.params["kernel"]].permute(3, 2, 0, 1), w[node.params["bias"]])
            elif kind == "relu":
                h = torch.relu(h)
            elif kind == "avg_pool2d":
                h = F.avg_pool2d(h, 2)
            elif kind == "flatten":
                h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)
            else:
                raise ValueError(f"the plaintext baseline has no rule for {kind!r} nodes")
        return h

    with torch.no_grad():
        forward()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            forward()
            times.append(time.perf_counter() - start)
    return float(np.min(times))


def training_seconds(weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, repeats: int = 5) -> float:
    """mlp_train's epoch in float32 torch (autograd + SGD), same batches; best of ``repeats``."""
    import torch

    from bridge.reference_train import batch_schedule

    xs, ys = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    batches = [torch.from_numpy(b) for b in batch_schedule(len(x), BATCH, 0, seed=0)]
    best = float("inf")
    for _ in range(repeats + 1):
        params = [torch.tensor(weights[f"dense_{i}/{r}"], requires_grad=True)
                  for i in range(len(SIZES) - 1) for r in ("kernel", "bias")]
        optimizer = torch.optim.SGD(params, lr=LEARNING_RATE)
        start = time.perf_counter()
        for rows in batches:
            h = xs[rows]
            for i in range(len(SIZES) - 1):
                h = h @ params[2 * i] + params[2 * i + 1]
                if i < len(SIZES) - 2:
                    h = torch.relu(h)
            loss = torch.nn.functional.cross_entropy(h, ys[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        best = min(best, time.perf_counter() - start)
    return best
