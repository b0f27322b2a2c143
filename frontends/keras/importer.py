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
    #: integer (token) graph input -> the vocabulary of the Embedding reading it (None until read)
    tokens: dict[str, int | None] = field(default_factory=dict)

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
    #: the call's keyword arguments that hold no tensor (e.g. use_causal_mask=True)
    kwargs: dict[str, Any] = field(default_factory=dict)

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


#: Keras activation name -> the IR op computing it
ACTIVATIONS: dict[str, Callable[[], Any]] = {
    "relu": irops.Relu,
    "relu6": lambda: irops.Relu(max_value=6.0),
    "leaky_relu": lambda: irops.Relu(negative_slope=0.2),
    "sigmoid": irops.Sigmoid,
    "tanh": irops.Tanh,
    "softmax": irops.Softmax,
    "elu": irops.Elu,
    "gelu": irops.Gelu,
    "silu": irops.Silu,
    "swish": irops.Silu,
    "hard_sigmoid": irops.HardSigmoid,
    "hard_silu": irops.HardSilu,
    "hard_swish": irops.HardSilu,
    "softplus": irops.Softplus,
    "softsign": irops.Softsign,
}
SUPPORTED_ACTIVATIONS = f"activation in {['linear', *ACTIVATIONS]}"


def _activation_op(call: _Call, key: str = "activation") -> Any | None:
    name = call.config.get(key, "linear")
    if name in (None, "linear"):
        return None
    if isinstance(name, str) and name in ACTIVATIONS:
        return ACTIVATIONS[name]()
    shown = name.get("class_name", name) if isinstance(name, dict) else name
    raise call.refuse(f"{key}={shown!r}", f"{SUPPORTED_ACTIVATIONS} only")


def _emit_with_activation(
    call: _Call, b: _Builder, op: Any, params: dict[str, str], inputs: list[str] | None = None
) -> None:
    """The layer's op, then its activation as a separate node writing the layer's output."""
    act = _activation_op(call)
    inputs = call.inputs if inputs is None else inputs
    if act is None:
        b.emit(call.node, op, inputs, call.output, params)
        return
    pre = b.emit(call.node, op, inputs, f"{call.output}/pre_activation", params)
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
    op = irops.Dense(units=call.config["units"], use_bias=call.config["use_bias"])
    _emit_with_activation(call, b, op, _params(call, b, op.param_roles))


def _causal(call: _Call, b: _Builder, span: int) -> list[str]:
    """Keras' padding='causal': (k - 1) d zeros before the steps, then a 'valid' window."""
    if not span:
        return call.inputs
    op = irops.Pad(pads=((span, 0), (0, 0)))
    return [b.emit(f"{call.node}/causal_pad", op, call.inputs, f"{call.output}/causal_pad")]


def _conv(call: _Call, b: _Builder) -> None:
    """Conv1D and Conv2D: dilation, groups and (1-D) causal padding included."""
    _no_lora(call)
    rank = 1 if call.kind == "Conv1D" else 2
    cfg = call.config
    _require(call, "data_format", ("channels_last",), "data_format='channels_last' only")
    paddings = ("valid", "same", "causal") if rank == 1 else ("valid", "same")
    _require(call, "padding", paddings, f"padding in {list(paddings)} only")
    _input_shape(call, b, rank + 1, f"{call.kind} on (batch, {'steps' if rank == 1 else 'height, width'}, "
                 "channels) inputs only")
    inputs, padding = call.inputs, cfg["padding"]
    if padding == "causal":
        inputs = _causal(call, b, (cfg["kernel_size"][0] - 1) * cfg["dilation_rate"][0])
        padding = "valid"
    op_class = irops.Conv1D if rank == 1 else irops.Conv2D
    op = op_class(filters=cfg["filters"], kernel_size=cfg["kernel_size"], strides=cfg["strides"], padding=padding,
                  use_bias=cfg["use_bias"], dilation_rate=cfg["dilation_rate"], groups=cfg["groups"])
    _emit_with_activation(call, b, op, _params(call, b, op.param_roles), inputs)


def _depthwise_op(call: _Call, rank: int, padding: str, use_bias: bool) -> Any:
    cfg = call.config
    op_class = irops.DepthwiseConv1D if rank == 1 else irops.DepthwiseConv2D
    return op_class(kernel_size=cfg["kernel_size"], strides=cfg["strides"], padding=padding,
                    depth_multiplier=cfg["depth_multiplier"], dilation_rate=cfg["dilation_rate"], use_bias=use_bias)


