"""Importer rules of Embedding (with integer token inputs), SimpleRNN, LSTM, GRU,
Bidirectional and TimeDistributed.  Registered in ``frontends.keras.importer``.

Token inputs: an int32/int64 ``keras.Input`` becomes a graph input of dtype "int32" whose
value is the one-hot rows of its ids (``bridge.ir.tokens``); its vocabulary comes from the
Embedding that reads it, so such an input must feed Embedding layers only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bridge.ir import ParamSpec, TensorSpec
from bridge.ir import ops as irops
from frontends.keras.importer import (
    _Builder,
    _Call,
    _activation_name,
    _activation_op,
    _emit_with_activation,
    _input_shape,
    _layer_weights,
    _no_lora,
    _options,
)

#: Keras dtypes a token input may have
INT_DTYPES = ("int32", "int64", "uint8", "int16", "uint16")
#: the activations a recurrent cell computes (``bridge.mpc.recurrent.activate``)
CELL_ACTIVATIONS = ("tanh", "sigmoid", "relu", "linear", "hard_sigmoid")
_RECURRENT = ("units", "activation", "recurrent_activation", "use_bias", "return_sequences", "return_state",
              "go_backwards", "stateful")


# -- token inputs ---------------------------------------------------------------------------------

def register_input(b: _Builder, name: str, spec: TensorSpec) -> None:
    """Record a graph input's shape; an integer input waits for its Embedding's vocabulary."""
    b.shapes[name] = spec.feature_shape
    if spec.dtype == "int32":
        b.tokens[name] = None


def finish_inputs(inputs: dict[str, TensorSpec], b: _Builder) -> dict[str, TensorSpec]:
    """Token inputs declared with their one-hot axis (the vocabulary their Embedding read)."""
    out = {}
    for name, spec in inputs.items():
        if spec.dtype == "int32":
            vocab = b.tokens.get(name)
            if vocab is None:
                from frontends.keras.importer import UnsupportedLayerError

                raise UnsupportedLayerError(
                    name, "InputLayer", f"dtype={spec.dtype!r} and no Embedding reading it",
                    "integer inputs only as the token ids of an Embedding layer; declare other inputs float32",
                )
            spec = TensorSpec(shape=(*spec.shape, vocab), dtype="int32")
        out[name] = spec
    return out


def check_masking(model: Any) -> None:
    """Refuse Embedding(mask_zero=True) by name before the graph walk meets the mask's operations."""
    for layer in getattr(model, "layers", []):
        if type(layer).__name__ == "Embedding" and getattr(layer, "mask_zero", False):
            from frontends.keras.importer import UnsupportedLayerError

            raise UnsupportedLayerError(
                layer.name, "Embedding", "mask_zero=True",
                "mask_zero=False only (masking is not implemented); pad with a token the model was trained "
                "on, or drop the padding before the model",
            )


def check_token_reader(call: _Call, b: _Builder) -> None:
    """Token ids go to Embedding layers only: the servers never hold an id."""
    if call.kind == "Embedding":
        return
    for value in call.inputs:
        if value in b.tokens:
            raise call.refuse(
                f"the integer input {value!r} as its input",
                "integer (token) inputs feeding Embedding layers only: the data owner one-hot encodes the ids "
                "for the Embedding, and no other layer can read them; cast the input to float32 in the model "
                "if it holds numbers rather than tokens",
            )


def _embedding(call: _Call, b: _Builder) -> None:
    _no_lora(call)
    cfg = call.config
    if cfg.get("mask_zero"):
        raise call.refuse("mask_zero=True", "mask_zero=False only (masking is not implemented); pad with a "
                          "token the model was trained on, or drop the padding before the model")
    (source,) = call.inputs
    if source not in b.tokens:
        raise call.refuse(
            f"input {source!r}, which is not an integer model input",
            "Embedding reading the int32 token ids of a model input (keras.Input(shape=(steps,), dtype='int32'))",
        )
    vocab = int(cfg["input_dim"])
    known = b.tokens[source]
    if known is not None and known != vocab:
        raise call.refuse(f"input_dim={vocab} while another Embedding reads {source!r} with input_dim={known}",
                          "one vocabulary per token input")
    if known is None:
        b.tokens[source] = vocab
        b.shapes[source] = (*b.shapes[source], vocab)
    found = _layer_weights(call.layer)
    params = {"embeddings": b.param(call.layer, "embeddings", *found["embeddings"])}
    b.emit(call.node, irops.Embedding(), [source], call.output, params)


# -- recurrent layers ---------------------------------------------------------------------------

def _cell_activation(call: _Call, config: dict[str, Any], key: str) -> str:
    name = config.get(key)
    if callable(name):  # _options names 'activation' only
        name = _activation_name(name)
    shown = name.get("class_name", name) if isinstance(name, dict) else name
    if shown not in CELL_ACTIVATIONS:
        raise call.refuse(f"{key}={shown!r}", f"{key} in {list(CELL_ACTIVATIONS)}")
    return shown


def _recurrent_op(call: _Call, layer: Any, config: dict[str, Any]) -> Any:
    kind = type(layer).__name__
    if config.get("return_state"):
        raise call.refuse("return_state=True", "return_state=False only (the states are not returned); use "
                          "return_sequences=True and read the last step if you need h")
    if config.get("stateful"):
        raise call.refuse("stateful=True", "stateful=False only: a served query starts from zero states")
    common = dict(units=int(config["units"]), activation=_cell_activation(call, config, "activation"),
                  use_bias=bool(config["use_bias"]), return_sequences=bool(config["return_sequences"]),
                  go_backwards=bool(config["go_backwards"]))
    if kind == "SimpleRNN":
        return irops.SimpleRNN(**common)
    gate = _cell_activation(call, config, "recurrent_activation")
    if kind == "LSTM":
        return irops.LSTM(**common, recurrent_activation=gate)
    return irops.GRU(**common, recurrent_activation=gate, reset_after=bool(config["reset_after"]))


