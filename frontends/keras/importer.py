"""``to_ir``: a Keras 3 model as a privacy-bridge Program plus its weights.

Layer rules live in one table keyed by Keras class name (``LAYER_RULES``); each
rule checks the layer's options against what the IR can express and emits IR
nodes.  An activation inside a layer (``Dense(..., activation="relu")``) becomes
its own node, because secure backends compute it with a different protocol.

The model is read from the objects ``get_config()`` would serialize, never through
``get_config()`` itself: Keras serializes nested objects (initializers, dtype
policies) with ``serialize_keras_object``, which imports TensorFlow whatever
``KERAS_BACKEND`` says: seconds lost for torch work.  So a layer's options are its
public attributes (``layer.units``, ``layer.padding``, ...; ``LAYER_OPTIONS`` lists
the ones each rule reads), and the graph is ``model.operations`` with each
operation's calls (``operation._inbound_nodes``: the Node objects get_config
writes as ``inbound_nodes``) and the tensors each call read (``Node.arguments``;
each KerasTensor's ``_keras_history`` names the layer call that made it, as
get_config's ``keras_history`` does).  Weights come from ``layer.weights`` /
``get_weights()``.  Nothing here depends on ``KERAS_BACKEND``.

Naming: graph inputs are named after their ``InputLayer``; a layer's output value
is the layer's name (``name/call1`` etc. for later calls of a shared layer);
parameters are ``f"{layer.name}/{role}"`` (roles: kernel, bias, gamma, beta,
moving_mean, moving_variance).
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bridge.ir import (
    Graph,
    Node,
    Numerics,
    ParamSpec,
    Placement,
    PrivacyMode,
    Program,
    TensorSpec,
    infer_shape,
    validate_program,
    validate_weights,
)
from bridge.ir import ops as irops
from bridge.ir.shapes import same_padding

Shape = tuple[int, ...]


class UnsupportedLayerError(ValueError):
    """A layer, or one of its options, has no IR equivalent; the message says what is supported."""

    def __init__(self, layer_name: str, layer_class: str, option: str | None, supported: str) -> None:
        self.layer_name = layer_name
        self.layer_class = layer_class
        self.option = option
        what = f"has {option}" if option else "is not supported"
        super().__init__(f"{layer_class} layer '{layer_name}' {what}; privacy-bridge supports {supported}")


# -- building the graph ----------------------------------------------------------------------------

@dataclass
class _Builder:
    nodes: list[Node] = field(default_factory=list)
    parameters: dict[str, ParamSpec] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    #: value name -> feature shape (no batch dimension)
    shapes: dict[str, Shape] = field(default_factory=dict)

    def emit(self, name: str, op: Any, inputs: list[str], output: str, params: dict[str, str] | None = None) -> str:
        params = params or {}
        shapes = [self.shapes[v] for v in inputs]
        self.shapes[output] = infer_shape(op, shapes, {r: self.parameters[p].shape for r, p in params.items()})
        self.nodes.append(Node(name=name, op=op, inputs=tuple(inputs), output=output, params=params))
        return output

    def param(self, layer: Any, role: str, value: np.ndarray, trainable: bool) -> str:
        """Declare ``layer/role`` once (a shared layer's later calls reuse it)."""
        name = f"{layer.name}/{role}"
        if name not in self.parameters:
            dtype = "float64" if value.dtype == np.float64 else "float32"
            array = np.asarray(value, dtype=dtype)
            self.parameters[name] = ParamSpec(shape=array.shape, dtype=dtype, trainable=trainable)
            self.weights[name] = array
        return name


@dataclass(frozen=True)
class _Call:
    """One call of a layer: the values it reads, the value it must write, its node name."""

    layer: Any
    config: dict[str, Any]
    inputs: list[str]
    output: str
    node: str

    @property
    def kind(self) -> str:
        return type(self.layer).__name__

    def refuse(self, option: str | None, supported: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(self.layer.name, self.kind, option, supported)


def _layer_weights(layer: Any) -> dict[str, tuple[np.ndarray, bool]]:
    """Role (the variable's name, the tail of its path) -> (value, trainable)."""
    return {
        v.path.rsplit("/", 1)[-1]: (np.asarray(value), bool(v.trainable))
        for v, value in zip(layer.weights, layer.get_weights(), strict=True)
    }


ACTIVATIONS = {"relu": irops.Relu, "sigmoid": irops.Sigmoid, "tanh": irops.Tanh, "softmax": irops.Softmax}
SUPPORTED_ACTIVATIONS = "activation in ['linear', 'relu', 'sigmoid', 'tanh', 'softmax']"


def _activation_op(call: _Call, key: str = "activation") -> Any | None:
    name = call.config.get(key, "linear")
    if name in (None, "linear"):
        return None
    if isinstance(name, str) and name in ACTIVATIONS:
        return ACTIVATIONS[name]()
    shown = name.get("class_name", name) if isinstance(name, dict) else name
    raise call.refuse(f"{key}={shown!r}", f"{SUPPORTED_ACTIVATIONS} only")


def _emit_with_activation(call: _Call, b: _Builder, op: Any, params: dict[str, str]) -> None:
    """The layer's op, then its activation as a separate node writing the layer's output."""
    act = _activation_op(call)
    if act is None:
        b.emit(call.node, op, call.inputs, call.output, params)
        return
    pre = b.emit(call.node, op, call.inputs, f"{call.output}/pre_activation", params)
    b.emit(f"{call.node}/{act.kind}", act, [pre], call.output)


def _require(call: _Call, key: str, allowed: tuple[Any, ...], supported: str) -> None:
    value = call.config.get(key)
    if isinstance(value, list):
        value = tuple(value)
    if value not in allowed:
        raise call.refuse(f"{key}={value!r}", supported)


def _input_shape(call: _Call, b: _Builder, rank: int, what: str) -> Shape:
    shape = b.shapes[call.inputs[0]]
    if len(shape) != rank:
        raise call.refuse(f"an input of shape (None, {', '.join(map(str, shape))})", what)
    return shape


def _params(call: _Call, b: _Builder, roles: tuple[str, ...]) -> dict[str, str]:
    found = _layer_weights(call.layer)
    return {role: b.param(call.layer, role, *found[role]) for role in roles}


def _no_lora(call: _Call) -> None:
    if call.config.get("lora_rank"):
        raise call.refuse(f"lora_rank={call.config['lora_rank']!r}", "layers without LoRA only; merge the adapter first")


# -- layer rules -----------------------------------------------------------------------------------

def _dense(call: _Call, b: _Builder) -> None:
    _no_lora(call)
    _input_shape(call, b, 1, "Dense on rank-2 inputs (batch, features) only; add a Flatten before it")
    op = irops.Dense(units=call.config["units"], use_bias=call.config["use_bias"])
    _emit_with_activation(call, b, op, _params(call, b, op.param_roles))


def _conv2d(call: _Call, b: _Builder) -> None:
    _no_lora(call)
    _require(call, "data_format", ("channels_last",), "data_format='channels_last' only")
    _require(call, "dilation_rate", (1, (1, 1)), "dilation_rate=1 only")
    _require(call, "groups", (1,), "groups=1 only")
    _require(call, "padding", ("valid", "same"), "padding='valid' or 'same' only")
    _input_shape(call, b, 3, "Conv2D on NHWC inputs (batch, height, width, channels) only")
    cfg = call.config
    op = irops.Conv2D(
        filters=cfg["filters"],
        kernel_size=cfg["kernel_size"],
        strides=cfg["strides"],
        padding=cfg["padding"],
        use_bias=cfg["use_bias"],
    )
    _emit_with_activation(call, b, op, _params(call, b, op.param_roles))


def _pool(op_class: type) -> Callable[[_Call, _Builder], None]:
    def rule(call: _Call, b: _Builder) -> None:
        _require(call, "data_format", ("channels_last",), "data_format='channels_last' only")
        _require(call, "padding", ("valid", "same"), "padding='valid' or 'same' only")
        h, w, _ = _input_shape(call, b, 3, f"{call.kind} on NHWC inputs (batch, height, width, channels) only")
        op = op_class(pool_size=call.config["pool_size"], strides=call.config.get("strides") or
                      call.config["pool_size"], padding=call.config["padding"])
        if op.kind == "avg_pool2d" and op.padding == "same":
            _check_torch_same_avg_pool(call, op, h, w)
        b.emit(call.node, op, call.inputs, call.output)

    return rule


def _replicate_changes_mean(size: int, window: int, stride: int) -> bool:
    """Whether replicate padding changes some window's mean along one axis.

    A window holding one real cell averages that cell either way; one holding two or
    more real cells and some padding weights the edge cell more under replication.
    """
    before, after = same_padding(size, window, stride)
    if before == after:
        return False  # Keras' torch backend then divides by real cells, as TensorFlow does
    for i in range(math.ceil(size / stride)):
        start = i * stride - before
        real = min(start + window, size) - max(start, 0)
        if real < window and real >= 2:
            return True
    return False


def _check_torch_same_avg_pool(call: _Call, op: irops.AvgPool2D, h: int, w: int) -> None:
    """Keras' torch backend pads uneven 'same' average pooling by replicating edge cells, which
    then count in the mean; TensorFlow, JAX and the IR divide by the real cells only.  The IR
    cannot express the torch variant, so refuse where the two differ rather than compute
    something else."""
    import keras

    if keras.backend.backend() != "torch":
        return
    axes = zip((h, w), op.pool_size, op.strides)
    if any(_replicate_changes_mean(n, k, s) for n, k, s in axes):
        pads = tuple(same_padding(n, k, s) for n, k, s in zip((h, w), op.pool_size, op.strides))
        raise call.refuse(
            f"padding='same' with uneven padding {pads} under KERAS_BACKEND='torch', where Keras "
            "replicates edge cells into the average (its TensorFlow and JAX backends do not)",
            "padding='valid', or 'same' where both axes pad evenly or border windows hold one real "
            "cell, on this backend; or export the model under KERAS_BACKEND=tensorflow, whose "
            "semantics the IR follows",
        )


def _global_avg_pool2d(call: _Call, b: _Builder) -> None:
    _require(call, "data_format", ("channels_last",), "data_format='channels_last' only")
    _require(call, "keepdims", (False,), "keepdims=False only")
    _input_shape(call, b, 3, "GlobalAveragePooling2D on NHWC inputs (batch, height, width, channels) only")
    b.emit(call.node, irops.GlobalAvgPool2D(), call.inputs, call.output)


def _flatten(call: _Call, b: _Builder) -> None:
    if len(b.shapes[call.inputs[0]]) > 1:
        _require(call, "data_format", ("channels_last", None), "data_format='channels_last' only")
    b.emit(call.node, irops.Flatten(), call.inputs, call.output)


def _reshape(call: _Call, b: _Builder) -> None:
    b.emit(call.node, irops.Reshape(target_shape=tuple(call.config["target_shape"])), call.inputs, call.output)


def _activation(call: _Call, b: _Builder) -> None:
    act = _activation_op(call)
    b.emit(call.node, act if act is not None else irops.Identity(), call.inputs, call.output)


def _relu(call: _Call, b: _Builder) -> None:
    for key, default in (("max_value", None), ("negative_slope", 0.0), ("threshold", 0.0)):
        value = call.config.get(key)
        if value != default:
            raise call.refuse(f"{key}={value!r}", f"ReLU with its defaults only ({key}={default!r})")
    b.emit(call.node, irops.Relu(), call.inputs, call.output)


def _softmax(call: _Call, b: _Builder) -> None:
    axis = call.config.get("axis", -1)
    rank = len(b.shapes[call.inputs[0]]) + 1
    if axis not in (-1, rank - 1, [-1], (-1,)):
        raise call.refuse(f"axis={axis!r}", "softmax over the last axis only (axis=-1)")
    b.emit(call.node, irops.Softmax(), call.inputs, call.output)


def _identity(call: _Call, b: _Builder) -> None:
    b.emit(call.node, irops.Identity(), call.inputs, call.output)


def _batch_norm(call: _Call, b: _Builder) -> None:
    cfg = call.config
    rank = len(b.shapes[call.inputs[0]]) + 1
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if axis not in (-1, rank - 1):
        raise call.refuse(f"axis={cfg.get('axis')!r}", "normalisation over the last axis only (axis=-1)")
    if cfg.get("renorm"):
        raise call.refuse("renorm=True", "renorm=False only")
    found = _layer_weights(call.layer)
    channels = b.shapes[call.inputs[0]][-1]
    dtype = found["moving_mean"][0].dtype
    # center=False / scale=False: Keras skips beta / gamma; the IR always has both.
    found.setdefault("gamma", (np.ones(channels, dtype=dtype), False))
    found.setdefault("beta", (np.zeros(channels, dtype=dtype), False))
    op = irops.BatchNorm(epsilon=cfg["epsilon"])
    params = {role: b.param(call.layer, role, *found[role]) for role in op.param_roles}
    b.emit(call.node, op, call.inputs, call.output, params)


def _add(call: _Call, b: _Builder) -> None:
    if len(call.inputs) < 2:
        raise call.refuse(f"{len(call.inputs)} input(s)", "Add of two or more tensors")
    shapes = {b.shapes[v] for v in call.inputs}
    if len(shapes) > 1:
        raise call.refuse(f"inputs of shapes {sorted(shapes)}", "Add of tensors of one shape only (no broadcasting)")
    b.emit(call.node, irops.Add(), call.inputs, call.output)


#: Keras layer class name -> rule that checks its options and emits IR nodes
LAYER_RULES: dict[str, Callable[[_Call, _Builder], None]] = {
    "Dense": _dense,
    "Conv2D": _conv2d,
    "AveragePooling2D": _pool(irops.AvgPool2D),
    "MaxPooling2D": _pool(irops.MaxPool2D),
    "GlobalAveragePooling2D": _global_avg_pool2d,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Activation": _activation,
    "ReLU": _relu,
    "Softmax": _softmax,
    "Dropout": _identity,
    "BatchNormalization": _batch_norm,
    "Add": _add,
}


def _check_layer(layer: Any) -> None:
    """The layer is a stock Keras layer with a rule, computing in float32/float64."""
    import keras

    kind = type(layer).__name__
    stock = getattr(keras.layers, kind, None)
    if kind not in LAYER_RULES or type(layer) is not stock:
        raise UnsupportedLayerError(
            layer.name, kind, None, f"the Keras layers {sorted(['InputLayer', *LAYER_RULES])} only"
        )
    policy = layer.dtype_policy
    if getattr(policy, "quantization_mode", None):
        raise UnsupportedLayerError(
            layer.name, kind, f"quantization_mode={policy.quantization_mode!r}", "unquantized layers only"
        )
    if policy.compute_dtype not in ("float32", "float64") or policy.variable_dtype not in ("float32", "float64"):
        raise UnsupportedLayerError(
            layer.name, kind, f"dtype policy {policy.name!r}", "float32 or float64 layers only"
        )


#: Keras layer class name -> the options its rule reads: public attributes that hold what
#: ``layer.get_config()`` would write under the same keys
LAYER_OPTIONS: dict[str, tuple[str, ...]] = {
    "Dense": ("units", "activation", "use_bias", "lora_rank"),
    "Conv2D": ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate", "groups",
               "activation", "use_bias", "lora_rank"),
    "AveragePooling2D": ("pool_size", "strides", "padding", "data_format"),
    "MaxPooling2D": ("pool_size", "strides", "padding", "data_format"),
    "GlobalAveragePooling2D": ("data_format", "keepdims"),
    "Flatten": ("data_format",),
    "Reshape": ("target_shape",),
    "Activation": ("activation",),
    "ReLU": ("max_value", "negative_slope", "threshold"),
    "Softmax": ("axis",),
    "Dropout": (),
    "BatchNormalization": ("axis", "epsilon", "renorm"),
    "Add": (),
}


def _activation_name(fn: Any) -> str | dict[str, str]:
    """What ``keras.activations.serialize`` writes, without it: a built-in's name, else the class.

    A built-in is the very function ``keras.activations`` exports under its ``__name__``, so a
    user's function that happens to be called ``relu`` is not taken for ReLU.
    """
    import keras

    name = getattr(fn, "__name__", None)
    if isinstance(fn, types.FunctionType):
        if isinstance(name, str) and getattr(keras.activations, name, None) is fn:
            return name
        return {"class_name": "function"}
    return {"class_name": type(fn).__name__}


def _options(layer: Any) -> dict[str, Any]:
    """The layer's options as ``get_config()`` keys them, read from its attributes.

    ``get_config()`` is not called: it serializes initializers and dtype policies through
    ``serialize_keras_object``, which imports TensorFlow.  An option this Keras version lacks
    reads as None, as ``config.get`` would.
    """
    options = {key: getattr(layer, key, None) for key in LAYER_OPTIONS[type(layer).__name__]}
    if "activation" in options:
        options["activation"] = _activation_name(options["activation"])
    return options


def _apply(layer: Any, inputs: list[str], output: str, node: str, b: _Builder) -> None:
    _check_layer(layer)
    call = _Call(layer, _options(layer), inputs, output, node)
    LAYER_RULES[call.kind](call, b)


# -- walking the model -----------------------------------------------------------------------------

def _input_spec(name: str, batch_shape: Any, dtype: Any) -> TensorSpec:
    shape = tuple(batch_shape)
    if any(d is None for d in shape[1:]) or len(shape) < 2:
        raise UnsupportedLayerError(
            name, "InputLayer", f"shape {shape}", "inputs of fixed feature shape (only the batch dimension may be None)"
        )
    dtype = getattr(dtype, "name", dtype)
    if dtype not in ("float32", "float64"):
        raise UnsupportedLayerError(name, "InputLayer", f"dtype={dtype!r}", "float32 or float64 inputs only")
    return TensorSpec(shape=(None, *(int(d) for d in shape[1:])), dtype=dtype)


def _sequential(model: Any, b: _Builder) -> tuple[dict[str, TensorSpec], list[str]]:
    # A Sequential keeps its InputLayer (given, or made by build()) first in ``_layers``, the list
    # its get_config() serializes; the public ``model.layers`` leaves it out.  The input
    # KerasTensor's name is no substitute: build() makes an InputLayer named 'input_layer' whose
    # tensor is named 'keras_tensor...'.
    stack = getattr(model, "_layers", [])
    if not model.built or not stack or type(stack[0]).__name__ != "InputLayer":
        raise ValueError(
            f"Sequential model {model.name!r} has no input shape yet: expected a built model, received "
            "an unbuilt one. Start it with keras.Input(shape=...) or call model.build((None, ...)) first."
        )
    first = stack[0]
    spec = _input_spec(first.name, first.batch_shape, first.dtype)
    b.shapes[first.name] = spec.feature_shape
    value = first.name
    for layer in model.layers:
        _apply(layer, [value], layer.name, layer.name, b)
        value = layer.name
    return {first.name: spec}, [value]


#: (operation name, call index among the model's own calls of it, output index): a tensor's source
_Ref = tuple[str, int, int]


def _ref(tensor: Any, own: set[int]) -> _Ref:
    """The call that made ``tensor``, counted among the model's own calls of that operation.

    ``tensor._keras_history`` is (operation, index into ``operation._inbound_nodes``, output
    index); a layer also called outside this model has calls get_config leaves out, and its
    ``keras_history`` indices skip them, so these do too.
    """
    operation, node_index, tensor_index = tensor._keras_history
    foreign = sum(id(node) not in own for node in operation._inbound_nodes[:node_index])
    return operation.name, node_index - foreign, tensor_index


def _refs(structure: Any, own: set[int]) -> list[_Ref]:
    """The Keras tensors in a call's arguments (or a model's inputs/outputs), in argument order."""
    import keras

    if isinstance(structure, keras.KerasTensor):
        return [_ref(structure, own)]
    if isinstance(structure, dict):
        structure = list(structure.values())
    if isinstance(structure, (list, tuple)):
        return [r for item in structure for r in _refs(item, own)]
    return []


def _functional(model: Any, b: _Builder) -> tuple[dict[str, TensorSpec], list[str]]:
    import keras

    # The model's own layer calls, those get_config serializes: a layer may also have been called
    # outside it.  ``_nodes_by_depth`` is where keras.Model(inputs, outputs) keeps the Nodes it found
    # walking back from its outputs.
    own = {id(node) for nodes in model._nodes_by_depth.values() for node in nodes}
    values: dict[tuple[str, int], str] = {}
    specs: dict[str, TensorSpec] = {}
    pending: list[tuple[Any, int, list[_Ref]]] = []
    for operation in model.operations:
        name, kind = operation.name, type(operation).__name__
        if kind == "InputLayer":
            specs[name] = _input_spec(name, operation.batch_shape, operation.dtype)
            b.shapes[name] = specs[name].feature_shape
            values[(name, 0)] = name
            continue
        if not isinstance(operation, keras.layers.Layer):
            raise UnsupportedLayerError(
                name, kind, f"no Keras layer behind it (an operation from {type(operation).__module__})",
                "Keras layers only; replace keras.ops calls on symbolic tensors with layers "
                "(e.g. keras.layers.Add instead of keras.ops.add)",
            )
        # A call that read no tensor (an InputLayer's) is no call here, as in get_config.
        calls = [node for node in operation._inbound_nodes if id(node) in own and node.input_tensors]
        for index, node in enumerate(calls):
            kwargs = node.arguments.kwargs
            if _refs(kwargs, own):
                raise UnsupportedLayerError(name, kind, "a tensor passed by keyword", "tensors passed positionally only")
            if kwargs.get("training"):
                raise UnsupportedLayerError(name, kind, "training=True in its call", "inference-mode calls only")
            pending.append((operation, index, _refs(node.arguments.args, own)))

    # Operations are listed by depth, but a shared layer's later calls may read later layers: schedule.
    while pending:
        ready = [p for p in pending if all((n, c) in values for n, c, _ in p[2])]
        if not ready:
            stuck = sorted({p[0].name for p in pending})
            raise ValueError(f"the model's graph has a cycle or reads unknown tensors at layers {stuck}")
        for layer, index, reads in ready:
            if any(t != 0 for _, _, t in reads):
                raise UnsupportedLayerError(layer.name, type(layer).__name__, "an input from a multi-output layer",
                                            "single-output layers only")
            # Keras names never hold '/', so later calls of a shared layer cannot clash with a layer.
            value = layer.name if index == 0 else f"{layer.name}/call{index}"
            _apply(layer, [values[(n, c)] for n, c, _ in reads], value, value, b)
            values[(layer.name, index)] = value
        pending = [p for p in pending if p not in ready]

    # ``model.input`` / ``model.output`` keep the structures the model was built with (a dict in its
    # own order); ``model.inputs`` / ``model.outputs`` are flattened with dict keys sorted.
    inputs = {name: specs[name] for name, _, _ in _refs(model.input, own)}
    outputs = [values[(n, c)] for n, c, _ in _refs(model.output, own)]
    return inputs, outputs


def to_ir(
    model: Any,
    *,
    name: str | None = None,
    placement: Placement | None = None,
    numerics: Numerics | None = None,
    privacy: PrivacyMode | str = PrivacyMode.NONE,
) -> tuple[Program, dict[str, np.ndarray]]:
    """The model's Program and its weights (keyed by parameter name ``layer/role``).

    ``model`` is a built Sequential or functional Keras 3 model; anything the IR
    cannot express exactly raises ``UnsupportedLayerError`` naming the layer.
    ``placement`` defaults to ``Placement.default(inputs, outputs)``.
    """
    import keras

    b = _Builder()
    if isinstance(model, keras.Sequential):
        inputs, outputs = _sequential(model, b)
    elif isinstance(model, keras.Model) and type(model).__name__ == "Functional":
        inputs, outputs = _functional(model, b)
    else:
        raise TypeError(
            f"to_ir expects a Sequential or functional keras.Model, received {type(model).__name__}. "
            "Subclassed models have no inspectable graph: rebuild the model with keras.Sequential "
            "or keras.Model(inputs, outputs)."
        )
    graph = Graph(
        inputs=inputs,
        outputs={v: TensorSpec(shape=(None, *b.shapes[v])) for v in outputs},
        parameters=b.parameters,
        nodes=tuple(b.nodes),
    )
    program = Program(
        name=name or model.name,
        graph=graph,
        placement=placement or Placement.default(list(inputs), list(graph.outputs)),
        numerics=numerics or Numerics(),
        privacy=PrivacyMode(privacy),
    )
    validate_program(program)
    validate_weights(program, b.weights)
    return program, b.weights
