"""The kernel table: which exact matmul path each backend chose on this host, and why.

``kernel_rows(backends)`` runs one batch of every workload (``mlp_infer``,
``cnn_infer`` and a batch of ``mlp_train``), so that every shape class they use is
timed if it was not yet (``bridge.mpc.calibration``), then reads the backend's cached
choices: one row per shape class with each candidate's best time and the choice.
``privacy-bridge bench --kernels`` prints it.

``python -m bridge.bench.kernels [--repeat 20]`` times every exact path of every
framework on a fixed list of shapes, with one float64 matmul for scale (a path whose
result differs from NumPy's is printed as WRONG).  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from bridge.bench.workloads import BATCH, INFERENCE_WORKLOADS, mlp_train_program, random_data

#: matmul shapes of the workloads: dense layers, im2col convolutions, training's transposes
SHAPES = [(128, 784, 128), (128, 128, 128), (128, 128, 10), (32 * 576, 25, 16), (32 * 64, 400, 16),
          (784, 64, 128), (64, 10, 128), (1024, 1024, 1024), (128, 5000, 128)]


def prime(backend_name: str) -> None:
    """One batch of every workload on ``backend_name``: every shape class they use gets timed."""
    from bridge.registry import get_backend

    backend = get_backend(backend_name)
    for make in INFERENCE_WORKLOADS.values():
        workload = make()
        executable = backend.prepare(workload.program, workload.weights)
        executable.run(workload.inputs())
        executable.close()
    program, weights = mlp_train_program()
    executable = backend.prepare_training(program, weights)
    executable.load_data({"alice": random_data(BATCH)})
    executable.train_batch(np.arange(BATCH))
    executable.close()


def kernel_rows(backends: Iterable[str], recalibrate: bool = False) -> list[dict[str, Any]]:
    """Per backend and shape class: each exact path's best time (ms) and the one chosen."""
    from bridge.registry import get_backend

    rows = []
    for name in backends:
        if recalibrate:
            get_backend(name).make_kernels().chooser.forget()
        prime(name)
        kernels = get_backend(name).make_kernels()  # reads what the runs above cached
        chooser = kernels.chooser
        with kernels.parallel_parties(3):  # the thread count the party threads ran with
            threads = chooser.threads()
            rows += [{"backend": name, "threads": threads, **row} for row in chooser.table()]
    return rows


# -- every path on fixed shapes (development) ----------------------------------------------------

def best_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    deadline = time.perf_counter() + 5.0
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return min(times) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Time every exact Z_2^64 matmul path on this host.")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--max-macs", type=float, default=2e8, help="skip shapes above this many multiply-adds")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import torch  # before TensorFlow

    from backends.torch_spdz.kernels import CPU_PATHS, TorchKernels
    from bridge.mpc.calibration import cpu_model
    from bridge.mpc.numpy_kernels import NumpyKernels

    kernels: dict[str, Any] = {f"torch {p}": TorchKernels(matmul=p) for p in CPU_PATHS}
    try:
        import tensorflow as tf

        from backends.tf_pond.kernels import PATHS, TfKernels

        kernels.update({f"tf {p}": TfKernels(matmul=p) for p in PATHS})
    except ImportError:
        tf = None
    print(f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)" + (f", tensorflow {tf.__version__}" if tf else ""))
    print("milliseconds, best of repeats; f64 = one float64 matmul of the same shape, for scale\n")
    columns = [*kernels, "torch f64"] + (["tf f64"] if tf else [])
    print(f"{'M x K x N':>18} " + " ".join(f"{c:>13}" for c in columns))
    rng = np.random.default_rng(0)
    oracle = NumpyKernels()
    for m, k, n in SHAPES:
        if m * k * n > args.max_macs:
            continue
        a = rng.integers(-(2**63), 2**63 - 1, size=(m, k), dtype=np.int64, endpoint=True)
        b = rng.integers(-(2**63), 2**63 - 1, size=(k, n), dtype=np.int64, endpoint=True)
        expected = oracle.matmul(a, b)
        row = {}
        for label, ring in kernels.items():
            ta, tb = ring.from_numpy(a), ring.from_numpy(b)
            ok = np.array_equal(ring.to_numpy(ring.matmul(ta, tb)), expected)
            row[label] = f"{best_ms(lambda: ring.to_numpy(ring.matmul(ta, tb)), args.repeat):.3f}" if ok else "WRONG"
        fa, fb = torch.from_numpy(a).double(), torch.from_numpy(b).double()
        row["torch f64"] = f"{best_ms(lambda: fa @ fb, args.repeat):.3f}"
        if tf:
            ga, gb = tf.constant(a, tf.float64), tf.constant(b, tf.float64)
            row["tf f64"] = f"{best_ms(lambda: tf.matmul(ga, gb).numpy(), args.repeat):.3f}"
        print(f"{f'{m} x {k} x {n}':>18} " + " ".join(f"{row.get(c, '-'):>13}" for c in columns), flush=True)


if __name__ == "__main__":
    sys.exit(main())
