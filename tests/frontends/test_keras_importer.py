"""The Keras importer: structure, parameters and refusals here; values vs ``model.predict``
under each Keras backend in a subprocess (KERAS_BACKEND is fixed at import time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from bridge.ir import Numerics, Placement, PrivacyMode
from bridge.reference import run_reference
from frontends.keras import UnsupportedLayerError, to_ir
from tests.frontends.keras_check import CASES, randomize

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5

# -- every case under both Keras backends ----------------------------------------------------------

@pytest.mark.parametrize("keras_backend", ["tensorflow", "torch"])
def test_every_case_matches_predict(keras_backend):
    env = dict(os.environ, KERAS_BACKEND=keras_backend, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.frontends.keras_check"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert report["backend"] == keras_backend
    assert set(report["results"]) == set(CASES)
    failures = []
    for name, case in CASES.items():
        result = report["results"][name]
        if keras_backend in case.refused_on:
            if "AveragePooling2D layer" not in result.get("refused", "") or "KERAS_BACKEND='torch'" not in result["refused"]:
                failures.append(f"{name}: expected a refusal, got {result}")
        elif "refused" in result:
            failures.append(f"{name}: refused: {result['refused']}")
        elif tuple(result["kinds"]) != case.kinds or not result["error"] <= TOLERANCE:
            failures.append(f"{name}: kinds {result['kinds']} (expected {list(case.kinds)}), error {result['error']}")
    assert not failures, "\n".join(failures)
    if keras_backend == "torch":
        # importing (and predicting) whole models under torch does not load TensorFlow: get_config()
        # would, as Keras serializes initializers and dtype policies through serialize_keras_object,
        # which imports TensorFlow whatever KERAS_BACKEND says
        assert report["first"] == ["mlp", "lenet", "residual_bn"]
        assert not report["tensorflow_before"], "TensorFlow was loaded before any import ran; the check proves nothing"
        assert not report["tensorflow_after_first"], "importing a model loaded TensorFlow under KERAS_BACKEND=torch"


# -- structure and parameters ----------------------------------------------------------------------

def test_activation_is_its_own_node_and_output_keeps_the_layer_name():
    model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(2, activation="relu", name="d")])
    program, _ = to_ir(model)
    nodes = program.graph.nodes
    assert [(n.name, n.op.kind, n.inputs, n.output) for n in nodes] == [
        ("d", "dense", ("x",), "d/pre_activation"),
        ("d/relu", "relu", ("d/pre_activation",), "d"),
    ]
    assert list(program.graph.inputs) == ["x"] and list(program.graph.outputs) == ["d"]
    assert program.graph.outputs["d"].shape == (None, 2)


def test_parameters_are_named_layer_slash_role_and_hold_the_keras_weights():
    model = randomize(
        keras.Sequential(
            [
                keras.Input((5, 5, 2), name="img"),
                keras.layers.Conv2D(3, 2, name="conv"),
                keras.layers.Flatten(name="flat"),
                keras.layers.Dense(4, use_bias=False, name="head"),
            ]
        )
    )
    program, weights = to_ir(model)
    params = program.graph.parameters
    assert set(params) == set(weights) == {"conv/kernel", "conv/bias", "head/kernel"}
    kernel, bias = model.get_layer("conv").get_weights()
    assert np.array_equal(weights["conv/kernel"], kernel) and np.array_equal(weights["conv/bias"], bias)
    assert np.array_equal(weights["head/kernel"], model.get_layer("head").get_weights()[0])
    assert params["conv/kernel"].shape == (2, 2, 2, 3) and params["head/kernel"].shape == (48, 4)
    assert all(w.dtype == np.float32 and params[n].dtype == "float32" for n, w in weights.items())
    assert program.graph.node("conv").params == {"kernel": "conv/kernel", "bias": "conv/bias"}
    assert program.graph.node("head").op.use_bias is False


def test_conv_and_pool_options_carry_over():
    model = keras.Sequential(
        [
            keras.Input((9, 9, 1)),
            keras.layers.Conv2D(2, (3, 2), strides=(2, 1), padding="same", name="c"),
            keras.layers.MaxPooling2D((2, 3), name="m"),
            keras.layers.AveragePooling2D(2, strides=1, padding="same", name="a"),
        ]
    )
    program, _ = to_ir(model)
    c, m, a = (program.graph.node(n).op for n in "cma")
    assert (c.filters, c.kernel_size, c.strides, c.padding) == (2, (3, 2), (2, 1), "same")
    assert (m.pool_size, m.strides, m.padding) == ((2, 3), (2, 3), "valid")  # strides default to the window
    assert (a.pool_size, a.strides, a.padding) == ((2, 2), (1, 1), "same")


def test_batch_norm_without_center_and_scale_gets_unit_gamma_and_zero_beta():
    model = randomize(
        keras.Sequential(
            [keras.Input((4,)), keras.layers.BatchNormalization(center=False, scale=False, epsilon=0.02, name="bn")]
        )
    )
    program, weights = to_ir(model)
    node = program.graph.node("bn")
    assert node.op.epsilon == pytest.approx(0.02)
    assert np.array_equal(weights["bn/gamma"], np.ones(4, np.float32))
    assert np.array_equal(weights["bn/beta"], np.zeros(4, np.float32))
    mean, var = model.get_layer("bn").get_weights()
    assert np.array_equal(weights["bn/moving_mean"], mean) and np.array_equal(weights["bn/moving_variance"], var)
    assert not any(spec.trainable for spec in program.graph.parameters.values())


def test_batch_norm_statistics_are_frozen_and_gamma_beta_trainable():
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(name="bn")])
    params = to_ir(model)[0].graph.parameters
    assert {n: s.trainable for n, s in params.items()} == {
        "bn/gamma": True, "bn/beta": True, "bn/moving_mean": False, "bn/moving_variance": False
    }


def test_shared_layer_declares_its_parameters_once():
    # A second layer auto-named like a shared layer's second call must not clash with it.
    a, b = keras.Input((3,), name="a"), keras.Input((3,), name="b")
    shared = keras.layers.Dense(3, name="shared")
    total = keras.layers.Add(name="sum")([shared(a), shared(b)])
    model = keras.Model([a, b], keras.layers.Dense(2, name="shared_1")(total))
    program, weights = to_ir(model)
    dense_nodes = [n for n in program.graph.nodes if n.op.kind == "dense"]
    assert [n.name for n in dense_nodes] == ["shared", "shared/call1", "shared_1"]
    assert dense_nodes[0].params == dense_nodes[1].params == {"kernel": "shared/kernel", "bias": "shared/bias"}
    assert set(weights) == {"shared/kernel", "shared/bias", "shared_1/kernel", "shared_1/bias"}
    assert program.graph.node("sum").inputs == ("shared", "shared/call1")
    assert list(program.graph.inputs) == ["a", "b"] and list(program.graph.outputs) == ["shared_1"]


def test_calls_of_a_shared_layer_outside_the_model_are_not_counted():
    shared = keras.layers.Dense(3, name="shared")
    x = keras.Input((3,))
    keras.Model(x, shared(x))  # the layer's first call belongs to another model
    a, b = keras.Input((3,), name="a"), keras.Input((3,), name="b")
    model = keras.Model([a, b], keras.layers.Add(name="sum")([shared(a), shared(b)]))
    program, weights = to_ir(model)
    assert [(n.name, n.inputs) for n in program.graph.nodes] == [
        ("shared", ("a",)), ("shared/call1", ("b",)), ("sum", ("shared", "shared/call1"))
    ]
    assert set(weights) == {"shared/kernel", "shared/bias"}


def test_dict_outputs_follow_the_model_output_order():
    x = keras.Input((3,), name="x")
    model = keras.Model(x, {"p": keras.layers.Dense(2, name="p")(x), "q": keras.layers.ReLU(name="q")(x)})
    program, _ = to_ir(model)
    assert set(program.graph.outputs) == {"p", "q"}
    assert program.graph.outputs["p"].shape == (None, 2) and program.graph.outputs["q"].shape == (None, 3)


def test_to_ir_options_and_default_placement():
    model = keras.Sequential([keras.Input((2,), name="x"), keras.layers.Dense(1, name="y")], name="tiny")
    program, _ = to_ir(model)
    assert program.name == "tiny" and program.privacy == PrivacyMode.NONE
    assert program.placement == Placement.default(["x"], ["y"])
    placement = Placement.default(["x"], ["y"], data_owner="alice")
    numerics = Numerics(frac_bits=12)
    program, _ = to_ir(model, name="other", placement=placement, numerics=numerics, privacy="encrypted_serving")
    assert (program.name, program.placement, program.numerics) == ("other", placement, numerics)
    assert program.privacy == PrivacyMode.ENCRYPTED_SERVING


def test_sequential_built_without_input_layer():
    model = keras.Sequential([keras.layers.Dense(2, name="d")])
    model.build((None, 4))
    program, _ = to_ir(model)
    (spec,) = program.graph.inputs.values()
    assert spec.shape == (None, 4) and program.graph.node("d").op.units == 2


# -- refusals --------------------------------------------------------------------------------------

def _seq(input_shape, *layers):
    return keras.Sequential([keras.Input(input_shape), *layers])


def _nested_functional():
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.Dense(2)(x), name="inner")


def test_nested_sequential_is_inlined():
    inner = keras.Sequential([keras.layers.Dense(3, name="a"), keras.layers.LayerNormalization(name="ln")],
                             name="block")
    model = _seq((4,), inner, keras.layers.Dense(2, name="out"))
    program, weights = to_ir(model)
    assert [(n.name, n.op.kind) for n in program.graph.nodes] == [
        ("block/a", "dense"), ("block/ln", "layer_norm"), ("out", "dense")]
    assert set(weights) == {"a/kernel", "a/bias", "ln/gamma", "ln/beta", "out/kernel", "out/bias"}
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    (got,) = run_reference(program, weights, {next(iter(program.graph.inputs)): x}).values()
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)


def _user_relu():
    def relu(x):  # a user's function that shares a Keras activation's name, not Keras' ReLU
        return 2.0 * x

    return relu


REFUSALS = {
    "conv3d": (  # (LSTM, the earlier example here, is supported since opset v2's sequence models)
        lambda: _seq((4, 4, 4, 1), keras.layers.Conv3D(2, 2, name="conv3d")),
        "Conv3D layer 'conv3d' is not supported; privacy-bridge supports the Keras layers ['Activation', 'Add', ",
    ),
    "upsampling_bilinear": (
        lambda: _seq((4, 4, 2), keras.layers.UpSampling2D(2, interpolation="bilinear", name="up")),
        "UpSampling2D layer 'up' has interpolation='bilinear'; privacy-bridge supports interpolation='nearest' only",
    ),
    "conv_channels_first": (
        lambda: _seq((2, 8, 8), keras.layers.Conv2D(2, 3, data_format="channels_first", name="conv")),
        "Conv2D layer 'conv' has data_format='channels_first'; privacy-bridge supports data_format='channels_last'",
    ),
    "normalization_invert": (
        lambda: _seq((3,), keras.layers.Normalization(mean=0.0, variance=1.0, invert=True, name="norm")),
        "Normalization layer 'norm' has invert=True; privacy-bridge supports invert=False only",
    ),
    "dense_mish": (
        lambda: _seq((4,), keras.layers.Dense(2, activation="mish", name="d")),
        "Dense layer 'd' has activation='mish'; privacy-bridge supports activation in ['linear', 'relu', ",
    ),
    "dense_user_function_named_relu": (
        lambda: _seq((4,), keras.layers.Dense(2, activation=_user_relu(), name="d")),
        "Dense layer 'd' has activation='function'; privacy-bridge supports activation in ['linear', 'relu', ",
    ),
    "activation_log_softmax": (
        lambda: _seq((4,), keras.layers.Activation("log_softmax", name="act")),
        "Activation layer 'act' has activation='log_softmax'",
    ),
    "conv2d_transpose_output_padding": (
        lambda: _seq((4, 4, 2), keras.layers.Conv2DTranspose(2, 3, strides=2, output_padding=1, name="ct")),
        "Conv2DTranspose layer 'ct' has output_padding=(1, 1); privacy-bridge supports output_padding=None only",
    ),
    "layer_norm_rms_scaling": (
        lambda: _seq((4, 3), keras.layers.LayerNormalization(rms_scaling=True, name="ln")),
        "LayerNormalization layer 'ln' has rms_scaling=True; privacy-bridge supports rms_scaling=False",
    ),
    "softmax_batch_axis": (
        lambda: _seq((4, 2), keras.layers.Softmax(axis=0, name="s")),
        "Softmax layer 's' has axis=0 (the batch axis); privacy-bridge supports an axis other than the batch axis",
    ),
    "global_pool_channels_first": (
        lambda: _seq((2, 4, 4), keras.layers.GlobalAveragePooling2D(data_format="channels_first", name="g")),
        "GlobalAveragePooling2D layer 'g' has data_format='channels_first'",
    ),
    "pool_channels_first": (
        lambda: _seq((2, 4, 4), keras.layers.MaxPooling2D(2, data_format="channels_first", name="p")),
        "MaxPooling2D layer 'p' has data_format='channels_first'; privacy-bridge supports data_format='channels_last'",
    ),
    "lambda": (
        lambda: _seq((4,), keras.layers.Lambda(lambda x: x * 2.0, name="double")),
        "Lambda layer 'double' is not supported; privacy-bridge supports no Lambda layers: its Python function "
        "has no inspectable graph; replace it "
        "with the Keras layers or keras.ops calls it computes",
    ),
    "nested_model": (
        lambda: _seq((4,), _nested_functional()),
        "Functional layer 'inner' is not supported",
    ),
    "nested_sequential_name_clash": (
        lambda: _seq((4,), keras.layers.Dense(4, name="d"), keras.Sequential([keras.layers.Dense(2, name="d")],
                                                                               name="inner")),
        "Sequential layer 'inner' has an inner layer named 'd' like another layer of the model",
    ),
    "variable_input_shape": (
        lambda: _seq((None, None, 3), keras.layers.GlobalAveragePooling2D()),
        "has shape (None, None, None, 3); privacy-bridge supports inputs of fixed feature shape",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_unsupported_layer_or_option_is_refused_by_name(case):
    build, message = REFUSALS[case]
    with pytest.raises(UnsupportedLayerError) as info:
        to_ir(build())
    assert message in str(info.value)


def test_refusal_carries_layer_class_and_option():
    with pytest.raises(UnsupportedLayerError) as info:
        to_ir(_seq((4, 4, 1), keras.layers.UpSampling2D(2, interpolation="bilinear", name="up")))
    assert (info.value.layer_name, info.value.layer_class, info.value.option) == (
        "up", "UpSampling2D", "interpolation='bilinear'"
    )


def test_ops_on_symbolic_tensors_are_read_as_operations():
    a, b = keras.Input((3,), name="a"), keras.Input((3,), name="b")
    program, _ = to_ir(keras.Model([a, b], keras.ops.add(a, b) * 3.0))
    assert [n.op.kind for n in program.graph.nodes] == ["add", "rescale"]
    assert program.graph.nodes[1].op.scale == 3.0


def test_unsupported_ops_on_symbolic_tensors_are_refused_with_what_to_do():
    a = keras.Input((3,))
    model = keras.Model(a, keras.ops.cumsum(a, axis=1))
    with pytest.raises(UnsupportedLayerError, match=r"Cumsum layer '.*' has no Keras layer behind it.*keras\.ops "
                                                    r"operations \[.*'Add'.*replace this call"):
        to_ir(model)


def test_dropout_forced_on_at_inference_is_refused():
    x = keras.Input((3,))
    model = keras.Model(x, keras.layers.Dropout(0.5, name="drop")(x, training=True))
    with pytest.raises(UnsupportedLayerError, match=r"Dropout layer 'drop' has training=True in its call"):
        to_ir(model)


def test_subclass_of_a_supported_layer_is_refused():
    class MyDense(keras.layers.Dense):
        pass

    with pytest.raises(UnsupportedLayerError, match=r"MyDense layer 'mine' is not supported"):
        to_ir(_seq((3,), MyDense(2, name="mine")))


def test_subclassed_and_unbuilt_models_are_refused():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match=r"expects a Sequential or functional keras.Model, received Net"):
        to_ir(Net())
    with pytest.raises(ValueError, match=r"has no input shape yet.*keras.Input"):
        to_ir(keras.Sequential([keras.layers.Dense(2)]))
