"""tf-pond: Pond (masked tensors reused across batches) on stock TensorFlow int64 ops.

TensorFlow is imported only when this backend's kernels are made.
"""

from __future__ import annotations

from typing import Any

from bridge.cluster import ClusterConfig
from bridge.mpc.backend import SecureBackend
from bridge.mpc.comm import Transport
from bridge.mpc.kernels import RingKernels


class TfPondBackend(SecureBackend):
    name = "tf-pond"
    description = "Pond (masked weights reused across batches) on stock TensorFlow int64 ops"

    def make_kernels(self, **options: Any) -> RingKernels:
        from backends.tf_pond.kernels import TfKernels

        return TfKernels(**options)

    def make_transport(self, cluster: ClusterConfig, party: str) -> Transport:
        """Byte frames between processes over gRPC, one server per party."""
        from backends.tf_pond.transport import GrpcTransport

        return GrpcTransport(cluster, party)
