"""Time the exact Z_2^64 matmul paths of every ring-kernel backend on this machine.

    .venv/bin/python scripts/bench_kernels.py [--repeat 20]

For each shape it prints the best-of-N wall time (ms) of:
  numpy u64      NumpyKernels.matmul (the oracle: NumPy's non-BLAS integer loop)
  torch i64      TorchKernels(matmul="int64"): PyTorch's int64 matmul (CPU only)
  torch limbs    TorchKernels(matmul="limbs"): six float64 products of 22-bit limbs
  torch auto     the path TorchKernels() picks for this shape on this machine
  tf i64         TfKernels.matmul: tf.linalg.matmul on int64
  tf limbs       the same limb algorithm in TensorFlow, under tf.function (comparison only)
  cuda limbs     TorchKernels(device="cuda") where CUDA is present
and, for scale, one float64 matmul of the same shape (not exact mod 2^64).  A path
whose result differs from the oracle is printed as WRONG.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402  - torch before TensorFlow

from backends.torch_spdz.kernels import LIMB_BITS, LIMB_PAIRS, LIMB_WIDTHS, MAX_EXACT_K, TorchKernels  # noqa: E402
from bridge.mpc.numpy_kernels import NumpyKernels  # noqa: E402

SHAPES = [(128, 784, 128), (128, 128, 128), (32 * 576, 25, 16), (1024, 400, 16), (1024, 1024, 1024),
          (128, 5000, 128)]


def best_ms(fn: Callable[[], object], repeat: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()
    sync()
    times = []
    deadline = time.perf_counter() + 5.0
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return min(times) * 1e3


def tf_limb_matmul(tf):
    """The torch limb algorithm (backends/torch_spdz/kernels.py) in TensorFlow ops, K <= 2^11."""
    shifts = tf.constant([LIMB_BITS * i for i in range(3)], tf.int64)[:, None, None]
    masks = tf.constant([(1 << w) - 1 for w in LIMB_WIDTHS], tf.int64)[:, None, None]
    halves = [1 << (w - 1) for w in LIMB_WIDTHS]
    half_f = tf.constant(halves, tf.float64)[:, None, None]
    offset = sum(h << (LIMB_BITS * i) for i, h in enumerate(halves))
    offset = tf.constant(offset - (1 << 64) if offset >= 1 << 63 else offset, tf.int64)
    left = [i for i, _ in LIMB_PAIRS]
    right = [j for _, j in LIMB_PAIRS]
    weights = tf.constant([1 << (LIMB_BITS * (i + j)) for i, j in LIMB_PAIRS], tf.int64)[:, None, None]

    def limbs(x):
        digits = tf.bitwise.bitwise_and(tf.bitwise.right_shift((x + offset)[None], shifts), masks)
        return tf.cast(digits, tf.float64) - half_f

    @tf.function
    def matmul(a, b):
        products = tf.matmul(tf.gather(limbs(a), left), tf.gather(limbs(b), right))
        return tf.reduce_sum(tf.cast(products, tf.int64) * weights, axis=0)

    return matmul


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--numpy-max-macs", type=float, default=2e8, help="skip the NumPy oracle above this size")
    args = parser.parse_args()

    try:
        import tensorflow as tf

        from backends.tf_pond.kernels import TfKernels

        tfk = TfKernels()
        tf_limbs = tf_limb_matmul(tf)
    except ImportError:
        tf = tfk = tf_limbs = None
    cuda = torch.cuda.is_available()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), numpy {np.__version__}"
          + (f", tensorflow {tf.__version__}" if tf else ", no tensorflow")
          + (f", CUDA {torch.cuda.get_device_name()}" if cuda else ""))
    print("milliseconds, best of repeats; f64 = one float64 matmul of the same shape, for scale\n")

    ref_kernels = NumpyKernels()
    t_int = TorchKernels(matmul="int64")
    t_limb = TorchKernels(matmul="limbs")
    t_cuda = TorchKernels(device="cuda") if cuda else None
    rng = np.random.default_rng(0)
    t_auto = TorchKernels()
    columns = ["numpy u64", "torch i64", "torch limbs", "torch auto", "torch f64", "tf i64", "tf limbs", "tf f64",
               "cuda limbs", "cuda f64"]
    print(f"{'M x K x N':>20} " + " ".join(f"{c:>11}" for c in columns))
    for m, k, n in SHAPES:
        a = rng.integers(-(2**63), 2**63 - 1, size=(m, k), dtype=np.int64, endpoint=True)
        b = rng.integers(-(2**63), 2**63 - 1, size=(k, n), dtype=np.int64, endpoint=True)
        expected = t_int.to_numpy(t_int.matmul(t_int.from_numpy(a), t_int.from_numpy(b)))
        row: dict[str, str] = {}

        def timed(name, fn, to_numpy, sync=lambda: None):
            ok = np.array_equal(to_numpy(fn()), expected) if to_numpy else True
            row[name] = f"{best_ms(fn, args.repeat, sync):.3f}" if ok else "WRONG"

        if m * k * n <= args.numpy_max_macs:
            timed("numpy u64", lambda: ref_kernels.matmul(a, b), np.asarray)
        ta, tb = t_int.from_numpy(a), t_int.from_numpy(b)
        timed("torch i64", lambda: t_int.matmul(ta, tb), t_int.to_numpy)
        timed("torch limbs", lambda: t_limb.matmul(ta, tb), t_limb.to_numpy)
        row["torch auto"] = t_auto.matmul_path_for(m, k, n)
        fa, fb = ta.double(), tb.double()
        timed("torch f64", lambda: fa @ fb, None)
        if tfk is not None:
            ga, gb = tfk.from_numpy(a), tfk.from_numpy(b)
            timed("tf i64", lambda: tfk.matmul(ga, gb), tfk.to_numpy)
            if k <= MAX_EXACT_K:
                timed("tf limbs", lambda: tf_limbs(ga, gb), tfk.to_numpy)
            gfa, gfb = tf.cast(ga, tf.float64), tf.cast(gb, tf.float64)
            timed("tf f64", lambda: tf.matmul(gfa, gfb), None)
        if t_cuda is not None:
            ca, cb = t_cuda.from_numpy(a), t_cuda.from_numpy(b)
            timed("cuda limbs", lambda: t_cuda.matmul(ca, cb), t_cuda.to_numpy, torch.cuda.synchronize)
            cfa, cfb = ca.double(), cb.double()
            timed("cuda f64", lambda: cfa @ cfb, None, torch.cuda.synchronize)
        print(f"{f'{m} x {k} x {n}':>20} " + " ".join(f"{row.get(c, '-'):>11}" for c in columns), flush=True)


if __name__ == "__main__":
    main()
