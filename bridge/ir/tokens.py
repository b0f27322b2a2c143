"""Token inputs: integer ids that the data owner one-hot encodes before anything is shared.

A graph input declared ``TensorSpec(dtype="int32", shape=(None, *steps, vocabulary))`` takes
token ids of shape (batch, *steps) from its caller.  ``one_hot_inputs`` checks them (integers,
0 <= id < vocabulary) and turns them into one-hot rows of shape (batch, *steps, vocabulary) on
the data owner's side, before encoding or sharing, so the compute servers hold shares of the
one-hot rows only: they learn the sequence length and the vocabulary size (shapes), never an id
or whether two ids are equal.  The Embedding lookup is then one_hot @ table, a Beaver product
with the masked table (``bridge.mpc.recurrent``).  Token inputs feed Embedding nodes only, and
an Embedding reads a token input only (``check_token_graph``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bridge.ir.graph import Graph, TensorSpec

TOKEN_DTYPE = "int32"


class TokenInputError(ValueError):
    """Token ids a data owner passed cannot be encoded; the message names the input and the fix."""


def is_token(spec: TensorSpec) -> bool:
    return spec.dtype == TOKEN_DTYPE


def caller_shape(spec: TensorSpec) -> tuple[int, ...]:
    """The feature shape the caller passes: token inputs without their one-hot axis."""
    return spec.feature_shape[:-1] if is_token(spec) else spec.feature_shape


def vocabulary(spec: TensorSpec) -> int:
    return spec.feature_shape[-1]


def one_hot(name: str, ids: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """The one-hot rows (float64) of a batch of token ids, after checking every id."""
    raw = np.asarray(ids)
    steps, depth = caller_shape(spec), vocabulary(spec)
    if raw.ndim != len(steps) + 1 or tuple(raw.shape[1:]) != steps:
        raise TokenInputError(
            f"input {name!r} takes token ids of shape (batch, {', '.join(map(str, steps))}), received an array of "
            f"shape {tuple(raw.shape)}. Pass the integer ids (the model's Embedding reads them), not their "
            "embeddings or one-hot rows."
        )
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(raw) | (raw != np.round(raw)))[0])
            raise TokenInputError(
                f"input {name!r} holds token ids, which are integers; received {raw[bad].item()!r} "
                f"at index {bad}. Pass integer ids (e.g. from the tokenizer or TextVectorization)."
            )
    elif raw.dtype.kind not in "iub":
        raise TokenInputError(f"input {name!r} holds integer token ids; received an array of dtype {raw.dtype}")
    out_of_range = (raw < 0) | (raw >= depth)
    if np.any(out_of_range):
        where = np.argwhere(out_of_range)
        first = tuple(int(i) for i in where[0])
        raise TokenInputError(
            f"input {name!r}: token ids must be in [0, {depth}) (the Embedding's input_dim); received "
            f"{raw[first].item()!r} at index {first} ({len(where)} of {raw.size} ids out of range). Map unknown "
            "tokens to an out-of-vocabulary id below input_dim, as the tokenizer used in training did."
        )
    index = raw.astype(np.int64)
    rows = np.zeros((*index.shape, depth), dtype=np.float64)
    np.put_along_axis(rows, index[..., None], 1.0, axis=-1)
    return rows


def one_hot_inputs(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``inputs`` with every token input's ids replaced by their one-hot rows (others as given).

    Runs where the data owner holds the ids, before anything is encoded or shared."""
    return one_hot_specs(graph.inputs, inputs)


def one_hot_specs(specs: Mapping[str, TensorSpec], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``one_hot_inputs`` for a caller that knows the inputs' specs only (a serving client,
    which holds no graph: the service's hello tells it each input's shape and dtype)."""
    if not isinstance(inputs, Mapping):
        return inputs  # the caller's own check names the problem
    out = dict(inputs)
    for name, spec in specs.items():
        if is_token(spec) and name in out:
            out[name] = one_hot(name, out[name], spec)
    return out


def described_specs(shapes: Mapping[str, list[int]], dtypes: Mapping[str, str] | None) -> dict[str, TensorSpec]:
    """The input specs a service describes (feature shapes and dtypes, as its hello sends
    them); an input without a dtype is float32."""
    dtypes = dtypes or {}
    return {name: TensorSpec(shape=(None, *(int(d) for d in shape)), dtype=dtypes.get(name, "float32"))
            for name, shape in shapes.items()}


def check_token_graph(graph: Graph) -> None:
    """Token inputs have a one-hot axis and feed Embedding nodes only; an Embedding reads a token
    input only (the servers never see ids, so no other op can read them)."""
    tokens = {name for name, spec in graph.inputs.items() if is_token(spec)}
    for name in tokens:
        if len(graph.inputs[name].feature_shape) < 2:
            raise ValueError(
                f"token input {name!r} has shape {graph.inputs[name].shape}; declare it as "
                "(None, *steps, vocabulary): the last axis is the one-hot depth"
            )
    for node in graph.nodes:
        embedding = node.op.kind == "embedding"
        for value in node.inputs:
            if value in tokens and not embedding:
                raise ValueError(
                    f"node {node.name!r} ({node.op.kind}) reads token input {value!r}; token ids feed Embedding "
                    "layers only. Put an Embedding first, or declare the input float32."
                )
            if embedding and value not in tokens:
                raise ValueError(
                    f"node {node.name!r} (embedding) reads {value!r}, which is not a token input (dtype "
                    "int32); an Embedding reads the ids of a model input directly"
                )


def one_hot_request(specs: Mapping[str, TensorSpec], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A serving client's inputs with every token input checked and one-hot encoded here, on
    the client, before anything is shared (``one_hot``'s errors refuse a bad id before a byte
    leaves). One example's ids (no batch axis) count as a batch of one, as for a float input."""
    batched = {name: np.asarray(value)[None] if name in specs and is_token(specs[name])
               and np.ndim(value) == len(caller_shape(specs[name])) else value for name, value in inputs.items()}
    return one_hot_specs(specs, batched)
