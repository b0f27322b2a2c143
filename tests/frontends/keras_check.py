"""Keras models, one per importer rule plus three whole models, checked against the IR reference.

Importable (the in-process tests use ``CASES`` and ``check``) and runnable as
``python -m tests.frontends.keras_check`` under any ``KERAS_BACKEND``: it prints
one JSON line with the backend Keras actually used and, per case, the op kinds
of the imported graph and max |reference - model.predict|.  KERAS_BACKEND is
fixed when Keras is imported, so other backends are checked in a subprocess.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass(frozen=True)
class Case:
    build: Callable[[], Any]
    #: feature shapes of the model inputs, in model.inputs order
    input_shapes: tuple[tuple[int, ...], ...]
    #: op kinds of the imported graph, in node order
    kinds: tuple[str, ...]
    #: inputs are shifted by this much (e.g. all negative, so max-pool padding must not win)
    shift: float = 0.0
    #: Keras backends on which the import must be refused (UnsupportedLayerError)
    refused_on: tuple[str, ...] = ()


def randomize(model: Any, seed: int = 0) -> Any:
    """Non-trivial weights everywhere: non-zero biases, BN statistics away from (0, 1)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for v in layer.weights:
            role = v.path.rsplit("/", 1)[-1]
            if role == "moving_variance":
                values.append(rng.uniform(0.5, 2.0, v.shape))
            else:
                values.append(rng.normal(0.0, 0.5, v.shape))
        if values:
            layer.set_weights([a.astype(np.float32) for a in values])
    return model


def _seq(shape: tuple[int, ...], *layers: Any) -> Callable[[], Any]:
    def build() -> Any:
        import keras

        return keras.Sequential([keras.Input(shape, name="x"), *[make() for make in layers]])

    return build


def _layer(name: str, *args: Any, **kwargs: Any) -> Callable[[], Any]:
    """A deferred ``keras.layers.<name>(*args, **kwargs)``: built after Keras is imported."""

    def make() -> Any:
        import keras

        return getattr(keras.layers, name)(*args, **kwargs)

    return make


def _add_three() -> Any:
    import keras

    a, b, c = (keras.Input((4,), name=n) for n in "abc")
    return keras.Model([a, b, c], keras.layers.Add()([a, b, c]))


def _shared_dense() -> Any:
    import keras

    a, b = keras.Input((3,), name="a"), keras.Input((3,), name="b")
    shared = keras.layers.Dense(3, activation="tanh", name="shared")
    total = keras.layers.Add()([shared(a), shared(b)])
    return keras.Model([a, b], [total, shared(total)])