def _depthwise_or_separable(call: _Call, b: _Builder) -> None:
    """DepthwiseConv1D/2D; SeparableConv1D/2D as a depthwise node then a 1x1 convolution."""
    rank = 1 if call.kind.endswith("1D") else 2
    cfg = call.config
    _require(call, "data_format", ("channels_last",), "data_format='channels_last' only")
    paddings = ("valid", "same", "causal") if rank == 1 else ("valid", "same")
    _require(call, "padding", paddings, f"padding in {list(paddings)} only")
    _input_shape(call, b, rank + 1, f"{call.kind} on (batch, {'steps' if rank == 1 else 'height, width'}, "
                 "channels) inputs only")
    inputs, padding = call.inputs, cfg["padding"]
    if padding == "causal":
        inputs = _causal(call, b, (cfg["kernel_size"][0] - 1) * cfg["dilation_rate"][0])
        padding = "valid"
    if call.kind.startswith("Depthwise"):
        op = _depthwise_op(call, rank, padding, cfg["use_bias"])
        _emit_with_activation(call, b, op, _params(call, b, op.param_roles), inputs)
        return
    found = _layer_weights(call.layer)
    depthwise = {"kernel": b.param(call.layer, "depthwise_kernel", *found["depthwise_kernel"])}
    mid = b.emit(f"{call.node}/depthwise", _depthwise_op(call, rank, padding, False), inputs,
                 f"{call.output}/depthwise", depthwise)
    pointwise = {"kernel": b.param(call.layer, "pointwise_kernel", *found["pointwise_kernel"])}
    if cfg["use_bias"]:
        pointwise["bias"] = b.param(call.layer, "bias", *found["bias"])
    op = (irops.Conv1D(filters=cfg["filters"], kernel_size=1, use_bias=cfg["use_bias"]) if rank == 1 else
          irops.Conv2D(filters=cfg["filters"], kernel_size=1, use_bias=cfg["use_bias"]))
    _emit_with_activation(call, b, op, pointwise, [mid])


def _pool(op_class: type) -> Callable[[_Call, _Builder], None]:
    def rule(call: _Call, b: _Builder) -> None:
        rank = 1 if call.kind.endswith("1D") else 2
        _require(call, "data_format", ("channels_last",), "data_format='channels_last' only")
        _require(call, "padding", ("valid", "same"), "padding='valid' or 'same' only")
        shape = _input_shape(call, b, rank + 1, f"{call.kind} on (batch, {'steps' if rank == 1 else 'height, width'}"
                             ", channels) inputs only")
        op = op_class(pool_size=call.config["pool_size"], strides=call.config.get("strides") or
                      call.config["pool_size"], padding=call.config["padding"])
        window = op.as_2d() if rank == 1 else op
        if window.kind == "avg_pool2d" and window.padding == "same":
            h, w = (1, shape[0]) if rank == 1 else shape[:2]
            _check_torch_same_avg_pool(call, window, h, w)
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


def _global_pool(op_class: type) -> Callable[[_Call, _Builder], None]:
    def rule(call: _Call, b: _Builder) -> None:
        rank = 1 if call.kind.endswith("1D") else 2
        _require(call, "data_format", ("channels_last",), "data_format='channels_last' only")
        _input_shape(call, b, rank + 1, f"{call.kind} on (batch, {'steps' if rank == 1 else 'height, width'}, "
                     "channels) inputs only")
        b.emit(call.node, op_class(keepdims=bool(call.config["keepdims"])), call.inputs, call.output)

    return rule


def _upsampling(call: _Call, b: _Builder) -> None:
    if call.kind == "UpSampling2D":
        _require(call, "data_format", ("channels_last",), "data_format='channels_last' only")
        _require(call, "interpolation", ("nearest",), "interpolation='nearest' only")
        _input_shape(call, b, 3, "UpSampling2D on NHWC inputs only")
        op: Any = irops.UpSample2D(size=call.config["size"])
    else:
        _input_shape(call, b, 2, "UpSampling1D on (batch, steps, channels) inputs only")
        op = irops.UpSample1D(size=call.config["size"])
    b.emit(call.node, op, call.inputs, call.output)


