"""Importer rules for LayerNormalization, MultiHeadAttention, Conv2DTranspose, ConvNeXt's
LayerScale / StochasticDepth, the 'exponential' activation and the keras.ops mean / sum / matmul /
exp operations.  Registered in ``frontends.keras.importer``'s tables (this module imports it,
so it is imported at that module's end).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bridge.ir import ops as irops
from frontends.keras.importer import (
    _Builder,
    _Call,
    _emit_with_activation,
    _layer_weights,
    _op_refuse,
    _require,
    _Tensor,
)

#: layers of keras.applications modules that are no keras.layers class, by class name -> module;
#: only these very classes are read (a user's class of the same name is refused)
APPLICATION_LAYERS: dict[str, str] = {
    "LayerScale": "keras.src.applications.convnext",
    "StochasticDepth": "keras.src.applications.convnext",
}


def application_layer(kind: str) -> type | None:
    """The stock class named ``kind`` that is no keras.layers class (a keras.applications layer,
    or keras.Sequential used as a layer), if the importer reads it."""
    if kind == "Sequential":
        import keras

        return keras.Sequential
    module = APPLICATION_LAYERS.get(kind)
    if module is None:
        return None
    import importlib

    return getattr(importlib.import_module(module), kind, None)


def _keras_axes(call: _Call, axes: Any, rank: int) -> tuple[int, ...]:
    """Keras axes (batch axis 0) as ascending IR feature axes; the batch axis is refused."""
    listed = list(axes) if isinstance(axes, (list, tuple)) else [axes]
    full = [int(a) % rank for a in listed]
    if 0 in full:
        raise call.refuse(f"axis={axes!r} (the batch axis)", "normalisation over feature axes only")
    if full != sorted(full):
        # Keras sorts the axes as given and lays gamma out in that order: mixed signs that sort
        # differently from the axes they name would reshape gamma across axes
        raise call.refuse(f"axis={axes!r}", "axes listed in increasing order of the axes they name")
    return tuple(a - 1 for a in full)


def _layer_norm(call: _Call, b: _Builder) -> None:
    cfg = call.config
    if cfg.get("rms_scaling"):
        raise call.refuse("rms_scaling=True", "rms_scaling=False (the deprecated option scales by the variance)")
    shape = b.shapes[call.inputs[0]]
    axes = _keras_axes(call, cfg["axis"], len(shape) + 1)
    param_shape = tuple(shape[a] for a in axes)
    found = _layer_weights(call.layer)
    # center=False / scale=False: Keras skips beta / gamma; the IR always has both.
    found.setdefault("gamma", (np.ones(param_shape, np.float32), False))
    found.setdefault("beta", (np.zeros(param_shape, np.float32), False))
    op = irops.LayerNorm(axes=axes, epsilon=float(cfg["epsilon"]))
    params = {role: b.param(call.layer, role, *found[role]) for role in op.param_roles}
    b.emit(call.node, op, call.inputs, call.output, params)


def _layer_scale(call: _Call, b: _Builder) -> None:
    import keras

    gamma = np.asarray(keras.ops.convert_to_numpy(call.layer.gamma))
    b.emit(call.node, irops.LayerScale(), call.inputs, call.output,
           {"gamma": b.param(call.layer, "gamma", gamma, bool(call.layer.gamma.trainable))})


def _inference_identity(call: _Call, b: _Builder) -> None:
    """StochasticDepth: the identity outside training (Keras drops paths only when training)."""
    b.emit(call.node, irops.Identity(), call.inputs, call.output)


_ATTENTION = "MultiHeadAttention on (batch, steps, features) query, value and key tensors"


def _multi_head_attention(call: _Call, b: _Builder) -> None:
    layer, kwargs = call.layer, call.kwargs
    if len(call.inputs) not in (2, 3):
        raise call.refuse(f"{len(call.inputs)} tensor arguments",
                          f"{_ATTENTION} given as (query, value) or (query, value, key); masks other than "
                          "use_causal_mask=True are not supported")
    if kwargs.get("return_attention_scores"):
        raise call.refuse("return_attention_scores=True", "the attention output only")
    for what, value in (("use_gate", getattr(layer, "_use_gate", False)),
                        ("sliding_window", getattr(layer, "_sliding_window", None))):
        if value:
            raise call.refuse(f"{what}={value!r}", f"{_ATTENTION} without {what}")
    if call.config.get("attention_axes") not in (None, (1,), [1], (-2,), [-2]):
        raise call.refuse(f"attention_axes={call.config['attention_axes']!r}", "attention over the steps axis only")
    out_shape = getattr(layer, "_output_shape", None)
    if out_shape and len(out_shape) != 1:
        raise call.refuse(f"output_shape={tuple(out_shape)!r}", "output_shape of one dimension (or None)")
    for v in call.inputs:
        if len(b.shapes[v]) != 2:
            raise call.refuse(f"an input of shape (None, {', '.join(map(str, b.shapes[v]))})", _ATTENTION)
    use_bias = bool(call.config["use_bias"])
    params: dict[str, str] = {}
    for part, dense in (("query", layer._query_dense), ("key", layer._key_dense), ("value", layer._value_dense),
                        ("output", layer._output_dense)):
        values = dense.get_weights()
        params[f"{part}_kernel"] = b.param(layer, f"{part}_kernel", np.asarray(values[0]), bool(dense.trainable))
        if use_bias:
            params[f"{part}_bias"] = b.param(layer, f"{part}_bias", np.asarray(values[1]), bool(dense.trainable))
    op = irops.MultiHeadAttention(num_heads=int(call.config["num_heads"]), key_dim=int(call.config["key_dim"]),
                                  value_dim=int(call.config["value_dim"]), use_bias=use_bias,
                                  causal=bool(kwargs.get("use_causal_mask", False)))
    b.emit(call.node, op, call.inputs, call.output, params)


def _conv2d_transpose(call: _Call, b: _Builder) -> None:
    cfg = call.config
    _require(call, "data_format", ("channels_last",), "data_format='channels_last' only")
    _require(call, "padding", ("valid", "same"), "padding='valid' or 'same' only")
    _require(call, "dilation_rate", ((1, 1),), "dilation_rate=1 only")
    if cfg.get("output_padding") is not None:
        raise call.refuse(f"output_padding={cfg['output_padding']!r}", "output_padding=None only")
    if len(b.shapes[call.inputs[0]]) != 3:
        raise call.refuse(f"an input of shape (None, {', '.join(map(str, b.shapes[call.inputs[0]]))})",
                          "Conv2DTranspose on (batch, height, width, channels) inputs only")
    op = irops.Conv2DTranspose(filters=cfg["filters"], kernel_size=cfg["kernel_size"], strides=cfg["strides"],
                               padding=cfg["padding"], use_bias=cfg["use_bias"])
    found = _layer_weights(call.layer)
    params = {role: b.param(call.layer, role, *found[role]) for role in op.param_roles}
    _emit_with_activation(call, b, op, params)


def _nested_sequential(call: _Call, b: _Builder) -> None:
    """A Sequential used as a layer (ConvNeXt's stem and downsampling blocks): its layers inlined,
    each applied by its own rule; node and value names get the Sequential's name as a prefix."""
    from frontends.keras.importer import _apply

    inner = list(call.layer.layers)
    if len(call.inputs) != 1 or not inner:
        raise call.refuse(f"{len(call.inputs)} inputs and {len(inner)} layers", "a nested Sequential of one input "
                          "and at least one layer")
    value = call.inputs[0]
    for i, layer in enumerate(inner):
        # parameters are named after their layer: an inner layer named like another layer of the
        # model would read that layer's weights, so it is refused
        if any(p.startswith(f"{layer.name}/") for p in b.parameters):
            raise call.refuse(f"an inner layer named {layer.name!r} like another layer of the model",
                              "layer names unique across the model and its nested Sequentials; rename the layer")
        out = call.output if i == len(inner) - 1 else f"{call.output}/{layer.name}"
        _apply(layer, [value], out, f"{call.node}/{layer.name}", b)
        value = out


_DOT = "Dot of two (batch, n) tensors, or of two (batch, n, d) tensors over one feature axis each"


def _dot(call: _Call, b: _Builder) -> None:
    """keras.layers.Dot as the ops it is: (batch, n) . (batch, n) -> (batch, 1) is a product and a
    sum over the features; (batch, n, d) . (batch, m, e) contracting one axis of each is a batched
    matmul of the operands with the contracted axis moved last (left) and first (right)."""
    if call.config.get("normalize"):
        raise call.refuse("normalize=True", _DOT + " with normalize=False (an l2 normalisation of "
                          "each operand first: add it as layers the importer reads, or normalise in the model)")
    if len(call.inputs) != 2:
        raise call.refuse(f"{len(call.inputs)} inputs", _DOT)
    left, right = call.inputs
    shapes = [b.shapes[left], b.shapes[right]]
    rank = len(shapes[0]) + 1
    axes = call.config.get("axes")
    pair = list(axes) if isinstance(axes, (list, tuple)) else [axes, axes]
    if len(shapes[1]) + 1 != rank or rank not in (2, 3) or len(pair) != 2:
        raise call.refuse(f"inputs of shapes (None, {shapes[0]}) and (None, {shapes[1]}), axes={axes!r}", _DOT)
    a, c = (int(v) % rank for v in pair)
    if 0 in (a, c) or shapes[0][a - 1] != shapes[1][c - 1]:
        raise call.refuse(f"axes={axes!r} for inputs of shapes (None, {shapes[0]}) and (None, {shapes[1]})",
                          _DOT + " with contracted axes of equal length, other than the batch axis")
    if rank == 2:
        product = b.emit(f"{call.node}/product", irops.Multiply(), [left, right], f"{call.output}/product")
        b.emit(call.node, irops.ReduceSum(axes=(0,), keepdims=True), [product], call.output)
        return
    if a == 1:  # contract the left operand's last axis
        left = b.emit(f"{call.node}/left", irops.Transpose(perm=(1, 0)), [left], f"{call.output}/left")
    if c == 2:  # contract the right operand's first feature axis
        right = b.emit(f"{call.node}/right", irops.Transpose(perm=(1, 0)), [right], f"{call.output}/right")
    b.emit(call.node, irops.MatMul(), [left, right], call.output)


#: Keras layer class name -> rule
LAYER_RULES = {
    "Sequential": _nested_sequential,
    "LayerNormalization": _layer_norm,
    "MultiHeadAttention": _multi_head_attention,
    "Conv2DTranspose": _conv2d_transpose,
    "LayerScale": _layer_scale,
    "StochasticDepth": _inference_identity,
    "Dot": _dot,
}

#: Keras layer class name -> the options its rule reads (public attributes)
LAYER_OPTIONS = {
    "Sequential": (),
    "LayerNormalization": ("axis", "epsilon", "center", "scale", "rms_scaling"),
    "MultiHeadAttention": ("num_heads", "key_dim", "value_dim", "use_bias", "attention_axes", "dropout"),
    "Conv2DTranspose": ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate",
                        "output_padding", "activation", "use_bias"),
    "LayerScale": ("projection_dim",),
    "StochasticDepth": ("drop_path_rate",),
    "Dot": ("axes", "normalize"),
}


