"""torch-spdz: SPDZ-style 2PC with a dealer, on PyTorch int64 tensors (CPU or CUDA)."""

from __future__ import annotations

from typing import Any

from bridge.cluster import ClusterConfig
from bridge.mpc.backend import SecureBackend
from bridge.mpc.comm import Transport
from bridge.mpc.kernels import RingKernels


class TorchSpdzBackend(SecureBackend):
    name = "torch-spdz"
    description = "SPDZ (Beaver triples from a seeded dealer) on PyTorch; exact float64 limb matmul"

    def make_kernels(self, **options: Any) -> RingKernels:
        from backends.torch_spdz.kernels import TorchKernels

        return TorchKernels(**options)

    def make_transport(self, cluster: ClusterConfig, party: str) -> Transport:
        """Byte frames between processes over torch.distributed (gloo over TCP)."""
        from backends.torch_spdz.transport import GlooTransport

        return GlooTransport(cluster, party)