def _declare(b: _Builder, name: str, value: np.ndarray, trainable: bool) -> str:
    if name not in b.parameters:
        dtype = "float64" if value.dtype == np.float64 else "float32"
        array = np.asarray(value, dtype=dtype)
        b.parameters[name] = ParamSpec(shape=array.shape, dtype=dtype, trainable=trainable)
        b.weights[name] = array
    return name


def _emit_recurrent(call: _Call, b: _Builder, layer: Any, config: dict[str, Any], inputs: list[str], output: str,
                    node: str, prefix: str) -> str:
    _input_shape(call, b, 2, f"{call.kind} on (batch, steps, features) inputs only")
    op = _recurrent_op(call, layer, config)
    found = _layer_weights(layer)
    params = {role: _declare(b, f"{prefix}/{role}", *found[role]) for role in op.param_roles}
    return b.emit(node, op, inputs, output, params)


def _recurrent(call: _Call, b: _Builder) -> None:
    _emit_recurrent(call, b, call.layer, call.config, call.inputs, call.output, call.node, call.layer.name)


def _bidirectional(call: _Call, b: _Builder) -> None:
    """A forward and a backward layer; with return_sequences the backward outputs are flipped back
    in time (as Keras does), then merged (concat / sum / ave / mul)."""
    layer = call.layer
    merges = {"concat": lambda: irops.Concat(axis=-1), "sum": irops.Add, "ave": irops.Average, "mul": irops.Multiply}
    if layer.merge_mode not in merges:
        raise call.refuse(f"merge_mode={layer.merge_mode!r}", f"merge_mode in {list(merges)} (one output tensor)")
    if getattr(layer, "return_state", False):
        raise call.refuse("return_state=True", "return_state=False only")
    halves = []
    for part, sub in (("forward", layer.forward_layer), ("backward", layer.backward_layer)):
        kind = type(sub).__name__
        if kind not in ("SimpleRNN", "LSTM", "GRU"):
            raise call.refuse(f"a {kind} layer inside", "Bidirectional over SimpleRNN, LSTM or GRU only")
        value = _emit_recurrent(call, b, sub, _options(sub), call.inputs, f"{call.output}/{part}",
                                f"{call.node}/{part}", f"{layer.name}/{part}")
        if part == "backward" and sub.return_sequences:
            value = b.emit(f"{call.node}/backward_flip", irops.Reverse(axis=0), [value], f"{call.output}/backward_flip")
        halves.append(value)
    b.emit(call.node, merges[layer.merge_mode](), halves, call.output)


#: layers TimeDistributed may wrap that act on the last axis alone
_PER_STEP_PASSTHROUGH = ("Dropout", "GaussianDropout", "GaussianNoise", "Identity", "Activation")


def _time_distributed(call: _Call, b: _Builder) -> None:
    """TimeDistributed(Dense) is a width-1 Conv1D over the steps (kernel (1, F, units)); layers that
    act elementwise apply to the whole sequence as they are."""
    inner = call.layer.layer
    kind = type(inner).__name__
    shape = b.shapes[call.inputs[0]]
    if kind == "Dense":
        if len(shape) != 2:
            raise call.refuse(f"an input of shape (None, {', '.join(map(str, shape))})",
                              "TimeDistributed(Dense) over (batch, steps, features) inputs only")
        inner_call = _Call(inner, _options(inner), call.inputs, call.output, call.node)
        _no_lora(inner_call)
        cfg = inner_call.config
        found = _layer_weights(inner)
        kernel, trainable = found["kernel"]
        params = {"kernel": _declare(b, f"{call.layer.name}/kernel", kernel.reshape(1, *kernel.shape), trainable)}
        if cfg["use_bias"]:
            params["bias"] = _declare(b, f"{call.layer.name}/bias", *found["bias"])
        op = irops.Conv1D(filters=int(cfg["units"]), kernel_size=1, use_bias=bool(cfg["use_bias"]))
        _emit_with_activation(inner_call, b, op, params)
        return
    if kind in _PER_STEP_PASSTHROUGH:
        inner_call = _Call(inner, _options(inner), call.inputs, call.output, call.node)
        act = _activation_op(inner_call) if kind == "Activation" else None
        if act is not None and act.kind == "softmax" and act.axis != -1:
            raise call.refuse("a softmax over another axis", "TimeDistributed(Activation) over the last axis")
        b.emit(call.node, act if act is not None else irops.Identity(), call.inputs, call.output)
        return
    raise call.refuse(f"a {kind} layer inside", f"TimeDistributed over Dense or {list(_PER_STEP_PASSTHROUGH)}")


LAYER_RULES = {
    "Embedding": _embedding,
    "SimpleRNN": _recurrent,
    "LSTM": _recurrent,
    "GRU": _recurrent,
    "Bidirectional": _bidirectional,
    "TimeDistributed": _time_distributed,
}

LAYER_OPTIONS: dict[str, tuple[str, ...]] = {
    "Embedding": ("input_dim", "output_dim", "mask_zero", "lora_rank"),
    "SimpleRNN": tuple(k for k in _RECURRENT if k != "recurrent_activation"),
    "LSTM": _RECURRENT,
    "GRU": (*_RECURRENT, "reset_after"),
    "Bidirectional": ("merge_mode",),
    "TimeDistributed": (),
}