# -- keras.ops operations ------------------------------------------------------------------------

def _reduction(operation: Any, args: list[Any], output: str, b: _Builder) -> None:
    """keras.ops.sum / mean over feature axes (the batch axis stays)."""
    (x,) = [a for a in args if isinstance(a, _Tensor)]
    rank = len(b.shapes[x.value]) + 1
    axis = operation.axis
    if axis is None:
        raise _op_refuse(operation, "axis=None (it would reduce the batch axis too)",
                         "an axis or tuple of axes other than the batch axis")
    listed = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    full = sorted(int(a) % rank for a in listed)
    if 0 in full:
        raise _op_refuse(operation, f"axis={axis!r} (the batch axis)", "axes other than the batch axis")
    if full == list(range(1, rank)) and not operation.keepdims:
        raise _op_refuse(operation, f"axis={axis!r} over every feature axis with keepdims=False",
                         "keepdims=True, or axes that leave a feature axis (the IR keeps one: add a Reshape)")
    op_class = irops.ReduceSum if type(operation).__name__ == "Sum" else irops.ReduceMean
    b.emit(operation.name, op_class(axes=tuple(a - 1 for a in full), keepdims=bool(operation.keepdims)),
           [x.value], output)


def _matmul_operation(operation: Any, args: list[Any], output: str, b: _Builder) -> None:
    if not all(isinstance(a, _Tensor) for a in args[:2]):
        raise _op_refuse(operation, "a constant operand", "matmul of two model tensors; for a tensor times "
                         "fixed weights use a Dense layer, whose kernel the importer reads")
    a, c = args[0], args[1]
    sa, sc = b.shapes[a.value], b.shapes[c.value]
    if len(sa) < 2 or len(sa) != len(sc) or sa[:-2] != sc[:-2] or sa[-1] != sc[-2]:
        raise _op_refuse(operation, f"operands of shapes (None, {sa}) and (None, {sc})",
                         "matmul of (batch, ..., M, K) and (batch, ..., K, N) tensors with equal leading axes")
    b.emit(operation.name, irops.MatMul(), [a.value, c.value], output)


