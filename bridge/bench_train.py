"""The ``mlp_train`` workload of ``privacy-bridge bench``: one epoch of encrypted training.

784-128-128-10 ReLU MLP, softmax cross-entropy, SGD (learning rate 0.1), batch 64,
one epoch of 1024 random samples (``quick``: 256), all parties in one process.
Bytes and rounds are what one compute party sends during the epoch, the initial
masking of the weights included (the data owners' and the model owner's sharing
excluded: they are not compute traffic); the dealer's bytes have their own column.
``wall_s`` is end to end: party setup, sharing the weights and the data, the epoch.
The plaintext baseline is the same epoch in float32 torch (autograd + SGD).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bridge.ir import (
    Graph,
    Loss,
    Node,
    ParamSpec,
    Party,
    Placement,
    PrivacyMode,
    Program,
    Role,
    SGDSpec,
    TensorSpec,
    TrainingSpec,
)
from bridge.ir import ops as irops
from bridge.reference_train import batch_schedule

SIZES = (784, 128, 128, 10)
BATCH = 64
LEARNING_RATE = 0.1


def mlp_train_program(sizes: tuple[int, ...] = SIZES, seed: int = 0) -> tuple[Program, dict[str, np.ndarray]]:
    """The workload's Program (He-initialised weights) with its training spec and placement."""
    rng = np.random.default_rng(seed)
    nodes, params, weights = [], {}, {}
    value = "x"
    for i, (fan_in, units) in enumerate(zip(sizes, sizes[1:])):
        name = f"dense_{i}"
        params[f"{name}/kernel"] = ParamSpec(shape=(fan_in, units))
        params[f"{name}/bias"] = ParamSpec(shape=(units,))
        weights[f"{name}/kernel"] = (rng.normal(size=(fan_in, units)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        weights[f"{name}/bias"] = np.zeros(units, np.float32)
        nodes.append(Node(name=name, op=irops.Dense(units=units), inputs=(value,), output=name,
                          params={"kernel": f"{name}/kernel", "bias": f"{name}/bias"}))
        activation = irops.Relu() if i < len(sizes) - 2 else irops.Softmax()
        nodes.append(Node(name=f"{activation.kind}_{i}", op=activation, inputs=(name,), output=f"{activation.kind}_{i}"))
        value = f"{activation.kind}_{i}"
    graph = Graph(inputs={"x": TensorSpec(shape=(None, sizes[0]))}, outputs={value: TensorSpec(shape=(None, sizes[-1]))},
                  parameters=params, nodes=tuple(nodes))
    roles = {"model_owner": Role.MODEL_OWNER, "alice": Role.DATA_OWNER, "server0": Role.COMPUTE,
             "server1": Role.COMPUTE, "dealer": Role.DEALER}
    placement = Placement(
        parties=tuple(Party(name=n, roles=frozenset({r})) for n, r in roles.items()),
        input_owners={"x": "alice"}, param_owner="model_owner", output_receivers={value: ("alice",)},
    )
    spec = TrainingSpec(loss=Loss.SPARSE_CATEGORICAL_CROSSENTROPY, optimizer=SGDSpec(learning_rate=LEARNING_RATE),
                        batch_size=BATCH)
    program = Program(name="mlp_train", graph=graph, placement=placement,
                      privacy=PrivacyMode.ENCRYPTED_TRAINING, training=spec)
    return program, weights


def random_data(rows: int, seed: int = 0, sizes: tuple[int, ...] = SIZES) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, size=(rows, sizes[0])), rng.integers(0, sizes[-1], size=rows)


def plaintext_torch_seconds(weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, repeats: int = 5) -> float:
    """The same epoch in float32 torch, same batches; best of ``repeats`` after a warm-up."""
    import torch

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


def mlp_train(backend_name: str, quick: bool = False, check_overflow: bool = True) -> dict[str, Any]:
    """One epoch of encrypted training on ``backend_name``: a row of the bench table."""
    from bridge.registry import get_backend

    rows = 256 if quick else 1024
    program, weights = mlp_train_program()
    x, y = random_data(rows)
    backend = get_backend(backend_name)
    compute = program.placement.compute_parties
    dealer = program.placement.dealer
    start = time.perf_counter()
    executable = backend.prepare_training(program, weights, check_overflow=check_overflow, timeout_s=120)
    executable.load_data({"alice": (x, y)})
    before = executable.parties.stats.snapshot()
    for batch in batch_schedule(rows, BATCH, 0, seed=0):
        executable.train_batch(batch)
    wall = time.perf_counter() - start
    stats = executable.parties.stats.since(before)
    setup = executable.setup_stats
    executable.close()
    plain = plaintext_torch_seconds(weights, x, y)
    exclude = ("share:",)
    return {
        "workload": "mlp_train" + ("" if check_overflow else " (no overflow check)") + (" (quick)" if quick else ""),
        "backend": backend_name,
        "wall_s": wall,
        "plaintext_torch_s": plain,
        "ratio": wall / plain,
        "bytes_per_party": max(stats.total_bytes(p, exclude) + setup.total_bytes(p, exclude) for p in compute),
        "rounds": max(stats.total_rounds(p, exclude) + setup.total_rounds(p, exclude) for p in compute),
        "dealer_bytes": stats.total_bytes(dealer) + setup.total_bytes(dealer) if dealer else 0,
    }
