"""The shared shape of an MPC backend: everything but the tensor kernels is protocol code here."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np

from bridge.backend import Backend, BackendError, Capabilities, Executable, TrainingExecutable
from bridge.cluster import ClusterConfig
from bridge.ir import PrivacyMode, Program
from bridge.ir.ops import OP_KINDS
from bridge.mpc.comm import Transport
from bridge.mpc.kernels import RingKernels
from bridge.mpc.runtime import PartyRunner

SECURE_MODES = frozenset({PrivacyMode.ENCRYPTED_SERVING, PrivacyMode.ENCRYPTED_TRAINING, PrivacyMode.FEDERATED})


class SecureBackend(Backend):
    """Two compute parties and a dealer over Z_2^64; a subclass supplies the kernels."""

    description = ""

    @abstractmethod
    def make_kernels(self, **options: Any) -> RingKernels:
        """The framework's exact ring kernels."""

    def capabilities(self) -> Capabilities:
        return Capabilities(privacy_modes=SECURE_MODES, ops=frozenset(OP_KINDS), description=self.description)

    def make_transport(self, cluster: ClusterConfig, party: str) -> Transport:
        """This process's connections to the other parties of ``cluster``, as ``party``."""
        raise BackendError(
            f"backend {self.name!r} runs all parties in one process only; it has no transport "
            "between processes. Run it without cluster=, or pick torch-spdz or tf-pond."
        )

    def _runner(self, program: Program, kernels: RingKernels, options: dict[str, Any]) -> PartyRunner | None:
        """``cluster=`` (a ClusterConfig or a TOML path) and ``party=``: run only that party
        here, over ``make_transport``; neither: every party in threads of this process."""
        cluster, party = options.pop("cluster", None), options.pop("party", None)
        if cluster is None:
            if party is not None:
                raise ValueError(f"party={party!r} needs cluster= (the cluster file that says where the others run)")
            return None
        from bridge.mpc.distributed import distributed_runner

        return distributed_runner(self, program, kernels, cluster, party)

    def prepare(self, program: Program, weights: Mapping[str, np.ndarray], **options: Any) -> Executable:
        """Options: ``timeout_s``; ``check_overflow``, ``overflow_bound``, ``max_reruns``
        (the range check, ``bridge.mpc.session``); ``cluster`` and ``party`` (distributed,
        see ``_runner``); the rest go to the kernels."""
        from bridge.mpc.session import SecureExecutable

        self.check_supported(program)
        timeout_s = float(options.pop("timeout_s", 30.0))
        checks = {k: options.pop(k) for k in ("check_overflow", "overflow_bound", "max_reruns") if k in options}
        distributed = {k: options.pop(k) for k in ("cluster", "party") if k in options}
        kernels = self.make_kernels(**options)
        runner = self._runner(program, kernels, distributed)
        return SecureExecutable(program, weights, kernels, timeout_s=timeout_s, runner=runner, **checks)

    def prepare_training(
        self, program: Program, weights: Mapping[str, np.ndarray], **options: Any
    ) -> TrainingExecutable:
        """Encrypted training (``bridge.mpc.training``).  Options: ``metrics``,
        ``check_overflow``, ``overflow_bound``, ``timeout_s``; the rest go to the kernels."""
        from bridge.mpc.training import SecureTrainingExecutable

        self.check_supported(program)
        settings = {k: options.pop(k) for k in ("metrics", "check_overflow", "overflow_bound", "timeout_s") if k in options}
        distributed = {k: options.pop(k) for k in ("cluster", "party") if k in options}
        kernels = self.make_kernels(**options)
        runner = self._runner(program, kernels, distributed)
        return SecureTrainingExecutable(program, weights, kernels, runner=runner, **settings)
