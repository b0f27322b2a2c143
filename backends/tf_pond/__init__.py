"""tf-pond: Pond (masked tensors reused across batches) on stock TensorFlow int64 ops.

TensorFlow is imported only when this backend's kernels are made.
"""

from __future__ import annotations

from typing import Any

from bridge.mpc.backend import SecureBackend
from bridge.mpc.kernels import RingKernels


class TfPondBackend(SecureBackend):
    name = "tf-pond"
    description = "Pond (masked weights reused across batches) on stock TensorFlow int64 ops"

    def make_kernels(self, **options: Any) -> RingKernels:
        from backends.tf_pond.kernels import TfKernels

        return TfKernels(**options)