def _pairs(value: Any) -> tuple[tuple[int, int], ...]:
    """Keras' padding/cropping of one or two axes as ((before, after), ...)."""
    if isinstance(value, int):
        return ((value, value),)
    if all(isinstance(v, int) for v in value):
        return (tuple(int(v) for v in value),)  # type: ignore[return-value]
    return tuple((int(v[0]), int(v[1])) for v in value)


def _pad_or_crop(call: _Call, b: _Builder) -> None:
    """ZeroPadding1D/2D and Cropping1D/2D: spatial axes given, the channel axis untouched."""
    rank = 1 if call.kind.endswith("1D") else 2
    if rank == 2:
        _require(call, "data_format", ("channels_last",), "data_format='channels_last' only")
    _input_shape(call, b, rank + 1, f"{call.kind} on (batch, {'steps' if rank == 1 else 'height, width'}, "
                 "channels) inputs only")
    if call.kind.startswith("ZeroPadding"):
        op: Any = irops.Pad(pads=(*_pairs(call.config["padding"]), (0, 0)))
    else:
        op = irops.Crop(crops=(*_pairs(call.config["cropping"]), (0, 0)))
    b.emit(call.node, op, call.inputs, call.output)


def _permute(call: _Call, b: _Builder) -> None:
    b.emit(call.node, irops.Transpose(perm=tuple(d - 1 for d in call.config["dims"])), call.inputs, call.output)


def _repeat_vector(call: _Call, b: _Builder) -> None:
    b.emit(call.node, irops.RepeatVector(n=call.config["n"]), call.inputs, call.output)


def _feature_axis(call: _Call, axis: int) -> int:
    """A Keras axis (batch axis 0) as the IR's feature axis; the batch axis itself is refused."""
    if axis == 0:
        raise call.refuse("axis=0 (the batch axis)", "an axis other than the batch axis")
    return axis - 1 if axis > 0 else axis


def _concatenate(call: _Call, b: _Builder) -> None:
    op = irops.Concat(axis=_feature_axis(call, call.config["axis"]))
    b.emit(call.node, op, call.inputs, call.output)


def _broadcasts(*shapes: Shape) -> bool:
    """Shapes of one rank that agree on each axis or are 1 there."""
    if len({len(s) for s in shapes}) != 1:
        return False
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        return False
    return True


def _merge(op_class: type) -> Callable[[_Call, _Builder], None]:
    def rule(call: _Call, b: _Builder) -> None:
        shapes = {b.shapes[v] for v in call.inputs}
        if op_class is irops.Multiply and _broadcasts(*shapes):
            shapes = {next(iter(shapes))}  # e.g. a squeeze-and-excitation gate (1, 1, C) times its image
        if len(shapes) > 1:
            raise call.refuse(f"inputs of shapes {sorted(shapes)}", f"{call.kind} of tensors of one shape only "
                              "(no broadcasting)")
        b.emit(call.node, op_class(), call.inputs, call.output)

    return rule


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
    cfg = call.config
    max_value = None if cfg.get("max_value") is None else float(cfg["max_value"])
    op = irops.Relu(max_value=max_value, negative_slope=float(cfg.get("negative_slope") or 0.0),
                    threshold=float(cfg.get("threshold") or 0.0))
    b.emit(call.node, op, call.inputs, call.output)


def _leaky_relu(call: _Call, b: _Builder) -> None:
    b.emit(call.node, irops.Relu(negative_slope=float(call.config["negative_slope"])), call.inputs, call.output)


def _elu(call: _Call, b: _Builder) -> None:
    b.emit(call.node, irops.Elu(alpha=float(call.config["alpha"])), call.inputs, call.output)


def _prelu(call: _Call, b: _Builder) -> None:
    b.emit(call.node, irops.PRelu(), call.inputs, call.output, _params(call, b, ("alpha",)))


def _constants(call: _Call, b: _Builder, key: str) -> float | tuple[float, ...]:
    value = np.asarray(call.config[key], dtype=np.float64).reshape(-1)
    if value.size == 1:
        return float(value[0])
    channels = b.shapes[call.inputs[0]][-1]
    if value.size != channels:
        raise call.refuse(f"{key} of {value.size} values", f"a scalar {key} or one per channel ({channels})")
    return tuple(float(v) for v in value)


