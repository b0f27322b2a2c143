"""torch-spdz: SPDZ-style 2PC with a dealer, on PyTorch int64 tensors (CPU or CUDA)."""

from __future__ import annotations

from typing import Any

from bridge.mpc.backend import SecureBackend
from bridge.mpc.kernels import RingKernels


class TorchSpdzBackend(SecureBackend):
    name = "torch-spdz"
    description = "SPDZ (Beaver triples from a seeded dealer) on PyTorch; exact float64 limb matmul"

    def make_kernels(self, **options: Any) -> RingKernels:
        from backends.torch_spdz.kernels import TorchKernels

        return TorchKernels(**options)
