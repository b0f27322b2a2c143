"""Fold inference batch normalisation into the linear op before it (serving only).

An inference BatchNormalization is a per-channel affine y = x * scale + shift.  When its
input is the output of a Dense / Conv1D / Conv2D / DepthwiseConv1D / DepthwiseConv2D that
nothing else reads (and that is not a model output), the model owner can fold it into that
op on plaintext weights before sharing: kernel' = kernel * scale on the output channels,
bias' = bias * scale + shift (a bias is created if the op had none).  Encrypted serving then
computes one op instead of two, and the range check sees the op feed what the batch norm fed
(often a ReLU, whose output gives |x| for free) instead of checking both sides of the batch
norm.  Training keeps its batch norms (their statistics are learned), and the reference
executor runs the program as written.

The rewrite of the *structure* depends on the graph alone, so every party derives the same
folded program; only the model owner, who holds the weights, folds the arrays.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np

from bridge.ir.graph import Graph, Node, ParamSpec
from bridge.ir.ops import BatchNorm
from bridge.ir.program import Program
from bridge.ir.validate import infer_value_shapes, validate_program, validate_weights

#: linear ops whose output channels are the last axis of the kernel (depthwise: its last two)
FOLDABLE_KINDS = ("dense", "conv1d", "conv2d", "depthwise_conv1d", "depthwise_conv2d")
_DEPTHWISE = ("depthwise_conv1d", "depthwise_conv2d")

Weights = dict[str, np.ndarray]


def bn_affine(op: BatchNorm, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
              variance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of the inference batch norm y = (x - mean) / sqrt(var + eps) * gamma + beta."""
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(variance, np.float64) + op.epsilon)
    return scale, np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale


def _foldable(linear: Node, bn: Node, graph: Graph, readers: Counter, param_users: Counter,
              shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """The batch norm reads the linear op's output alone, on its channel (last) axis, and the
    linear op's parameters belong to it alone (a shared kernel must not change for its other user)."""
    x = bn.inputs[0]
    if linear.op.kind not in FOLDABLE_KINDS or readers[x] != 1 or x in graph.outputs:
        return False
    rank = len(shapes[x])
    if rank == 0 or bn.op.axis % rank != rank - 1:  # type: ignore[union-attr]
        return False
    return all(param_users[p] == 1 for p in linear.params.values())


def _fresh_name(base: str, taken: Mapping[str, object]) -> str:
    name, n = base, 1
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


def fold_batch_norm(program: Program, weights: Mapping[str, np.ndarray] | None = None
                    ) -> tuple[Program, Weights | None]:
    """The program with every foldable batch norm folded into the op before it, and (when
    ``weights`` are given: the model owner) the weights rewritten to match.  A program with
    nothing to fold comes back unchanged (the same object)."""
    graph = program.graph
    if not any(n.op.kind == "batch_norm" for n in graph.nodes):
        return program, (dict(weights) if weights is not None else None)
    if weights is not None:
        validate_weights(program, weights)
    shapes = infer_value_shapes(graph)
    readers = Counter(v for n in graph.nodes for v in n.inputs)
    param_users = Counter(p for n in graph.nodes for p in n.params.values())
    params: dict[str, ParamSpec] = dict(graph.parameters)
    new_weights: Weights | None = (
        {k: np.asarray(v) for k, v in weights.items()} if weights is not None else None
    )
    nodes: list[Node] = []
    made_by: dict[str, int] = {}  # value -> index in ``nodes`` of the node that makes it
    folded = False
    for node in graph.nodes:
        at = made_by.get(node.inputs[0]) if node.op.kind == "batch_norm" else None
        if at is None or not _foldable(nodes[at], node, graph, readers, param_users, shapes):
            made_by[node.output] = len(nodes)
            nodes.append(node)
            continue
        nodes[at] = _fold_one(nodes[at], node, params, new_weights, param_users)
        made_by[node.output] = at
        del made_by[node.inputs[0]]
        folded = True
    if not folded:
        return program, new_weights
    still_used = {p for n in nodes for p in n.params.values()}
    for name in [p for p in params if p not in still_used]:
        del params[name]
        if new_weights is not None:
            new_weights.pop(name, None)
    out = program.model_copy(update={"graph": graph.model_copy(update={"nodes": tuple(nodes), "parameters": params})})
    validate_program(out)
    if new_weights is not None:
        validate_weights(out, new_weights)
    return out, new_weights


def _fold_one(linear: Node, bn: Node, params: dict[str, ParamSpec], weights: Weights | None,
              param_users: Counter) -> Node:
    """``linear`` writing ``bn``'s output, with a bias; ``params`` (and ``weights``) updated."""
    kernel_name = linear.params["kernel"]
    kernel_shape = params[kernel_name].shape
    channels = (kernel_shape[-2] * kernel_shape[-1]) if linear.op.kind in _DEPTHWISE else kernel_shape[-1]
    bias_name = linear.params.get("bias")
    if bias_name is None:
        bias_name = _fresh_name(f"{linear.name}/folded_bias", params)
        params[bias_name] = ParamSpec(shape=(channels,), trainable=False)
        param_users[bias_name] = 1
    if weights is not None:
        scale, shift = bn_affine(bn.op, *(weights[bn.params[r]] for r in  # type: ignore[arg-type]
                                          ("gamma", "beta", "moving_mean", "moving_variance")))
        kernel = np.asarray(weights[kernel_name], np.float64)
        weights[kernel_name] = kernel * scale.reshape(kernel_shape[-2:] if linear.op.kind in _DEPTHWISE else -1)
        bias = np.asarray(weights[bias_name], np.float64) if "bias" in linear.params else np.zeros(channels)
        weights[bias_name] = bias * scale + shift
    op = type(linear.op).model_validate({**linear.op.model_dump(), "use_bias": True})
    return linear.model_copy(update={"op": op, "output": bn.output,
                                     "params": {**linear.params, "bias": bias_name}})
