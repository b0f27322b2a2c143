"""The dataflow graph: named values, nodes, parameters."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bridge.ir.ops import Op

Dim = int | None


class TensorSpec(BaseModel):
    """A value's shape (dim 0 is the free batch dimension, written None) and dtype.

    dtype "int32" (graph inputs only) declares token ids: the caller passes ids of shape
    ``shape[:-1]`` and the data owner one-hot encodes them to ``shape`` (``bridge.ir.tokens``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shape: tuple[Dim, ...]
    dtype: Literal["float32", "float64", "int32"] = "float32"

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The shape without the batch dimension."""
        return tuple(int(d) for d in self.shape[1:])  # type: ignore[arg-type]


class ParamSpec(BaseModel):
    """A trainable or frozen parameter: fixed shape, no batch dimension."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shape: tuple[int, ...]
    dtype: Literal["float32", "float64"] = "float32"
    trainable: bool = True


class Node(BaseModel):
    """One op applied to named values, producing one named value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    op: Op
    inputs: tuple[str, ...]
    output: str
    #: parameter role (e.g. "kernel") -> parameter name in Graph.parameters
    params: dict[str, str] = Field(default_factory=dict)


class Graph(BaseModel):
    """Nodes in topological order, with the specs of inputs, outputs and parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    parameters: dict[str, ParamSpec] = Field(default_factory=dict)
    nodes: tuple[Node, ...]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r}; nodes are {[n.name for n in self.nodes]}")
