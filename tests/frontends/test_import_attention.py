"""Importer rules of frontends/keras/import_attention.py: what is read, what is refused (values
against model.predict under both Keras backends are in keras_check's attention and conv-transpose
graphs)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from bridge.reference import run_reference
from frontends.keras import UnsupportedLayerError, to_ir


def _model(build):
    x = keras.Input((4, 6), name="x")
    return keras.Model(x, build(x))


def test_attention_options_and_weights_are_read():
    layer = keras.layers.MultiHeadAttention(3, 2, value_dim=5, output_shape=7, name="mha")
    program, weights = to_ir(_model(lambda x: layer(x, x, use_causal_mask=True)))
    (node,) = program.graph.nodes
    assert (node.op.num_heads, node.op.key_dim, node.op.value_dim, node.op.causal) == (3, 2, 5, True)
    assert weights["mha/query_kernel"].shape == (6, 3, 2) and weights["mha/output_kernel"].shape == (3, 5, 7)
    np.testing.assert_array_equal(weights["mha/value_bias"], layer._value_dense.get_weights()[1])
    assert program.graph.outputs["mha"].shape == (None, 4, 7)


def test_attention_with_a_separate_key_matches_predict():
    q, v, k = keras.Input((3, 6), name="q"), keras.Input((4, 5), name="v"), keras.Input((4, 2), name="k")
    model = keras.Model([q, v, k], keras.layers.MultiHeadAttention(2, 3, value_dim=4)(q, v, k))
    program, weights = to_ir(model)
    assert program.graph.nodes[0].inputs == ("q", "v", "k")
    shapes = [(3, 6), (4, 5), (4, 2)]
    xs = [np.random.default_rng(i).normal(size=(2, *s)).astype(np.float32) for i, s in enumerate(shapes)]
    (got,) = run_reference(program, weights, dict(zip(program.graph.inputs, xs))).values()
    np.testing.assert_allclose(got, model.predict(xs, verbose=0), atol=1e-5)


def test_position_embedding_constant_is_a_shared_parameter():
    """keras.io's TokenAndPositionEmbedding adds an eagerly computed (maxlen, D) tensor: it becomes
    the add_constant node's parameter, never a public attribute; C - x negates x first."""
    positions = keras.layers.Embedding(4, 6, name="pos")(keras.ops.arange(0, 4))
    model = _model(lambda x: positions - keras.layers.Dense(6)(x))
    program, weights = to_ir(model)
    assert [n.op.kind for n in program.graph.nodes] == ["dense", "rescale", "add_constant"]
    (name,) = program.graph.nodes[2].params.values()
    np.testing.assert_allclose(weights[name], keras.ops.convert_to_numpy(positions), atol=0)
    assert not program.graph.parameters[name].trainable
    x = np.random.default_rng(0).normal(size=(2, 4, 6)).astype(np.float32)
    (got,) = run_reference(program, weights, {"x": x}).values()
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)


def test_elementwise_keras_ops_match_predict():
    a, c = keras.Input((3, 4), name="a"), keras.Input((3, 4), name="c")
    h = keras.ops.maximum(keras.ops.negative(a), c) - keras.ops.minimum(a, keras.ops.square(c))
    model = keras.Model([a, c], h)
    program, weights = to_ir(model)
    assert [n.op.kind for n in program.graph.nodes] == ["rescale", "multiply", "maximum", "minimum", "subtract"]
    xs = [np.random.default_rng(i).normal(size=(2, 3, 4)).astype(np.float32) for i in (1, 2)]
    (got,) = run_reference(program, weights, dict(zip(program.graph.inputs, xs))).values()
    np.testing.assert_allclose(got, model.predict(xs, verbose=0), atol=1e-5)


REFUSALS = {
    "maximum_scalar": (lambda x: keras.ops.maximum(x, 0.5), "maximum/minimum of two model tensors"),
    "attention_mask": (lambda x: keras.layers.MultiHeadAttention(2, 2, name="m")(
        x, x, attention_mask=keras.ops.matmul(x, keras.ops.transpose(x, (0, 2, 1)))),
        "a tensor passed by keyword (attention_mask)"),
    "scores": (lambda x: keras.layers.MultiHeadAttention(2, 2, name="m")(x, x, return_attention_scores=True)[0],
               "MultiHeadAttention layer 'm' has return_attention_scores=True"),
    "gate": (lambda x: keras.layers.MultiHeadAttention(2, 2, use_gate=True, name="m")(x, x),
             "MultiHeadAttention layer 'm' has use_gate=True"),
    "sum_everything": (lambda x: keras.ops.sum(x, axis=(1, 2)),
                       "over every feature axis with keepdims=False"),
    "mean_batch": (lambda x: keras.ops.mean(x, axis=0, keepdims=True), "(the batch axis)"),
    "matmul_constant": (lambda x: keras.ops.matmul(x, np.ones((6, 2), "float32")),
                        "has a constant operand; privacy-bridge supports matmul of two model tensors"),
    "multiply_constant_tensor": (lambda x: x * np.ones((4, 6), "float32"),
                                 "a constant tensor in add/subtract only"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_unsupported_attention_and_ops_options_are_refused_by_name(case):
    build, message = REFUSALS[case]
    try:
        model = _model(build)
    except (TypeError, ValueError) as exc:  # an option this Keras version lacks
        pytest.skip(f"Keras cannot build it: {exc}")
    with pytest.raises(UnsupportedLayerError) as info:
        to_ir(model)
    assert message in str(info.value)
