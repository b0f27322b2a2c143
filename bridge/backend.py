"""The backend interface: compile (``prepare``) apart from run, as in ONNX's backend API."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bridge.ir import PrivacyMode, Program


class BackendError(RuntimeError):
    """A backend cannot do what was asked; the message says what it can do instead."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend supports, so that callers can ask before they try."""

    privacy_modes: frozenset[PrivacyMode]
    ops: frozenset[str]
    description: str = ""
    #: op kind -> why it is not supported (the one place a backend lists its gaps)
    excluded_ops: Mapping[str, str] = field(default_factory=dict)


@dataclass
class RunResult:
    """Outputs of one run, and the communication it cost (None for plaintext)."""

    outputs: dict[str, np.ndarray]
    stats: Any = None
    #: queries rerun with fresh randomness after the range check flagged them
    reruns: int = 0


class Executable(ABC):
    """A Program prepared for one backend: weights loaded, parties set up."""

    program: Program

    @abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> RunResult:
        """Evaluate the graph on one batch of inputs."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release parties, threads or sockets."""


@dataclass
class StepResult:
    """What the model owner learns from one training or evaluation step: batch aggregates only."""

    #: mean loss over the batch's rows
    loss: float
    #: metric name -> mean over the batch's rows (e.g. {"accuracy": 0.91})
    metrics: dict[str, float]
    #: rows in the batch
    count: int
    stats: Any = None


class TrainingExecutable(ABC):
    """A Program with a ``TrainingSpec``, prepared for training on one backend.

    The driver (``frontends.keras.training.fit_encrypted``) loads each data owner's
    rows once, then calls ``train_batch`` with the rows of each batch in the order
    of ``bridge.reference_train.batch_schedule``, and finally collects the trained
    weights for the model owner (or keeps them on the backend, ``serving``).
    """

    program: Program

    @abstractmethod
    def load_data(self, data: Mapping[str, tuple[np.ndarray, np.ndarray]], split: str = "train") -> int:
        """Each data owner contributes its own ``(x, y)``; rows are numbered in ``data``'s
        order.  ``split`` is "train" or "validation".  Returns the number of rows."""

    @abstractmethod
    def train_batch(self, rows: np.ndarray) -> StepResult:
        """One optimizer step on the given rows of the training split."""

    @abstractmethod
    def evaluate_batch(self, rows: np.ndarray, split: str = "validation") -> StepResult:
        """Loss and metrics of the current parameters on the given rows, no update."""

    @abstractmethod
    def weights(self) -> dict[str, np.ndarray]:
        """The current parameters, delivered to the model owner (IR parameter names);
        ``{}`` in a process that hosts only other parties (distributed mode)."""

    def serving(self) -> Executable:
        """The trained model, still on the backend, ready to serve (where supported)."""
        raise BackendError(f"{type(self).__name__} cannot keep a trained model for serving")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release parties, threads or sockets."""


class Backend(ABC):
    """A way of executing Programs.  Third parties subclass this and register an entry point."""

    name: str = ""

    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abstractmethod
    def prepare(self, program: Program, weights: Mapping[str, np.ndarray], **options: Any) -> Executable:
        """Validate, then compile ``program`` for execution."""

    def prepare_training(
        self, program: Program, weights: Mapping[str, np.ndarray], **options: Any
    ) -> TrainingExecutable:
        """Validate, then set up ``program`` (which carries a ``TrainingSpec``) for training."""
        raise BackendError(
            f"backend {self.name!r} does not train; privacy='encrypted_training' runs on the "
            "secure backends (torch-spdz, tf-pond) and in the clear on 'plaintext'."
        )

    def check_supported(self, program: Program) -> None:
        """Refuse a Program this backend cannot run, naming the node and the alternative."""
        caps = self.capabilities()
        if program.privacy not in caps.privacy_modes:
            modes = sorted(m.value for m in caps.privacy_modes)
            raise BackendError(
                f"privacy={program.privacy.value!r} is not available on backend {self.name!r} yet; "
                f"it supports {modes}. Pick another backend (privacy-bridge backends lists them) "
                "or another privacy mode."
            )
        for node in program.graph.nodes:
            if node.op.kind not in caps.ops:
                why = caps.excluded_ops.get(node.op.kind, "not implemented")
                raise BackendError(
                    f"node {node.name!r} uses op {node.op.kind!r}, which backend {self.name!r} "
                    f"does not support ({why})."
                )
