"""Opset v1: every op the IR knows, each with typed attributes.

An op is a pydantic model whose ``kind`` field is the discriminator, so a Node's
attributes are validated per op (like an ONNX schema) instead of living in a
free-form dict.  Adding an op means adding one class here and one entry in each
rule table (shapes, reference, secure forward/backward).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

OPSET_VERSION = 1


class _Op(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: parameter roles this op reads, e.g. ("kernel", "bias"); fixed per op class.
    @property
    def param_roles(self) -> tuple[str, ...]:
        return ()

    #: how many inputs the op takes (None: two or more).
    @property
    def arity(self) -> int | None:
        return 1


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair of ints, received {value!r}")
    return (int(value[0]), int(value[1]))


class _Window(_Op):
    """Shared by pools: a 2-D window over NHWC input."""

    pool_size: tuple[int, int]
    strides: tuple[int, int]
    padding: Literal["valid", "same"] = "valid"

    @field_validator("pool_size", "strides", mode="before")
    @classmethod
    def _as_pair(cls, v):  # noqa: N805 - pydantic validator
        return _pair(v)


class Dense(_Op):
    kind: Literal["dense"] = "dense"
    units: int = Field(gt=0)
    use_bias: bool = True

    @property
    def param_roles(self) -> tuple[str, ...]:
        return ("kernel", "bias") if self.use_bias else ("kernel",)


class Conv2D(_Op):
    kind: Literal["conv2d"] = "conv2d"
    filters: int = Field(gt=0)
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Literal["valid", "same"] = "valid"
    use_bias: bool = True

    @field_validator("kernel_size", "strides", mode="before")
    @classmethod
    def _as_pair(cls, v):  # noqa: N805
        return _pair(v)

    @property
    def param_roles(self) -> tuple[str, ...]:
        return ("kernel", "bias") if self.use_bias else ("kernel",)


class AvgPool2D(_Window):
    kind: Literal["avg_pool2d"] = "avg_pool2d"


class MaxPool2D(_Window):
    kind: Literal["max_pool2d"] = "max_pool2d"


class GlobalAvgPool2D(_Op):
    kind: Literal["global_avg_pool2d"] = "global_avg_pool2d"


class Flatten(_Op):
    kind: Literal["flatten"] = "flatten"


class Reshape(_Op):
    kind: Literal["reshape"] = "reshape"
    #: target shape without the batch dimension; one entry may be -1.
    target_shape: tuple[int, ...]


class Add(_Op):
    kind: Literal["add"] = "add"

    @property
    def arity(self) -> int | None:
        return None


class Relu(_Op):
    kind: Literal["relu"] = "relu"


class Sigmoid(_Op):
    kind: Literal["sigmoid"] = "sigmoid"


class Tanh(_Op):
    kind: Literal["tanh"] = "tanh"


class Softmax(_Op):
    kind: Literal["softmax"] = "softmax"
    axis: Literal[-1] = -1


class BatchNorm(_Op):
    """Inference-form batch normalisation over the last axis."""

    kind: Literal["batch_norm"] = "batch_norm"
    epsilon: float = Field(gt=0.0)

    @property
    def param_roles(self) -> tuple[str, ...]:
        return ("gamma", "beta", "moving_mean", "moving_variance")


class Identity(_Op):
    """Dropout at inference, and any layer that passes its input through."""

    kind: Literal["identity"] = "identity"


Op = Annotated[
    Union[
        Dense,
        Conv2D,
        AvgPool2D,
        MaxPool2D,
        GlobalAvgPool2D,
        Flatten,
        Reshape,
        Add,
        Relu,
        Sigmoid,
        Tanh,
        Softmax,
        BatchNorm,
        Identity,
    ],
    Field(discriminator="kind"),
]

OP_KINDS: tuple[str, ...] = (
    "dense",
    "conv2d",
    "avg_pool2d",
    "max_pool2d",
    "global_avg_pool2d",
    "flatten",
    "reshape",
    "add",
    "relu",
    "sigmoid",
    "tanh",
    "softmax",
    "batch_norm",
    "identity",
)