def _exp_operation(operation: Any, args: list[Any], output: str, b: _Builder) -> None:
    (x,) = [a for a in args if isinstance(a, _Tensor)]
    b.emit(operation.name, irops.Exp(), [x.value], output)


def constant_tensor_operand(operation: Any, tensor: _Tensor, constant: Any, swapped: bool, output: str,
                            b: _Builder) -> bool:
    """x + C, x - C or C - x for a constant C of more than one value (keras.io's position embeddings,
    computed eagerly when the model was built): C becomes a parameter of an add_constant node, shared
    by the model owner like a weight.  False (nothing emitted) for a scalar, which the caller reads as
    a public rescale."""
    import keras

    value = np.asarray(keras.ops.convert_to_numpy(constant)) if not isinstance(constant, (int, float)) else None
    if value is None or value.size <= 1:
        return False
    kind = type(operation).__name__
    if kind not in ("Add", "Subtract"):
        raise _op_refuse(operation, f"a constant operand of shape {value.shape}",
                         "a scalar constant, or a constant tensor in add/subtract only")
    x = tensor.value
    if kind == "Subtract" and swapped:  # C - x = (-x) + C
        x = b.emit(f"{operation.name}/negate", irops.Rescale(scale=-1.0), [x], f"{output}/negate")
    elif kind == "Subtract":
        value = -value
    shape = b.shapes[tensor.value]
    if value.ndim > len(shape) and value.shape[0] == 1:
        value = value[0]  # a leading batch axis of 1
    if value.ndim > len(shape) or any(c not in (1, d) for c, d in zip(value.shape[::-1], shape[::-1])):
        raise _op_refuse(operation, f"a constant operand of shape {value.shape}",
                         f"constants that broadcast over the features (None, {', '.join(map(str, shape))})")
    dtype = np.float64 if value.dtype == np.float64 else np.float32
    name = b.param(operation, "constant", value.astype(dtype), False)
    b.emit(operation.name, irops.AddConstant(), [x], output, {"constant": name})
    return True


