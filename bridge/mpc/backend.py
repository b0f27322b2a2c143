"""The shared shape of an MPC backend: everything but the tensor kernels is protocol code here."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np

from bridge.backend import Backend, Capabilities, Executable, TrainingExecutable
from bridge.ir import PrivacyMode, Program
from bridge.ir.ops import OP_KINDS
from bridge.mpc.kernels import RingKernels

SECURE_MODES = frozenset({PrivacyMode.ENCRYPTED_SERVING, PrivacyMode.ENCRYPTED_TRAINING})


class SecureBackend(Backend):
    """Two compute parties and a dealer over Z_2^64; a subclass supplies the kernels."""

    description = ""

    @abstractmethod
    def make_kernels(self, **options: Any) -> RingKernels:
        """The framework's exact ring kernels."""

    def capabilities(self) -> Capabilities:
        return Capabilities(privacy_modes=SECURE_MODES, ops=frozenset(OP_KINDS), description=self.description)

    def prepare(self, program: Program, weights: Mapping[str, np.ndarray], **options: Any) -> Executable:
        from bridge.mpc.session import SecureExecutable

        self.check_supported(program)
        timeout_s = float(options.pop("timeout_s", 30.0))
        return SecureExecutable(program, weights, self.make_kernels(**options), timeout_s=timeout_s)

    def prepare_training(
        self, program: Program, weights: Mapping[str, np.ndarray], **options: Any
    ) -> TrainingExecutable:
        """Encrypted training (``bridge.mpc.training``).  Options: ``metrics``,
        ``check_overflow``, ``overflow_bound``, ``timeout_s``; the rest go to the kernels."""
        from bridge.mpc.training import SecureTrainingExecutable

        self.check_supported(program)
        settings = {k: options.pop(k) for k in ("metrics", "check_overflow", "overflow_bound", "timeout_s") if k in options}
        return SecureTrainingExecutable(program, weights, self.make_kernels(**options), **settings)
