"""Check torch-spdz on CUDA: the protocol tests and both inference workloads, vs CPU.

Run on a machine with a GPU:  python scripts/gpu_check.py
"""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backends.torch_spdz.kernels import TorchKernels  # noqa: E402
from bridge.mpc.session import SecureExecutable  # noqa: E402
from bridge.reference import run_reference  # noqa: E402
from frontends.cli.bench import INFERENCE_WORKLOADS  # noqa: E402


def protocol_tests(kernels) -> int:
    import tests.mpc.test_protocols as suite

    failures = 0
    for name, fn in inspect.getmembers(suite, inspect.isfunction):
        if not name.startswith("test_") or "name" in inspect.signature(fn).parameters:
            continue
        params = inspect.signature(fn).parameters
        kwargs = {}
        if "kernels" in params:
            kwargs["kernels"] = kernels
        if "parties" in params:
            kwargs["parties"] = suite.make_parties(kernels)
        runs = [{"compare_bits": 64}, {"compare_bits": 36}] if "compare_bits" in params else [{}]
        for extra in runs:
            try:
                fn(**kwargs, **extra)
                print(f"PASS {name} {extra or ''}")
            except Exception as exc:  # noqa: BLE001
                failures += 1
                print(f"FAIL {name} {extra or ''}: {type(exc).__name__}: {str(exc)[:300]}")
    return failures


def workloads(device: str) -> None:
    for name, build in INFERENCE_WORKLOADS.items():
        w = build()
        ex = SecureExecutable(w.program, w.weights, TorchKernels(device=device))
        x = w.inputs()
        ex.run(x)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            out = ex.run(x).outputs
            times.append(time.perf_counter() - start)
        (got,) = out.values()
        (ref,) = run_reference(w.program, w.weights, x).values()
        print(f"{name} on {device}: best {min(times) * 1e3:.1f} ms, max |err| vs reference {np.abs(got - ref).max():.2e}")


if __name__ == "__main__":
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    failed = protocol_tests(TorchKernels(device="cuda"))
    workloads("cuda")
    workloads("cpu")
    sys.exit(1 if failed else 0)
