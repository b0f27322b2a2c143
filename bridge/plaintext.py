"""The ``plaintext`` backend: the float64 reference behind the backend interface.

No privacy at all (privacy mode "none" only): everything runs in one process in
the clear.  It is what ``privatize(model, privacy="none")`` runs on, and the
baseline every secure backend is compared with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bridge.backend import Backend, Capabilities, Executable, RunResult, TrainingExecutable
from bridge.ir import PrivacyMode, Program, validate_program, validate_weights
from bridge.ir.ops import OP_KINDS
from bridge.reference import as_float64, check_inputs, evaluate


class PlaintextExecutable(Executable):
    """A validated Program with its weights held as float64 copies."""

    def __init__(self, program: Program, weights: Mapping[str, np.ndarray]) -> None:
        self.program = program
        self._weights = as_float64(weights)

    def run(self, inputs: Mapping[str, np.ndarray]) -> RunResult:
        values = evaluate(self.program, self._weights, check_inputs(self.program, inputs))
        return RunResult({name: values[name] for name in self.program.graph.outputs})


class PlaintextBackend(Backend):
    name = "plaintext"

    def capabilities(self) -> Capabilities:
        return Capabilities(
            privacy_modes=frozenset({PrivacyMode.NONE}),
            ops=frozenset(OP_KINDS),
            description="NumPy float64 reference in one process, in the clear: no privacy",
        )

    def prepare(self, program: Program, weights: Mapping[str, np.ndarray], **options: Any) -> PlaintextExecutable:
        if options:
            raise TypeError(
                f"the plaintext backend takes no options, received {sorted(options)}; "
                "options such as timeout_s or device apply to the secure backends"
            )
        validate_program(program)
        validate_weights(program, weights)
        self.check_supported(program)
        return PlaintextExecutable(program, weights)

    def prepare_training(
        self, program: Program, weights: Mapping[str, np.ndarray], **options: Any
    ) -> TrainingExecutable:
        """Training in the clear, in float64 (``bridge.reference_train``): the baseline of
        encrypted training.  Option: ``metrics`` (accuracy names)."""
        from bridge.reference_train import ReferenceTrainingExecutable

        metrics = tuple(options.pop("metrics", ()))
        if options:
            raise TypeError(f"plaintext training takes only the option 'metrics', received {sorted(options)}")
        return ReferenceTrainingExecutable(program, weights, metrics)