def _two_inputs(layer: str, shape: tuple[int, ...], n: int = 2, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        import keras

        xs = [keras.Input(shape, name=f"in{i}") for i in range(n)]
        return keras.Model(xs, getattr(keras.layers, layer)(**kwargs)(xs))

    return build


def _concat_two() -> Any:
    import keras

    a, b = keras.Input((3, 2), name="a"), keras.Input((3, 4), name="b")
    return keras.Model([a, b], keras.layers.Concatenate(axis=-1)([a, b]))


def _ops_graph() -> Any:
    """The keras.ops calls Keras 3 records as operations in a functional graph."""
    import keras
    from keras import ops

    a, b = keras.Input((3, 4), name="a"), keras.Input((3, 4), name="b")
    h = a + b
    h = h - 0.5
    h = h * a
    h = 2.0 - h
    h = h / 4.0
    h = ops.concatenate([h, b], axis=-1)
    h = ops.transpose(h, (0, 2, 1))
    h = ops.reshape(h, (-1, 4, 6))
    h = ops.expand_dims(h, 1)
    h = ops.squeeze(h, 1)
    h = ops.relu(h) - ops.gelu(h, approximate=True)
    return keras.Model([a, b], ops.softmax(h, axis=1))


def _attention_graph() -> Any:
    """MultiHeadAttention (cross and causal self), LayerNormalization on two axes, Dense on a sequence
    with the exponential activation, and the keras.ops mean/sum/matmul/exp and a constant tensor."""
    import keras
    from keras import layers, ops

    q, v = keras.Input((5, 6), name="q"), keras.Input((4, 3), name="v")
    h = layers.MultiHeadAttention(2, 3, value_dim=2, output_shape=6)(q, v)
    h = layers.LayerNormalization(axis=[1, 2], epsilon=1e-6)(h + q)
    h = h + layers.MultiHeadAttention(1, 4, use_bias=False)(h, h, use_causal_mask=True)
    h = layers.LayerNormalization(center=False)(h)
    h = layers.Dense(3, activation="exponential")(h) - np.linspace(0.0, 1.0, 15).reshape(5, 3).astype("float32")
    gram = ops.matmul(ops.transpose(h, (0, 2, 1)), h)
    return keras.Model([q, v], ops.exp(ops.mean(gram, axis=1) * 0.01) + ops.sum(h, axis=1))


def _conv_transpose_graph() -> Any:
    import keras

    x = keras.Input((4, 3, 2), name="x")
    h = keras.layers.Conv2DTranspose(3, 4, strides=2, padding="same", activation="relu")(x)
    h = keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same")(h)
    h = keras.Sequential([keras.layers.Conv2DTranspose(2, (2, 3), strides=(3, 1), use_bias=False)], name="up")(h)
    return keras.Model(x, h)


def _se_gate() -> Any:
    """Squeeze-and-excitation: a (1, 1, C) gate times its image (EfficientNet, MobileNetV3)."""
    import keras

    x = keras.Input((4, 4, 3), name="x")
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = keras.layers.Conv2D(3, 1, activation="hard_sigmoid")(gate)
    return keras.Model(x, keras.layers.Multiply()([x, gate]))


def _normalization() -> Any:
    import keras

    layer = keras.layers.Normalization()
    layer.adapt(np.random.default_rng(4).normal(1.0, 2.0, (50, 4)).astype(np.float32))
    return keras.Sequential([keras.Input((4,), name="x"), layer])


def mlp() -> Any:
    import keras

    return keras.Sequential(
        [
            keras.Input((20,), name="x"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(12, activation="tanh"),
            keras.layers.Dense(8, activation="sigmoid"),
            keras.layers.Dense(5, activation="softmax"),
        ],
        name="mlp",
    )


def lenet() -> Any:
    import keras

    return keras.Sequential(
        [
            keras.Input((14, 14, 1), name="x"),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.AveragePooling2D(2),
            keras.layers.Conv2D(6, 3, padding="same"),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ],
        name="lenet",
    )


def residual_bn() -> Any:
    import keras

    inputs = keras.Input((6, 6, 2), name="x")
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    skip = keras.layers.Conv2D(4, 1)(inputs)
    h = keras.layers.Add()([h, skip])
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(8)(h)
    h = keras.layers.BatchNormalization(epsilon=0.01)(h)
    outputs = keras.layers.Dense(3, activation="sigmoid")(h)
    return keras.Model(inputs, outputs, name="residual_bn")


CASES: dict[str, Case] = {
    "dense_linear": Case(_seq((5,), _layer("Dense", 3)), ((5,),), ("dense",)),
    "dense_no_bias": Case(_seq((5,), _layer("Dense", 3, use_bias=False)), ((5,),), ("dense",)),
    **{
        f"dense_{act}": Case(_seq((5,), _layer("Dense", 4, activation=act)), ((5,),), ("dense", act))
        for act in ("relu", "sigmoid", "tanh", "softmax")
    },
    "conv2d_valid": Case(_seq((7, 7, 2), _layer("Conv2D", 3, 3)), ((7, 7, 2),), ("conv2d",)),
    "conv2d_same_strided_relu": Case(
        _seq((7, 8, 3), _layer("Conv2D", 4, (2, 3), strides=2, padding="same", activation="relu")),
        ((7, 8, 3),),
        ("conv2d", "relu"),
    ),
    "conv2d_same_even_kernel_no_bias_tanh": Case(
        _seq((6, 5, 1), _layer("Conv2D", 2, 4, padding="same", use_bias=False, activation="tanh")),
        ((6, 5, 1),),
        ("conv2d", "tanh"),
    ),
    "avg_pool_valid": Case(_seq((6, 6, 3), _layer("AveragePooling2D", 2)), ((6, 6, 3),), ("avg_pool2d",)),
    # Columns pad (0, 1) and the last window holds two real cells: Keras' torch backend
    # replicates the edge cell into that mean, TensorFlow divides by the real cells.
    "avg_pool_same_uneven": Case(
        _seq((7, 6, 2), _layer("AveragePooling2D", 3, strides=2, padding="same")),
        ((7, 6, 2),),
        ("avg_pool2d",),
        refused_on=("torch",),
    ),
    # Pads (0, 1) too, but the padded window holds one real cell: every backend agrees.
    "avg_pool_same_odd_size": Case(
        _seq((7, 7, 2), _layer("AveragePooling2D", 2, padding="same")), ((7, 7, 2),), ("avg_pool2d",)
    ),
    "avg_pool_same_even_pads": Case(
        _seq((7, 7, 1), _layer("AveragePooling2D", 3, strides=2, padding="same")), ((7, 7, 1),), ("avg_pool2d",)
    ),
    "avg_pool_same_stride1": Case(
        _seq((5, 5, 2), _layer("AveragePooling2D", 2, strides=1, padding="same")), ((5, 5, 2),), ("avg_pool2d",)
    ),
    "max_pool_valid_rect": Case(
        _seq((6, 7, 2), _layer("MaxPooling2D", (2, 3), strides=(1, 2))), ((6, 7, 2),), ("max_pool2d",)
    ),
    "max_pool_same_negative": Case(
        _seq((7, 7, 2), _layer("MaxPooling2D", 3, strides=2, padding="same")),
        ((7, 7, 2),),
        ("max_pool2d",),
        shift=-3.0,
    ),
    "global_avg_pool": Case(_seq((4, 5, 3), _layer("GlobalAveragePooling2D")), ((4, 5, 3),), ("global_avg_pool2d",)),
    "flatten": Case(_seq((3, 4, 2), _layer("Flatten")), ((3, 4, 2),), ("flatten",)),
    "reshape": Case(_seq((12,), _layer("Reshape", (2, -1, 3))), ((12,),), ("reshape",)),
    **{
        f"activation_{act}": Case(_seq((6,), _layer("Activation", act)), ((6,),), (kind,))
        for act, kind in (
            ("relu", "relu"), ("sigmoid", "sigmoid"), ("tanh", "tanh"), ("softmax", "softmax"), ("linear", "identity")
        )
    },
    "relu_layer": Case(_seq((6,), _layer("ReLU")), ((6,),), ("relu",)),
    "softmax_layer": Case(_seq((2, 5), _layer("Softmax")), ((2, 5),), ("softmax",)),
    "dropout": Case(_seq((6,), _layer("Dropout", 0.5)), ((6,),), ("identity",)),
    "batch_norm_dense": Case(_seq((6,), _layer("BatchNormalization", epsilon=0.1)), ((6,),), ("batch_norm",)),
    "batch_norm_nhwc_no_center": Case(
        _seq((3, 3, 4), _layer("BatchNormalization", center=False)), ((3, 3, 4),), ("batch_norm",)
    ),
    "batch_norm_no_scale_no_center": Case(
        _seq((5,), _layer("BatchNormalization", center=False, scale=False)), ((5,),), ("batch_norm",)
    ),
    "add_three_inputs": Case(_add_three, ((4,), (4,), (4,)), ("add",)),
    "shared_dense_two_outputs": Case(
        _shared_dense, ((3,), (3,)), ("dense", "tanh", "dense", "tanh", "add", "dense", "tanh")
    ),
    # -- opset v2 layers --
    "zero_padding2d": Case(_seq((3, 4, 2), _layer("ZeroPadding2D", ((1, 2), (0, 1)))), ((3, 4, 2),), ("pad",)),
    "zero_padding1d": Case(_seq((4, 2), _layer("ZeroPadding1D", 2)), ((4, 2),), ("pad",)),
    "cropping2d": Case(_seq((5, 5, 2), _layer("Cropping2D", ((1, 0), (2, 1)))), ((5, 5, 2),), ("crop",)),
    "cropping1d": Case(_seq((6, 2), _layer("Cropping1D", (1, 2))), ((6, 2),), ("crop",)),
    "relu6": Case(_seq((6,), _layer("ReLU", max_value=6.0)), ((6,),), ("relu",)),
    "relu_all_options": Case(_seq((6,), _layer("ReLU", max_value=1.5, negative_slope=0.1, threshold=0.3)),
                             ((6,),), ("relu",)),
    "leaky_relu": Case(_seq((6,), _layer("LeakyReLU", negative_slope=0.2)), ((6,),), ("relu",)),
    "prelu_shared": Case(_seq((3, 3, 2), _layer("PReLU", shared_axes=[1, 2])), ((3, 3, 2),), ("prelu",)),
    "elu_layer": Case(_seq((6,), _layer("ELU", alpha=0.7)), ((6,),), ("elu",)),
    "rescaling": Case(_seq((3, 3, 2), _layer("Rescaling", 1 / 127.5, offset=-1.0)), ((3, 3, 2),), ("rescale",)),
    "normalization": Case(_normalization, ((4,),), ("batch_norm",)),
    "batch_norm_axis1": Case(_seq((4, 3), _layer("BatchNormalization", axis=1)), ((4, 3),), ("batch_norm",)),
    "multiply_se_gate": Case(_se_gate, ((4, 4, 3),), ("global_avg_pool2d", "conv2d", "hard_sigmoid", "multiply")),
    "concatenate": Case(_concat_two, ((3, 2), (3, 4)), ("concat",)),
    **{
        f"merge_{name.lower()}": Case(_two_inputs(name, (5,), 3 if name != "Subtract" else 2),
                                      ((5,),) * (3 if name != "Subtract" else 2), (kind,))
        for name, kind in (("Subtract", "subtract"), ("Multiply", "multiply"), ("Average", "average"),
                           ("Maximum", "maximum"), ("Minimum", "minimum"))
    },
    "conv1d_causal_dilated": Case(
        _seq((9, 2), _layer("Conv1D", 3, 3, padding="causal", dilation_rate=2, activation="relu")),
        ((9, 2),), ("pad", "conv1d", "relu")),
    "conv1d_same_strided": Case(_seq((9, 2), _layer("Conv1D", 4, 3, strides=2, padding="same", groups=2)),
                                ((9, 2),), ("conv1d",)),
    "conv2d_dilated_groups": Case(
        _seq((7, 7, 4), _layer("Conv2D", 6, 3, padding="same", dilation_rate=2, groups=2)), ((7, 7, 4),),
        ("conv2d",)),
    "depthwise_conv2d": Case(
        _seq((6, 6, 3), _layer("DepthwiseConv2D", 3, strides=2, padding="same", depth_multiplier=2)),
        ((6, 6, 3),), ("depthwise_conv2d",)),
    "separable_conv2d": Case(_seq((6, 6, 3), _layer("SeparableConv2D", 4, 3, activation="relu")), ((6, 6, 3),),
                             ("depthwise_conv2d", "conv2d", "relu")),
    "separable_conv1d": Case(_seq((8, 3), _layer("SeparableConv1D", 4, 3, padding="same")), ((8, 3),),
                             ("depthwise_conv1d", "conv1d")),
    "max_pool1d": Case(_seq((8, 2), _layer("MaxPooling1D", 2)), ((8, 2),), ("max_pool1d",)),
    "avg_pool1d_same": Case(_seq((7, 2), _layer("AveragePooling1D", 2, padding="same")), ((7, 2),),
                            ("avg_pool1d",)),
    "global_max_pool2d": Case(_seq((3, 4, 2), _layer("GlobalMaxPooling2D")), ((3, 4, 2),), ("global_max_pool2d",)),
    "global_avg_pool2d_keepdims": Case(_seq((3, 4, 2), _layer("GlobalAveragePooling2D", keepdims=True)),
                                       ((3, 4, 2),), ("global_avg_pool2d",)),
    "global_avg_pool1d": Case(_seq((5, 3), _layer("GlobalAveragePooling1D")), ((5, 3),), ("global_avg_pool1d",)),
    "global_max_pool1d_keepdims": Case(_seq((5, 3), _layer("GlobalMaxPooling1D", keepdims=True)), ((5, 3),),
                                       ("global_max_pool1d",)),
    "upsampling2d": Case(_seq((2, 3, 2), _layer("UpSampling2D", (2, 3))), ((2, 3, 2),), ("upsample2d",)),
    "upsampling1d": Case(_seq((3, 2), _layer("UpSampling1D", 2)), ((3, 2),), ("upsample1d",)),
    "permute": Case(_seq((2, 3, 4), _layer("Permute", (3, 1, 2))), ((2, 3, 4),), ("transpose",)),
    "repeat_vector": Case(_seq((4,), _layer("RepeatVector", 3)), ((4,),), ("repeat_vector",)),
    "flatten_rank2": Case(_seq((3, 4), _layer("Flatten")), ((3, 4),), ("flatten",)),
    "softmax_axis1": Case(_seq((3, 4), _layer("Softmax", axis=1)), ((3, 4),), ("softmax",)),
    **{
        f"activation_{act}": Case(_seq((6,), _layer("Activation", act)), ((6,),), (kind,))
        for act, kind in (
            ("elu", "elu"), ("gelu", "gelu"), ("silu", "silu"), ("swish", "silu"), ("hard_sigmoid", "hard_sigmoid"),
            ("hard_silu", "hard_silu"), ("hard_swish", "hard_silu"), ("softplus", "softplus"),
            ("softsign", "softsign"), ("relu6", "relu"), ("leaky_relu", "relu"),
        )
    },
    "dense_gelu": Case(_seq((5,), _layer("Dense", 4, activation="gelu")), ((5,),), ("dense", "gelu")),
    "keras_ops_graph": Case(
        _ops_graph, ((3, 4), (3, 4)),
        ("add", "rescale", "multiply", "rescale", "rescale", "concat", "transpose", "reshape", "reshape", "reshape",
         "relu", "gelu", "subtract", "softmax")),
    "attention_graph": Case(
        _attention_graph, ((5, 6), (4, 3)),
        ("multi_head_attention", "add", "layer_norm", "multi_head_attention", "add", "layer_norm", "dense", "exp",
         "add_constant", "transpose", "reduce_sum", "matmul", "reduce_mean", "rescale", "exp", "add")),
    "conv_transpose_graph": Case(_conv_transpose_graph, ((4, 3, 2),),
                                 ("conv2d_transpose", "relu", "conv2d_transpose", "conv2d_transpose")),
    "mlp": Case(mlp, ((20,),), ("dense", "relu", "identity", "dense", "tanh", "dense", "sigmoid", "dense", "softmax")),
    "lenet": Case(
        lenet,
        ((14, 14, 1),),
        ("conv2d", "relu", "avg_pool2d", "conv2d", "relu", "max_pool2d", "flatten", "dense", "relu", "dense",
         "softmax"),
    ),
    "residual_bn": Case(
        residual_bn,
        ((6, 6, 2),),
        ("conv2d", "conv2d", "batch_norm", "relu", "add", "global_avg_pool2d", "dense", "batch_norm", "dense",
         "sigmoid"),
    ),
}


def _bidirectional(inner: str, merge_mode: str, **kwargs: Any) -> Callable[[], Any]:
    def make() -> Any:
        import keras

        return keras.layers.Bidirectional(getattr(keras.layers, inner)(**kwargs), merge_mode=merge_mode)

    return make


def _time_distributed_dense() -> Any:
    import keras

    return keras.layers.TimeDistributed(keras.layers.Dense(2, activation="relu"))


# Sequence models (opset v2, frontends/keras/import_recurrent.py); Embedding's int inputs: tests/conformance
CASES.update({
    "lstm_seq_backwards": Case(_seq((5, 3), _layer("LSTM", 3, return_sequences=True, go_backwards=True)), ((5, 3),),
                               ("lstm",)),
    "gru_reset_before": Case(_seq((5, 3), _layer("GRU", 3, reset_after=False)), ((5, 3),), ("gru",)),
    "simple_rnn": Case(_seq((5, 3), _layer("SimpleRNN", 3)), ((5, 3),), ("simple_rnn",)),
    "bidirectional_gru_concat_seq": Case(_seq((5, 3), _bidirectional("GRU", "concat", units=2, return_sequences=True)),
                                         ((5, 3),), ("gru", "gru", "reverse", "concat")),
    "time_distributed_dense": Case(_seq((5, 3), _time_distributed_dense), ((5, 3),), ("conv1d", "relu")),
})


def case_inputs(case: Case, batch: int = 5, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(0.0, 1.0, (batch, *s)) + case.shift).astype(np.float32) for s in case.input_shapes]


def check(name: str) -> dict[str, Any]:
    """``{"kinds": op kinds of the imported graph, "error": max |reference - model.predict|}``,
    or ``{"refused": message}`` when the importer raised ``UnsupportedLayerError``."""
    from bridge.reference import run_reference
    from frontends.keras import UnsupportedLayerError, to_ir

    case = CASES[name]
    model = randomize(case.build())
    xs = case_inputs(case)
    try:
        program, weights = to_ir(model)
    except UnsupportedLayerError as exc:
        return {"refused": str(exc)}
    kinds = [n.op.kind for n in program.graph.nodes]
    got = run_reference(program, weights, dict(zip(program.graph.inputs, xs, strict=True)))
    expected = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    error = 0.0
    for out, want in zip(got.values(), expected, strict=True):
        if out.shape != np.shape(want):
            return {"kinds": kinds, "error": float("inf")}
        error = max(error, float(np.max(np.abs(out - np.asarray(want, dtype=np.float64)))))
    return {"kinds": kinds, "error": error}


#: whole models whose import and predict must not load TensorFlow under another Keras backend
#: (checked first; some Keras layers load it themselves when built, e.g. Bidirectional)
WITHOUT_TENSORFLOW = ("mlp", "lenet", "residual_bn")


def main(names: list[str]) -> None:
    """One JSON line: the Keras backend, each case's result, and whether TensorFlow was loaded
    once Keras was imported and once the WITHOUT_TENSORFLOW cases were checked."""
    import keras

    names = names or list(CASES)
    before = "tensorflow" in sys.modules
    first = [n for n in WITHOUT_TENSORFLOW if n in names]
    results = {name: check(name) for name in first}
    after_first = "tensorflow" in sys.modules
    results.update({name: check(name) for name in names if name not in results})
    print(json.dumps({"backend": keras.backend.backend(), "results": results,
                      "tensorflow_before": before, "tensorflow_after_first": after_first, "first": first}))


if __name__ == "__main__":
    main(sys.argv[1:])