def _rescaling(call: _Call, b: _Builder) -> None:
    op = irops.Rescale(scale=_constants(call, b, "scale"), offset=_constants(call, b, "offset"))
    b.emit(call.node, op, call.inputs, call.output)


def _softmax(call: _Call, b: _Builder) -> None:
    axis = call.config.get("axis", -1)
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise call.refuse(f"axis={axis!r}", "softmax over one axis")
        axis = axis[0]
    b.emit(call.node, irops.Softmax(axis=_feature_axis(call, int(axis))), call.inputs, call.output)


def _identity(call: _Call, b: _Builder) -> None:
    b.emit(call.node, irops.Identity(), call.inputs, call.output)


def _single_axis(call: _Call, b: _Builder) -> int:
    axis = call.config.get("axis", -1)
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise call.refuse(f"axis={axis!r}", "normalisation over one axis")
        axis = axis[0]
    return _feature_axis(call, int(axis))


def _batch_norm(call: _Call, b: _Builder) -> None:
    cfg = call.config
    axis = _single_axis(call, b)
    if cfg.get("renorm"):
        raise call.refuse("renorm=True", "renorm=False only")
    found = _layer_weights(call.layer)
    shape = b.shapes[call.inputs[0]]
    channels = shape[axis % len(shape)]
    dtype = found["moving_mean"][0].dtype
    # center=False / scale=False: Keras skips beta / gamma; the IR always has both.
    found.setdefault("gamma", (np.ones(channels, dtype=dtype), False))
    found.setdefault("beta", (np.zeros(channels, dtype=dtype), False))
    op = irops.BatchNorm(epsilon=cfg["epsilon"], axis=axis)
    params = {role: b.param(call.layer, role, *found[role]) for role in op.param_roles}
    b.emit(call.node, op, call.inputs, call.output, params)


#: Normalization divides by max(sqrt(variance), 1e-7); sqrt(variance + 1e-14) agrees at variance 0
#: and within a relative 1e-14 / (2 variance) elsewhere (5e-5 at variance 1e-10)
NORMALIZATION_EPSILON = 1e-14


def _normalization(call: _Call, b: _Builder) -> None:
    """An adapted Normalization layer: batch_norm with unit gamma, zero beta and its statistics."""
    import keras

    if call.config.get("invert"):
        raise call.refuse("invert=True", "invert=False only")
    axis = _single_axis(call, b)
    shape = b.shapes[call.inputs[0]]
    channels = shape[axis % len(shape)]
    mean = np.asarray(keras.ops.convert_to_numpy(call.layer.mean), dtype=np.float32).reshape(-1)
    variance = np.asarray(keras.ops.convert_to_numpy(call.layer.variance), dtype=np.float32).reshape(-1)
    if mean.size != channels:
        raise call.refuse(f"statistics of {mean.size} values", f"one mean and variance per channel ({channels})")
    found = {"gamma": np.ones(channels, np.float32), "beta": np.zeros(channels, np.float32),
             "moving_mean": mean, "moving_variance": variance}
    op = irops.BatchNorm(epsilon=NORMALIZATION_EPSILON, axis=axis)
    params = {role: b.param(call.layer, role, found[role], False) for role in op.param_roles}
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
    "Conv1D": _conv,
    "Conv2D": _conv,
    "DepthwiseConv1D": _depthwise_or_separable,
    "DepthwiseConv2D": _depthwise_or_separable,
    "SeparableConv1D": _depthwise_or_separable,
    "SeparableConv2D": _depthwise_or_separable,
    "AveragePooling1D": _pool(irops.AvgPool1D),
    "AveragePooling2D": _pool(irops.AvgPool2D),
    "MaxPooling1D": _pool(irops.MaxPool1D),
    "MaxPooling2D": _pool(irops.MaxPool2D),
    "GlobalAveragePooling1D": _global_pool(irops.GlobalAvgPool1D),
    "GlobalAveragePooling2D": _global_pool(irops.GlobalAvgPool2D),
    "GlobalMaxPooling1D": _global_pool(irops.GlobalMaxPool1D),
    "GlobalMaxPooling2D": _global_pool(irops.GlobalMaxPool2D),
    "UpSampling1D": _upsampling,
    "UpSampling2D": _upsampling,
    "ZeroPadding1D": _pad_or_crop,
    "ZeroPadding2D": _pad_or_crop,
    "Cropping1D": _pad_or_crop,
    "Cropping2D": _pad_or_crop,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Permute": _permute,
    "RepeatVector": _repeat_vector,
    "Activation": _activation,
    "ReLU": _relu,
    "LeakyReLU": _leaky_relu,
    "PReLU": _prelu,
    "ELU": _elu,
    "Softmax": _softmax,
    "Rescaling": _rescaling,
    "Normalization": _normalization,
    "Dropout": _identity,
    "SpatialDropout1D": _identity,
    "SpatialDropout2D": _identity,
    "GaussianDropout": _identity,
    "GaussianNoise": _identity,
    "Identity": _identity,
    "BatchNormalization": _batch_norm,
    "Add": _add,
    "Subtract": _merge(irops.Subtract),
    "Multiply": _merge(irops.Multiply),
    "Average": _merge(irops.Average),
    "Maximum": _merge(irops.Maximum),
    "Minimum": _merge(irops.Minimum),
    "Concatenate": _concatenate,
}