def _elementwise_operation(operation: Any, args: list[Any], output: str, b: _Builder) -> None:
    """keras.ops negative / square / maximum / minimum of model tensors: Rescale(-1), x * x (one
    Beaver product) and the secure max/min of tensors of one shape (scalars are refused)."""
    kind = type(operation).__name__
    tensors = [a for a in args if isinstance(a, _Tensor)]
    if kind in ("Negative", "Square"):
        (x,) = tensors
        op = irops.Rescale(scale=-1.0) if kind == "Negative" else irops.Multiply()
        b.emit(operation.name, op, [x.value] if kind == "Negative" else [x.value, x.value], output)
        return
    if len(tensors) != 2 or b.shapes[tensors[0].value] != b.shapes[tensors[1].value]:
        raise _op_refuse(operation, "a constant or an operand of another shape",
                         "maximum/minimum of two model tensors of one shape (for max(x, 0) use relu)")
    op = irops.Maximum() if kind == "Maximum" else irops.Minimum()
    b.emit(operation.name, op, [t.value for t in tensors], output)


OPERATION_RULES = {
    "Negative": _elementwise_operation,
    "Square": _elementwise_operation,
    "Maximum": _elementwise_operation,
    "Minimum": _elementwise_operation,
    "Mean": _reduction,
    "Sum": _reduction,
    "Matmul": _matmul_operation,
    "Exp": _exp_operation,
}

#: Keras activation name -> IR op
ACTIVATIONS = {"exponential": irops.Exp}

__all__ = ["ACTIVATIONS", "APPLICATION_LAYERS", "LAYER_OPTIONS", "LAYER_RULES", "OPERATION_RULES",
           "application_layer"]
