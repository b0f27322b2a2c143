"""A Program: graph + placement + numerics + privacy mode (+ training spec)."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bridge.ir.graph import Graph
from bridge.ir.ops import OPSET_VERSION, SINCE
from bridge.ir.placement import Placement

SCHEMA_VERSION = 1


class PrivacyMode(str, Enum):
    NONE = "none"
    FEDERATED = "federated"
    ENCRYPTED_TRAINING = "encrypted_training"
    ENCRYPTED_SERVING = "encrypted_serving"


class Numerics(BaseModel):
    """Fixed-point numbers in the ring Z_2^ring_bits.

    A real v is encoded as round(v * 2^frac_bits) mod 2^ring_bits.  Values that a
    secure comparison reads (ReLU, max-pool, argmax inputs) must satisfy
    |v| < 2^(compare_bits - 1 - frac_bits): comparisons work modulo 2^compare_bits,
    which is exact inside that range and far cheaper than comparing on all 64 bits.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ring_bits: Literal[64] = 64
    frac_bits: int = Field(default=16, ge=1, le=30)
    compare_bits: int = Field(default=64, ge=8, le=64)

    @model_validator(mode="after")
    def _compare_covers_fraction(self) -> "Numerics":
        if self.compare_bits < self.frac_bits + 8:
            raise ValueError(
                f"compare_bits={self.compare_bits} leaves fewer than 7 integer bits above "
                f"frac_bits={self.frac_bits}; use compare_bits >= frac_bits + 8"
            )
        return self

    @property
    def scale(self) -> int:
        return 1 << self.frac_bits

    @property
    def max_abs_value(self) -> float:
        """Largest magnitude that can be encoded at all."""
        return float(2 ** (self.ring_bits - 1 - self.frac_bits))

    @property
    def max_abs_compared(self) -> float:
        """Largest magnitude an input of a secure comparison may have."""
        return float(2 ** (self.compare_bits - 1 - self.frac_bits))


class Loss(str, Enum):
    MSE = "mse"
    BINARY_CROSSENTROPY = "binary_crossentropy"
    CATEGORICAL_CROSSENTROPY = "categorical_crossentropy"
    SPARSE_CATEGORICAL_CROSSENTROPY = "sparse_categorical_crossentropy"


class SGDSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["sgd"] = "sgd"
    learning_rate: float = Field(gt=0.0)
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)


class AdamSpec(BaseModel):
    """Keras 3 Adam (no amsgrad): bias-corrected step lr sqrt(1 - b2^t) / (1 - b1^t)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["adam"] = "adam"
    learning_rate: float = Field(gt=0.0)
    beta_1: float = Field(default=0.9, ge=0.0, lt=1.0)
    beta_2: float = Field(default=0.999, ge=0.0, lt=1.0)
    epsilon: float = Field(default=1e-7, ge=0.0)


class RMSpropSpec(BaseModel):
    """Keras 3 RMSprop: w -= lr g / sqrt(v + epsilon), optional momentum and centering."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["rmsprop"] = "rmsprop"
    learning_rate: float = Field(gt=0.0)
    rho: float = Field(default=0.9, ge=0.0, lt=1.0)
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    epsilon: float = Field(default=1e-7, ge=0.0)
    centered: bool = False


class TrainingSpec(BaseModel):
    """What ``model.compile()`` and ``fit()`` said, in protocol-neutral form."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    loss: Loss
    from_logits: bool = False
    optimizer: SGDSpec | AdamSpec | RMSpropSpec = Field(discriminator="kind")
    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=32, ge=1)
    shuffle: bool = True


class Program(BaseModel):
    """The unit every backend executes.  Weights travel beside it (see ``bridge.ir.io``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    opset_version: int = OPSET_VERSION
    name: str = "model"
    graph: Graph
    placement: Placement
    numerics: Numerics = Numerics()
    privacy: PrivacyMode = PrivacyMode.NONE
    training: TrainingSpec | None = None

    @model_validator(mode="after")
    def _known_opset(self) -> "Program":
        """Programs of every opset up to this library's load; a newer one is refused by name."""
        if not 1 <= self.opset_version <= OPSET_VERSION:
            raise ValueError(
                f"program records opset v{self.opset_version}; this privacy-bridge reads opsets v1 to "
                f"v{OPSET_VERSION}. Upgrade privacy-bridge, or re-export the model with this version."
            )
        for node in self.graph.nodes:
            if SINCE[node.op.kind] > self.opset_version:
                raise ValueError(
                    f"node {node.name!r} uses op {node.op.kind!r}, which opset v{SINCE[node.op.kind]} "
                    f"introduced, but the program records opset v{self.opset_version}; re-export it"
                )
        return self