def _check_layer(layer: Any) -> None:
    """The layer is a stock Keras layer with a rule, computing in float32/float64."""
    import keras

    kind = type(layer).__name__
    stock = getattr(keras.layers, kind, None) or import_attention.application_layer(kind)
    if kind == "Lambda" and type(layer) is stock:
        raise UnsupportedLayerError(
            layer.name, kind, None, "no Lambda layers: its Python function has no inspectable graph; replace it "
            "with the Keras layers or keras.ops calls it computes"
        )
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
_CONV = ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate", "groups",
         "activation", "use_bias", "lora_rank")
_DEPTHWISE = ("kernel_size", "strides", "padding", "data_format", "depth_multiplier", "dilation_rate",
              "activation", "use_bias")
_POOL = ("pool_size", "strides", "padding", "data_format")

LAYER_OPTIONS: dict[str, tuple[str, ...]] = {
    "Dense": ("units", "activation", "use_bias", "lora_rank"),
    "Conv1D": _CONV,
    "Conv2D": _CONV,
    "DepthwiseConv1D": _DEPTHWISE,
    "DepthwiseConv2D": _DEPTHWISE,
    "SeparableConv1D": (*_DEPTHWISE, "filters"),
    "SeparableConv2D": (*_DEPTHWISE, "filters"),
    "AveragePooling1D": _POOL,
    "AveragePooling2D": _POOL,
    "MaxPooling1D": _POOL,
    "MaxPooling2D": _POOL,
    "GlobalAveragePooling1D": ("data_format", "keepdims"),
    "GlobalAveragePooling2D": ("data_format", "keepdims"),
    "GlobalMaxPooling1D": ("data_format", "keepdims"),
    "GlobalMaxPooling2D": ("data_format", "keepdims"),
    "UpSampling1D": ("size",),
    "UpSampling2D": ("size", "data_format", "interpolation"),
    "ZeroPadding1D": ("padding",),
    "ZeroPadding2D": ("padding", "data_format"),
    "Cropping1D": ("cropping",),
    "Cropping2D": ("cropping", "data_format"),
    "Flatten": ("data_format",),
    "Reshape": ("target_shape",),
    "Permute": ("dims",),
    "RepeatVector": ("n",),
    "Activation": ("activation",),
    "ReLU": ("max_value", "negative_slope", "threshold"),
    "LeakyReLU": ("negative_slope",),
    "PReLU": (),
    "ELU": ("alpha",),
    "Softmax": ("axis",),
    "Rescaling": ("scale", "offset"),
    "Normalization": ("axis", "invert"),
    "Dropout": (),
    "SpatialDropout1D": (),
    "SpatialDropout2D": (),
    "GaussianDropout": (),
    "GaussianNoise": (),
    "Identity": (),
    "BatchNormalization": ("axis", "epsilon", "renorm"),
    "Add": (),
    "Subtract": (),
    "Multiply": (),
    "Average": (),
    "Maximum": (),
    "Minimum": (),
    "Concatenate": ("axis",),
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


def _apply(layer: Any, inputs: list[str], output: str, node: str, b: _Builder,
           kwargs: dict[str, Any] | None = None) -> None:
    _check_layer(layer)
    call = _Call(layer, _options(layer), inputs, output, node, dict(kwargs or {}))
    import_recurrent.check_token_reader(call, b)
    LAYER_RULES[call.kind](call, b)


# -- keras.ops operations recorded in functional graphs ------------------------------------------

@dataclass(frozen=True)
class _Tensor:
    """A tensor argument of an operation call: the IR value holding it."""

    value: str


def _operation_args(args: Any, inputs: Any) -> list[Any]:
    """The call's positional arguments with each Keras tensor replaced by its IR value (in order)."""
    import keras

    def convert(item: Any) -> Any:
        if isinstance(item, keras.KerasTensor):
            return _Tensor(next(inputs))
        if isinstance(item, (list, tuple)):
            return type(item)(convert(i) for i in item)
        return item

    return [convert(a) for a in args]


def _op_refuse(operation: Any, what: str, supported: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(operation.name, type(operation).__name__, what, supported)


def _scalar(operation: Any, value: Any) -> float:
    array = np.asarray(value, dtype=np.float64)
    if array.size != 1:
        raise _op_refuse(operation, f"a constant operand of shape {array.shape}",
                         "tensors of one shape, or a scalar constant")
    return float(array.reshape(()))


def _arithmetic(operation: Any, args: list[Any], output: str, b: _Builder) -> None:
    """add/subtract/multiply/divide of two tensors of one shape, or of a tensor and a scalar
    constant (a public rescale: nothing about the constant is secret)."""
    kind = type(operation).__name__
    a, c = args[0], args[1]
    if isinstance(a, _Tensor) and isinstance(c, _Tensor):
        merge = {"Add": irops.Add, "Subtract": irops.Subtract, "Multiply": irops.Multiply}.get(kind)
        if merge is irops.Multiply and _broadcasts(b.shapes[a.value], b.shapes[c.value]):
            b.emit(operation.name, merge(), [a.value, c.value], output)
            return
        if b.shapes[a.value] != b.shapes[c.value]:
            raise _op_refuse(operation, f"operands of shapes {b.shapes[a.value]} and {b.shapes[c.value]}",
                             "tensors of one shape (no broadcasting but in multiply), or a scalar constant")
        if merge is None:
            raise _op_refuse(operation, "a tensor divisor", "division by a constant only")
        b.emit(operation.name, merge(), [a.value, c.value], output)
        return
    tensor, constant, swapped = (a, c, False) if isinstance(a, _Tensor) else (c, a, True)
    if import_attention.constant_tensor_operand(operation, tensor, constant, swapped, output, b):
        return  # x + C, x - C, C - x for a constant tensor C (e.g. position embeddings)
    v = _scalar(operation, constant)
    if kind == "Add":
        op = irops.Rescale(offset=v)
    elif kind == "Subtract":
        op = irops.Rescale(scale=-1.0, offset=v) if swapped else irops.Rescale(offset=-v)
    elif kind == "Multiply":
        op = irops.Rescale(scale=v)
    elif not swapped and v != 0.0:
        op = irops.Rescale(scale=1.0 / v)
    else:
        raise _op_refuse(operation, "a tensor divisor or a zero constant", "division by a non-zero constant only")
    b.emit(operation.name, op, [tensor.value], output)


def _shape_operation(operation: Any, args: list[Any], output: str, b: _Builder) -> None:
    """reshape/expand_dims/squeeze (a Reshape of the features), transpose keeping the batch first."""
    kind = type(operation).__name__
    (x,) = [a for a in args if isinstance(a, _Tensor)]
    shape = b.shapes[x.value]
    if kind == "Transpose":
        axes = operation.axes
        if axes is None or axes[0] != 0:
            raise _op_refuse(operation, f"axes={axes!r}", "a permutation that keeps the batch axis first")
        b.emit(operation.name, irops.Transpose(perm=tuple(a - 1 for a in axes[1:])), [x.value], output)
        return
    full = [None, *shape]
    if kind == "Reshape":
        target = list(operation.newshape)
        if target[0] not in (-1, None) or -1 in target[1:] and target[0] == -1:
            raise _op_refuse(operation, f"newshape={tuple(target)}", "a newshape whose first entry is the batch (-1)")
        new = tuple(target[1:])
    elif kind == "ExpandDims":
        axis = operation.axis if operation.axis >= 0 else operation.axis + len(full) + 1
        if axis == 0:
            raise _op_refuse(operation, "axis=0", "an axis other than the batch axis")
        new = tuple(full[1:axis] + [1] + full[axis:])  # type: ignore[operator]
    else:  # Squeeze
        axes = operation.axis if isinstance(operation.axis, (list, tuple)) else (
            [i for i, d in enumerate(full) if d == 1] if operation.axis is None else [operation.axis])
        axes = [a % len(full) for a in axes]
        if 0 in axes:
            raise _op_refuse(operation, f"axis={operation.axis!r}", "an axis other than the batch axis")
        new = tuple(d for i, d in enumerate(full) if i and i not in axes)  # type: ignore[misc]
    b.emit(operation.name, irops.Reshape(target_shape=new), [x.value], output)


def _concatenate_operation(operation: Any, args: list[Any], output: str, b: _Builder) -> None:
    tensors = args[0]
    if not all(isinstance(t, _Tensor) for t in tensors):
        raise _op_refuse(operation, "a constant operand", "tensors only")
    if operation.axis == 0:
        raise _op_refuse(operation, "axis=0 (the batch axis)", "an axis other than the batch axis")
    axis = operation.axis - 1 if operation.axis > 0 else operation.axis
    b.emit(operation.name, irops.Concat(axis=axis), [t.value for t in tensors], output)


def _activation_operation(make: Callable[[Any], Any]) -> Callable[[Any, list[Any], str, _Builder], None]:
    def rule(operation: Any, args: list[Any], output: str, b: _Builder) -> None:
        (x,) = [a for a in args if isinstance(a, _Tensor)]
        b.emit(operation.name, make(operation), [x.value], output)

    return rule


def _softmax_operation(operation: Any) -> Any:
    axis = operation.axis
    if axis == 0:
        raise _op_refuse(operation, "axis=0 (the batch axis)", "an axis other than the batch axis")
    return irops.Softmax(axis=axis - 1 if axis > 0 else axis)


#: keras.ops class name (a call on symbolic tensors in a functional model) -> rule
OPERATION_RULES: dict[str, Callable[[Any, list[Any], str, _Builder], None]] = {
    "Add": _arithmetic,
    "Subtract": _arithmetic,
    "Multiply": _arithmetic,
    "Divide": _arithmetic,
    "TrueDivide": _arithmetic,
    "Reshape": _shape_operation,
    "ExpandDims": _shape_operation,
    "Squeeze": _shape_operation,
    "Transpose": _shape_operation,
    "Concatenate": _concatenate_operation,
    "Relu": _activation_operation(lambda o: irops.Relu()),
    "Relu6": _activation_operation(lambda o: irops.Relu(max_value=6.0)),
    "LeakyRelu": _activation_operation(lambda o: irops.Relu(negative_slope=float(o.negative_slope))),
    "Sigmoid": _activation_operation(lambda o: irops.Sigmoid()),
    "Tanh": _activation_operation(lambda o: irops.Tanh()),
    "Softmax": _activation_operation(_softmax_operation),
    "Elu": _activation_operation(lambda o: irops.Elu(alpha=float(getattr(o, "alpha", 1.0)))),
    "Gelu": _activation_operation(lambda o: irops.Gelu(approximate=bool(o.approximate))),
    "Silu": _activation_operation(lambda o: irops.Silu()),
    "HardSigmoid": _activation_operation(lambda o: irops.HardSigmoid()),
    "HardSilu": _activation_operation(lambda o: irops.HardSilu()),
    "Softplus": _activation_operation(lambda o: irops.Softplus()),
    "Softsign": _activation_operation(lambda o: irops.Softsign()),
}


def _apply_operation(operation: Any, args: list[Any], output: str, b: _Builder) -> None:
    OPERATION_RULES[type(operation).__name__](operation, args, output, b)


# -- walking the model -----------------------------------------------------------------------------

def _input_spec(name: str, batch_shape: Any, dtype: Any) -> TensorSpec:
    shape = tuple(batch_shape)
    if any(d is None for d in shape[1:]) or len(shape) < 2:
        raise UnsupportedLayerError(
            name, "InputLayer", f"shape {shape}", "inputs of fixed feature shape (only the batch dimension may be None)"
        )
    dtype = getattr(dtype, "name", dtype)
    if dtype in import_recurrent.INT_DTYPES:  # token ids: the one-hot axis is added by the Embedding
        return TensorSpec(shape=(None, *(int(d) for d in shape[1:])), dtype="int32")
    if dtype not in ("float32", "float64"):
        raise UnsupportedLayerError(name, "InputLayer", f"dtype={dtype!r}",
                                    "float32 or float64 inputs, or integer token ids read by an Embedding")
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
    import_recurrent.register_input(b, first.name, spec)
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
            import_recurrent.register_input(b, name, specs[name])
            values[(name, 0)] = name
            continue
        if not isinstance(operation, keras.layers.Layer) and kind not in OPERATION_RULES:
            raise UnsupportedLayerError(
                name, kind, f"no Keras layer behind it (an operation from {type(operation).__module__})",
                f"Keras layers and the keras.ops operations {sorted(OPERATION_RULES)}; replace this "
                "call on symbolic tensors with a layer, or compute it outside the model",
            )
        # A call that read no tensor (an InputLayer's) is no call here, as in get_config.
        calls = [node for node in operation._inbound_nodes if id(node) in own and node.input_tensors]
        for index, node in enumerate(calls):
            kwargs = node.arguments.kwargs
            if _refs(kwargs, own):
                keys = [key for key, value in kwargs.items() if _refs(value, own)]
                raise UnsupportedLayerError(name, kind, f"a tensor passed by keyword ({', '.join(keys)})",
                                            "tensors passed positionally only (masks are not supported)")
            if kwargs.get("training"):
                raise UnsupportedLayerError(name, kind, "training=True in its call", "inference-mode calls only")
            pending.append((operation, index, _refs(node.arguments.args, own), node))

    # Operations are listed by depth, but a shared layer's later calls may read later layers: schedule.
    while pending:
        ready = [p for p in pending if all((n, c) in values for n, c, _ in p[2])]
        if not ready:
            stuck = sorted({p[0].name for p in pending})
            raise ValueError(f"the model's graph has a cycle or reads unknown tensors at layers {stuck}")
        for layer, index, reads, node in ready:
            if any(t != 0 for _, _, t in reads):
                raise UnsupportedLayerError(layer.name, type(layer).__name__, "an input from a multi-output layer",
                                            "single-output layers only")
            # Keras names never hold '/', so later calls of a shared layer cannot clash with a layer.
            value = layer.name if index == 0 else f"{layer.name}/call{index}"
            inputs = [values[(n, c)] for n, c, _ in reads]
            if isinstance(layer, keras.layers.Layer):
                _apply(layer, inputs, value, value, b, node.arguments.kwargs)
            else:
                _apply_operation(layer, _operation_args(node.arguments.args, iter(inputs)), value, b)
            values[(layer.name, index)] = value
        pending = [p for p in pending if p not in ready]

    # ``model.input`` / ``model.output`` keep the structures the model was built with (a dict in its
    # own order); ``model.inputs`` / ``model.outputs`` are flattened with dict keys sorted.
    inputs = {name: specs[name] for name, _, _ in _refs(model.input, own)}
    outputs = [values[(n, c)] for n, c, _ in _refs(model.output, own)]
    return inputs, outputs


# LayerNormalization, MultiHeadAttention, Conv2DTranspose, ConvNeXt's layers, keras.ops sum/mean/matmul/exp
from frontends.keras import import_attention  # noqa: E402 (it imports this module)

LAYER_RULES.update(import_attention.LAYER_RULES)
LAYER_OPTIONS.update(import_attention.LAYER_OPTIONS)
OPERATION_RULES.update(import_attention.OPERATION_RULES)
ACTIVATIONS.update(import_attention.ACTIVATIONS)
SUPPORTED_ACTIVATIONS = f"activation in {['linear', *ACTIVATIONS]}"

# Embedding (integer token inputs), SimpleRNN, LSTM, GRU, Bidirectional, TimeDistributed
from frontends.keras import import_recurrent  # noqa: E402 (it imports this module)

LAYER_RULES.update(import_recurrent.LAYER_RULES)
LAYER_OPTIONS.update(import_recurrent.LAYER_OPTIONS)


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
    import_recurrent.check_masking(model)
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
    inputs = import_recurrent.finish_inputs(inputs, b)  # token inputs get their one-hot axis
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
