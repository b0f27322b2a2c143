"""``privacy-bridge bench``: the workloads of the issues, measured on each backend.

Figures are printed (and kept in the README), never asserted.  Bytes are what one
compute party sends during a run, the model's one-time sharing excluded, counted
as CrypTen counts them; dealer traffic has its own column.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bridge.ir import Graph, Node, ParamSpec, Placement, PrivacyMode, Program, TensorSpec
from bridge.ir import ops as irops


@dataclass(frozen=True)
class Workload:
    name: str
    program: Program
    weights: dict[str, np.ndarray]
    batch: int

    def inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        spec = self.program.graph.inputs["x"]
        return {"x": rng.uniform(0.0, 1.0, size=(self.batch, *spec.feature_shape))}


class _Builder:
    """Builds a chain-shaped Program with He-initialised random weights."""

    def __init__(self, input_shape: tuple[int, ...], seed: int = 0) -> None:
        self.shape = input_shape
        self.nodes: list[Node] = []
        self.params: dict[str, ParamSpec] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.value = "x"
        self.input_shape = input_shape
        self.rng = np.random.default_rng(seed)

    def _node(self, op: Any, out_shape: tuple[int, ...], **params: np.ndarray) -> None:
        name = f"{op.kind}_{len(self.nodes)}"
        roles = {}
        for role, value in params.items():
            pname = f"{name}/{role}"
            self.params[pname] = ParamSpec(shape=value.shape)
            self.weights[pname] = value.astype(np.float32)
            roles[role] = pname
        self.nodes.append(Node(name=name, op=op, inputs=(self.value,), output=name, params=roles))
        self.value, self.shape = name, out_shape

    def dense(self, units: int) -> "_Builder":
        fan_in = self.shape[-1]
        w = self.rng.normal(size=(fan_in, units)) * np.sqrt(2.0 / fan_in)
        self._node(irops.Dense(units=units), (units,), kernel=w, bias=np.zeros(units))
        return self

    def conv(self, filters: int, size: int) -> "_Builder":
        h, w, c = self.shape
        kernel = self.rng.normal(size=(size, size, c, filters)) * np.sqrt(2.0 / (size * size * c))
        op = irops.Conv2D(filters=filters, kernel_size=size)
        self._node(op, (h - size + 1, w - size + 1, filters), kernel=kernel, bias=np.zeros(filters))
        return self

    def relu(self) -> "_Builder":
        self._node(irops.Relu(), self.shape)
        return self

    def avg_pool(self) -> "_Builder":
        h, w, c = self.shape
        self._node(irops.AvgPool2D(pool_size=2, strides=2), (h // 2, w // 2, c))
        return self

    def flatten(self) -> "_Builder":
        self._node(irops.Flatten(), (int(np.prod(self.shape)),))
        return self

    def build(self, name: str, batch: int) -> Workload:
        graph = Graph(
            inputs={"x": TensorSpec(shape=(None, *self.input_shape))},
            outputs={self.value: TensorSpec(shape=(None, *self.shape))},
            parameters=self.params,
            nodes=tuple(self.nodes),
        )
        placement = Placement.default(["x"], [self.value])
        program = Program(name=name, graph=graph, placement=placement, privacy=PrivacyMode.ENCRYPTED_SERVING)
        return Workload(name, program, self.weights, batch)


def mlp_infer() -> Workload:
    """784-128-128-10 ReLU, batch 128."""
    b = _Builder((784,)).dense(128).relu().dense(128).relu().dense(10)
    return b.build("mlp_infer", 128)


def cnn_infer() -> Workload:
    """conv5x5x16-relu-avgpool2-conv5x5x16-relu-avgpool2-fc100-relu-fc10 on 28x28x1, batch 32."""
    b = _Builder((28, 28, 1)).conv(16, 5).relu().avg_pool().conv(16, 5).relu().avg_pool()
    b = b.flatten().dense(100).relu().dense(10)
    return b.build("cnn_infer", 32)


INFERENCE_WORKLOADS: dict[str, Callable[[], Workload]] = {"mlp_infer": mlp_infer, "cnn_infer": cnn_infer}


def plaintext_torch_seconds(workload: Workload, repeats: int = 50) -> float:
    """The same model in plain float32 torch, same process: the best of ``repeats`` runs.

    Best-of-N on both sides keeps the ratio honest on a shared machine, where a
    median picks up other processes' load.
    """
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
        return h

    with torch.no_grad():
        forward()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            forward()
            times.append(time.perf_counter() - start)
    return float(np.min(times))


def run_inference(workload: Workload, backend_name: str, repeats: int = 5) -> dict[str, Any]:
    from bridge.registry import get_backend

    backend = get_backend(backend_name)
    executable = backend.prepare(workload.program, workload.weights)
    inputs = workload.inputs()
    executable.run(inputs)  # warm-up: first-call costs (graph tracing, allocator)
    times, stats = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = executable.run(inputs)
        times.append(time.perf_counter() - start)
        stats = result.stats
    wall = float(np.min(times))
    compute = workload.program.placement.compute_parties
    dealer = workload.program.placement.dealer
    exclude = ("share:",)
    plain = plaintext_torch_seconds(workload)
    executable.close()
    return {
        "workload": workload.name,
        "backend": backend_name,
        "wall_s": wall,
        "plaintext_torch_s": plain,
        "ratio": wall / plain,
        "bytes_per_party": max(stats.total_bytes(p, exclude) for p in compute),
        "rounds": max(stats.total_rounds(p, exclude) for p in compute),
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
        per_run.append(max(stats.total_bytes(p, ("share:",)) for p in compute))
    executable.close()
    return {
        "workload": f"{workload.name} x{batches}",
        "backend": backend_name,
        "bytes_one_batch": per_run[0] + setup,
        "bytes_all_batches": sum(per_run) + setup,
        "ratio_to_one": (sum(per_run) + setup) / (per_run[0] + setup),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths)), "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value / 1e6:.2f} MB" if value >= 100_000 else str(value)
    return str(value)


def secure_backend_names() -> list[str]:
    from bridge.registry import available_backends

    return [b for b in available_backends() if b != "plaintext"]


def run_all(
    backends: list[str] | None = None, quick: bool = False, workloads: list[str] | None = None
) -> list[dict[str, Any]]:
    """Run every workload on every backend; print each table as it completes."""
    names = backends or secure_backend_names()
    chosen = workloads or [*INFERENCE_WORKLOADS, "mlp_infer_stream", "distributed", "mlp_train", "federated"]
    rows: list[dict[str, Any]] = []
    inference = [w for w in chosen if w in INFERENCE_WORKLOADS]
    if inference:
        table = [run_inference(INFERENCE_WORKLOADS[w](), b, repeats=1 if quick else 3) for w in inference for b in names]
        print("Inference (embedded, all parties in one process)\n" + format_table(table) + "\n", flush=True)
        rows += table
    if "mlp_infer_stream" in chosen:
        table = [run_batches(mlp_infer(), b, batches=3 if quick else 10) for b in names]
        print("Serving a stream of batches (weights masked once)\n" + format_table(table) + "\n", flush=True)
        rows += table
    if "distributed" in chosen:
        from bridge.bench_distributed import distributed_rows, training_rows

        table = distributed_rows([mlp_infer(), cnn_infer()], names, repeats=2 if quick else 5)
        table += training_rows(names, quick=quick)
        print("One process per party on loopback (one thread each)\n" + format_table(table) + "\n",
              flush=True)
        rows += table
    if "mlp_train" in chosen:
        try:
            from bridge.bench_train import mlp_train
        except ImportError:
            print("mlp_train: encrypted training is not installed in this build\n")
        else:
            table = [mlp_train(b, quick=quick) for b in names]
            print("Encrypted training\n" + format_table(table) + "\n", flush=True)
            rows += table
    if "federated" in chosen:
        from bridge.federated.bench import federated_bench

        table = [federated_bench(b, quick=quick) for b in names]
        table.append(federated_bench(names[0], secure_aggregation=False, quick=quick))
        print("Federated (FedAvg vs the same local training without aggregation)\n" + format_table(table) + "\n",
              flush=True)
        rows += table
    return rows
