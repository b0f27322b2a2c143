"""Encrypted training of the opset-v2 ops: gradient cases the per-op conformance cases do not
cover (frozen batch norm, causal dilated Conv1D, separable convolutions), SGD steps of small
models built from the v2 ops on both backends against the float64 reference, and the refusal
of what stays serving-only when ``privatize`` is asked to train."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from bridge.ir import Graph, Loss, Node, ParamSpec, PrivacyMode, Program, SGDSpec, TensorSpec, TrainingSpec
from bridge.ir import ops as irops
from bridge.ir.validate import validate_graph
from bridge.mpc.training import SecureTrainingExecutable
from bridge.reference_train import (
    ReferenceTrainingExecutable,
    TrainingRefused,
    loss_head,
    reference_backward,
    reference_values,
)
from tests.training.helpers import secure_gradients, tf_gradients, training_placement
from tests.training.test_gradients import GRAD_TOLERANCE


class Chain:
    """A small Program built node by node in the IR; shapes inferred as it grows."""

    def __init__(self, inputs: dict[str, tuple[int, ...]], seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.inputs = {name: TensorSpec(shape=(None, *shape)) for name, shape in inputs.items()}
        self.nodes: list[Node] = []
        self.params: dict[str, ParamSpec] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = dict(inputs)

    def __call__(self, op: irops.Op, *inputs: str, trainable: bool = True, **params: np.ndarray) -> str:
        name = f"{op.kind}_{len(self.nodes)}"
        for role, value in params.items():
            self.params[f"{name}/{role}"] = ParamSpec(shape=value.shape, trainable=trainable)
            self.weights[f"{name}/{role}"] = value.astype(np.float32)
        self.nodes.append(Node(name=name, op=op, inputs=inputs, output=name,
                               params={role: f"{name}/{role}" for role in params}))
        self.shapes = validate_graph(self._graph({}))
        return name

    def w(self, *shape: int, scale: float = 0.4) -> np.ndarray:
        return self.rng.normal(size=shape) * scale

    def dense(self, value: str, units: int) -> str:
        fan_in = self.shapes[value][-1]
        return self(irops.Dense(units=units), value, kernel=self.w(fan_in, units, scale=1 / np.sqrt(fan_in)),
                    bias=self.w(units, scale=0.1))

    def _graph(self, outputs: dict[str, TensorSpec]) -> Graph:
        return Graph(inputs=self.inputs, outputs=outputs, parameters=self.params, nodes=tuple(self.nodes))

    def program(self, out: str, learning_rate: float = 0.1, loss: Loss = Loss.SPARSE_CATEGORICAL_CROSSENTROPY,
                ) -> Program:
        graph = self._graph({out: TensorSpec(shape=(None, *self.shapes[out]))})
        spec = TrainingSpec(loss=loss, optimizer=SGDSpec(learning_rate=learning_rate), batch_size=8)
        return Program(graph=graph, placement=training_placement(list(self.inputs), [out]),
                       privacy=PrivacyMode.ENCRYPTED_TRAINING, training=spec)


# -- gradient cases beyond the per-op conformance cases ----------------------------------------------

def _bn(c: Chain, channels: int) -> dict[str, np.ndarray]:
    return {"gamma": c.w(channels) + 1.0, "beta": c.w(channels), "moving_mean": c.w(channels),
            "moving_variance": np.abs(c.w(channels)) + 0.5}


def _frozen_bn(axis: int) -> tuple[Program, dict, dict]:
    c = Chain({"x": (4, 3)}, seed=1)
    channels = 4 if axis == 0 else 3
    out = c(irops.BatchNorm(epsilon=1e-3, axis=axis), "x", trainable=False, **_bn(c, channels))
    return c.program(out), c.weights, {"x": c.rng.normal(size=(3, 4, 3)) * 2}


def _causal_dilated_conv1d() -> tuple[Program, dict, dict]:
    c = Chain({"x": (9, 2)}, seed=2)
    padded = c(irops.Pad(pads=((4, 0), (0, 0))), "x")  # Keras' padding='causal'
    out = c(irops.Conv1D(filters=3, kernel_size=3, dilation_rate=2), padded, kernel=c.w(3, 2, 3), bias=c.w(3))
    return c.program(out), c.weights, {"x": c.rng.normal(size=(3, 9, 2)) * 2}


def _separable2d() -> tuple[Program, dict, dict]:
    c = Chain({"x": (5, 5, 2)}, seed=3)
    depth = c(irops.DepthwiseConv2D(kernel_size=3, depth_multiplier=2, padding="same", use_bias=False), "x",
              kernel=c.w(3, 3, 2, 2))
    out = c(irops.Conv2D(filters=3, kernel_size=1), depth, kernel=c.w(1, 1, 4, 3), bias=c.w(3))
    return c.program(out), c.weights, {"x": c.rng.normal(size=(2, 5, 5, 2)) * 2}


def _separable1d_strided() -> tuple[Program, dict, dict]:
    c = Chain({"x": (8, 3)}, seed=4)
    depth = c(irops.DepthwiseConv1D(kernel_size=3, strides=2, padding="same"), "x", kernel=c.w(3, 3, 1), bias=c.w(3))
    out = c(irops.Conv1D(filters=2, kernel_size=1, groups=1), depth, kernel=c.w(1, 3, 2), bias=c.w(2))
    return c.program(out), c.weights, {"x": c.rng.normal(size=(3, 8, 3)) * 2}


EXTRA = {
    "batch_norm_frozen": (lambda: _frozen_bn(-1), 2e-3),
    "batch_norm_frozen_axis0": (lambda: _frozen_bn(0), 2e-3),
    "conv1d_causal_dilated": (_causal_dilated_conv1d, 3e-3),
    "separable_conv2d": (_separable2d, 3e-3),
    "separable_conv1d_strided": (_separable1d_strided, 3e-3),
}


def _upstream(program: Program, values: dict) -> tuple[str, np.ndarray]:
    (out,) = program.graph.outputs
    return out, np.random.default_rng(11).normal(size=values[out].shape)


@pytest.mark.parametrize("name", list(EXTRA))
def test_extra_reference_gradients_match_tensorflow(name):
    program, weights, inputs = EXTRA[name][0]()
    values = reference_values(program, weights, inputs)
    out, dy = _upstream(program, values)
    param_grads, value_grads = reference_backward(program, weights, values, {out: dy})
    tf_params, tf_inputs = tf_gradients(program, weights, inputs, {out: dy})
    trainable = {n for n, s in program.graph.parameters.items() if s.trainable}
    assert set(param_grads) == trainable  # a frozen batch norm has no parameter gradients
    for n in trainable:
        np.testing.assert_allclose(param_grads[n], tf_params[n], atol=1e-9, err_msg=n)
    np.testing.assert_allclose(value_grads["x"], tf_inputs["x"], atol=1e-9)


@pytest.mark.parametrize("name", list(EXTRA))
def test_extra_secure_gradients_match_the_reference(secure_backend, name):
    build, tolerance = EXTRA[name]
    program, weights, inputs = build()
    values = reference_values(program, weights, inputs)
    out, dy = _upstream(program, values)
    want_params, want_values = reference_backward(program, weights, values, {out: dy})
    got_params, got_inputs = secure_gradients(secure_backend.make_kernels(), program, weights, inputs, dy)
    for n, g in want_params.items():
        np.testing.assert_allclose(got_params[n], g, atol=tolerance, rtol=0, err_msg=n)
    np.testing.assert_allclose(got_inputs["x"], want_values["x"], atol=tolerance, rtol=0)


def test_a_trainable_batch_norm_is_refused_and_a_frozen_one_trains():
    c = Chain({"x": (4,)})
    out = c(irops.BatchNorm(epsilon=1e-3), "x", **_bn(c, 4))
    with pytest.raises(TrainingRefused, match=rf"layer '{out}' is a trainable BatchNormalization layer.*Freeze it"):
        loss_head(c.program(out, loss=Loss.MSE))
    frozen = Chain({"x": (4,)})
    out = frozen(irops.BatchNorm(epsilon=1e-3), "x", trainable=False, **_bn(frozen, 4))
    assert loss_head(frozen.program(out, loss=Loss.MSE)).seed == out


# -- SGD steps of small v2 models: encrypted (both backends) against the float64 reference ------------

@dataclass(frozen=True)
class Model:
    program: Program
    weights: dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray


def _head(c: Chain, value: str, classes: int = 3) -> str:
    if len(c.shapes[value]) > 1:
        value = c(irops.Flatten(), value)
    return c(irops.Softmax(), c.dense(value, classes))


def sequence_model() -> Model:
    """Causal dilated Conv1D, PReLU, 1-D max/avg pools, nearest upsampling, cropping, a
    depthwise Conv1D, ELU, global max and average pools merged by Concatenate."""
    c = Chain({"x": (10, 2)}, seed=5)
    h = c(irops.Pad(pads=((2, 0), (0, 0))), "x")
    h = c(irops.Conv1D(filters=4, kernel_size=2, dilation_rate=2), h, kernel=c.w(2, 2, 4), bias=c.w(4, scale=0.1))
    h = c(irops.PRelu(), h, alpha=np.full((1, 4), 0.25))
    h = c(irops.MaxPool1D(pool_size=2, strides=2), h)
    h = c(irops.UpSample1D(size=2), h)
    h = c(irops.Crop(crops=((1, 1), (0, 0))), h)
    h = c(irops.DepthwiseConv1D(kernel_size=3, padding="same"), h, kernel=c.w(3, 4, 1), bias=c.w(4, scale=0.1))
    h = c(irops.Elu(alpha=0.8), h)
    h = c(irops.AvgPool1D(pool_size=2, strides=2), h)
    merged = c(irops.Concat(axis=-1), c(irops.GlobalAvgPool1D(), h), c(irops.GlobalMaxPool1D(), h))
    out = _head(c, merged)
    rng = np.random.default_rng(15)
    return Model(c.program(out), c.weights, rng.normal(size=(16, 10, 2)), rng.integers(0, 3, size=16))


def image_model() -> Model:
    """Grouped Conv2D, ReLU6, a dilated depthwise Conv2D and its pointwise half (separable),
    hard-swish, a frozen batch norm, a squeeze-and-excitation gate (keepdims pool, hard sigmoid,
    Multiply), LeakyReLU, Permute, UpSampling2D, zero padding, a strided Conv2DTranspose and a
    global max pool."""
    c = Chain({"x": (6, 6, 2)}, seed=6)
    h = c(irops.Conv2D(filters=4, kernel_size=3, padding="same", groups=2), "x", kernel=c.w(3, 3, 1, 4),
          bias=c.w(4, scale=0.1))
    h = c(irops.Relu(max_value=6.0), h)
    h = c(irops.DepthwiseConv2D(kernel_size=3, padding="same", dilation_rate=2, use_bias=False), h,
          kernel=c.w(3, 3, 4, 1))
    h = c(irops.Conv2D(filters=4, kernel_size=1), h, kernel=c.w(1, 1, 4, 4), bias=c.w(4, scale=0.1))
    h = c(irops.HardSilu(), h)
    h = c(irops.BatchNorm(epsilon=1e-3), h, trainable=False, **_bn(c, 4))
    gate = c(irops.HardSigmoid(), c(irops.GlobalAvgPool2D(keepdims=True), h))
    h = c(irops.Multiply(), gate, h)
    h = c(irops.Relu(negative_slope=0.2), h)
    h = c(irops.Transpose(perm=(1, 0, 2)), h)
    h = c(irops.UpSample2D(size=(2, 1)), h)
    h = c(irops.Pad(pads=((1, 0), (0, 1), (0, 0))), h)
    h = c(irops.Conv2DTranspose(filters=3, kernel_size=2, strides=2, padding="same"), h, kernel=c.w(2, 2, 3, 4),
          bias=c.w(3, scale=0.1))
    out = _head(c, c(irops.GlobalMaxPool2D(), h))
    rng = np.random.default_rng(16)
    return Model(c.program(out), c.weights, rng.normal(size=(16, 6, 6, 2)), rng.integers(0, 3, size=16))


def merge_model() -> Model:
    """Two dense branches (SiLU, GELU) merged by Maximum, Minimum, Subtract, Average and
    Multiply, then Softplus, Softsign, Rescaling, RepeatVector, Reshape and a softmax over
    a non-last axis."""
    c = Chain({"x": (6,)}, seed=7)
    a = c(irops.Silu(), c.dense("x", 8))
    b = c(irops.Gelu(), c.dense("x", 8))
    high, low = c(irops.Maximum(), a, b), c(irops.Minimum(), a, b)
    mean = c(irops.Average(), a, b, c(irops.Subtract(), high, low))
    h = c(irops.Softplus(), c(irops.Multiply(), mean, b))
    h = c(irops.Rescale(scale=0.5, offset=0.1), c(irops.Softsign(), h))
    h = c(irops.RepeatVector(n=2), h)
    h = c(irops.Softmax(axis=1), c(irops.Reshape(target_shape=(2, 4, 2)), h))
    out = _head(c, h)
    rng = np.random.default_rng(17)
    # the merges pass small gradients back to the first layers: a larger step makes them move
    return Model(c.program(out, learning_rate=0.5), c.weights, rng.normal(size=(16, 6)), rng.integers(0, 3, size=16))


def attention_model() -> Model:
    """Dense on a sequence, LayerNormalization, a secret x secret matmul (h h^T), LayerScale,
    keras.ops mean and sum, and the exponential."""
    c = Chain({"x": (4, 3)}, seed=8)
    h = c.dense("x", 4)
    h = c(irops.LayerNorm(epsilon=1e-3), h, gamma=1.0 + c.w(4, scale=0.2), beta=c.w(4, scale=0.2))
    scores = c(irops.MatMul(), h, c(irops.Transpose(perm=(1, 0)), h))
    scores = c(irops.LayerScale(), c(irops.Rescale(scale=0.25), scores), gamma=np.full(4, 0.5) + c.w(4, scale=0.1))
    pooled = c(irops.ReduceMean(axes=(0,)), scores)
    total = c(irops.ReduceSum(axes=(0,), keepdims=True), scores)
    h = c(irops.Concat(axis=-1), c(irops.Exp(), pooled), c(irops.Flatten(), total))
    out = _head(c, h)
    rng = np.random.default_rng(18)
    return Model(c.program(out), c.weights, rng.normal(size=(16, 4, 3)), rng.integers(0, 3, size=16))


def transformer_model() -> Model:
    """A transformer block: causal self-attention (MultiHeadAttention), a residual Add,
    LayerNormalization, a position-wise Dense with gelu, global average pooling over the steps."""
    c = Chain({"x": (4, 6)}, seed=10)
    mha = {f"{part}_kernel": c.w(6, 2, 3, scale=0.4) for part in ("query", "key", "value")}
    mha |= {f"{part}_bias": c.w(2, 3, scale=0.1) for part in ("query", "key", "value")}
    mha |= {"output_kernel": c.w(2, 3, 6, scale=0.4), "output_bias": c.w(6, scale=0.1)}
    attended = c(irops.MultiHeadAttention(num_heads=2, key_dim=3, value_dim=3, causal=True), "x", "x", **mha)
    h = c(irops.LayerNorm(epsilon=1e-3), c(irops.Add(), "x", attended), gamma=np.ones(6), beta=np.zeros(6))
    h = c(irops.Gelu(approximate=True), c.dense(h, 6))
    out = _head(c, c(irops.GlobalAvgPool1D(), h))
    rng = np.random.default_rng(19)
    return Model(c.program(out), c.weights, rng.normal(size=(16, 4, 6)), rng.integers(0, 3, size=16))


MODELS = {"sequence": sequence_model, "image": image_model, "merge": merge_model, "attention": attention_model,
          "transformer": transformer_model}
STEPS = 2
BATCH = 8


def step_tolerance(program: Program) -> float:
    """How far the encrypted weights may be from the reference's after STEPS SGD steps.

    Each step moves a weight by lr g; the secure gradient differs from the reference's by the
    fused loss gradient's error (5e-3 / n + 2e-4 per element, tests/training/test_gradients)
    plus, for a parameter behind several layers, the per-op gradient errors of every node
    on the way back (GRAD_TOLERANCE, each measured on unit-scale upstream gradients; here the
    upstream gradients are below 1/n), and the update is rounded to 2^-16.  So, per step:
    lr (loss error + sum of the nodes' gradient errors / n) + 2^-16, and the weights of the
    second step also see the first step's error (at most doubling it)."""
    lr = program.training.optimizer.learning_rate
    nodes = sum(GRAD_TOLERANCE.get(n.op.kind, 2e-3) for n in program.graph.nodes)
    per_step = lr * (5e-3 / BATCH + 2e-4 + nodes / BATCH) + 2**-16
    return STEPS * 2 * per_step


def _train(executable, model: Model) -> dict[str, np.ndarray]:
    executable.load_data({"alice": (model.x, model.y)})
    for step in range(STEPS):
        executable.train_batch(np.arange(step * BATCH, (step + 1) * BATCH))
    return executable.weights()


@pytest.mark.parametrize("name", list(MODELS))
def test_model_reference_gradient_matches_tensorflow(name):
    """The whole model's float64 backward against TensorFlow's autodiff of the same graph."""
    model = MODELS[name]()
    program, weights = model.program, model.weights
    values = reference_values(program, weights, {"x": model.x[:BATCH]})
    out, dy = _upstream(program, values)
    ref_params, ref_values = reference_backward(program, weights, values, {out: dy})
    tf_params, tf_inputs = tf_gradients(program, weights, {"x": model.x[:BATCH]}, {out: dy})
    for n, spec in program.graph.parameters.items():
        if spec.trainable:
            np.testing.assert_allclose(ref_params[n], tf_params[n], atol=1e-9, err_msg=n)
    np.testing.assert_allclose(ref_values["x"], tf_inputs["x"], atol=1e-9)


@pytest.mark.parametrize("name", list(MODELS))
def test_sgd_steps_follow_the_reference(secure_backend, name):
    model = MODELS[name]()
    program = model.program
    reference = _train(ReferenceTrainingExecutable(program, model.weights), model)
    secure = SecureTrainingExecutable(program, model.weights, secure_backend.make_kernels(), timeout_s=120)
    try:
        got = _train(secure, model)
    finally:
        secure.close()
    tolerance = step_tolerance(program)
    for n, spec in program.graph.parameters.items():
        change = np.abs(reference[n] - model.weights[n]).max()
        if not spec.trainable:  # a frozen batch norm: the owner's own values come back
            assert change == 0.0 and np.array_equal(got[n], model.weights[n]), n
            continue
        np.testing.assert_allclose(got[n], reference[n], atol=tolerance, rtol=0, err_msg=n)
        if n.endswith("key_bias"):  # zero gradient: the softmax over keys ignores a shift common to all keys
            assert change < 1e-12
            continue
        # and every tensor moved, and followed the reference's step closely (a wrong rule for any
        # op behind it would move it elsewhere): within a tenth of the move, plus the rounding
        assert change > 2**-12, f"{n} did not move"
        assert np.abs(got[n] - reference[n]).max() <= 0.1 * change + 2**-14, n


# -- what stays serving-only is refused when privatize is asked to train ----------------------------

def _keras_model(layer):
    import keras

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), layer, keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    return model


def test_privatize_refuses_a_serving_only_layer_by_name_before_anything_runs(monkeypatch):
    """Every kind left in SERVING_ONLY is refused by privatize(privacy='encrypted_training'),
    naming the layer and the reason; softsign is made serving-only here so that the check holds
    whichever kinds are left."""
    import keras

    from privacy_bridge import privatize

    monkeypatch.setitem(irops.SERVING_ONLY, "softsign", "a reason given for this test; encrypted serving only")
    layer = keras.layers.Activation("softsign", name="squash")
    with pytest.raises(TrainingRefused, match=r"layer 'squash' \(softsign\) cannot be trained encrypted: a reason given"):
        privatize(_keras_model(layer), privacy="encrypted_training", backend="torch-spdz")
    # the same model serves, and trains once the kind has its backward rules
    privatize(_keras_model(keras.layers.Activation("softsign")), privacy="encrypted_serving", backend="torch-spdz")
    monkeypatch.delitem(irops.SERVING_ONLY, "softsign")
    privatize(_keras_model(keras.layers.Activation("softsign")), privacy="encrypted_training", backend="torch-spdz")


def test_privatize_refuses_a_trainable_batch_norm_and_accepts_a_frozen_one():
    import keras

    from privacy_bridge import privatize

    with pytest.raises(TrainingRefused, match=r"layer 'bn' is a trainable BatchNormalization layer"):
        privatize(_keras_model(keras.layers.BatchNormalization(name="bn")), privacy="encrypted_training",
                  backend="torch-spdz")
    frozen = keras.layers.BatchNormalization(name="bn")
    frozen.trainable = False
    privatize(_keras_model(frozen), privacy="encrypted_training", backend="torch-spdz")


def test_every_serving_only_kind_has_a_reason_and_no_backward_rule():
    from bridge.mpc.backward import SECURE_BACKWARD
    from bridge.reference_train import REFERENCE_BACKWARD

    for kind, why in irops.SERVING_ONLY.items():
        assert "serving" in why and kind not in SECURE_BACKWARD and kind not in REFERENCE_BACKWARD
    assert irops.TRAINABLE_V2 <= set(SECURE_BACKWARD) & set(REFERENCE_BACKWARD)


# -- a keras.io-style text CNN on token ids, through privatize(...).fit -----------------------------

def _text_cnn():
    import keras

    keras.utils.set_random_seed(3)
    ids = keras.Input((10,), dtype="int32")
    h = keras.layers.Embedding(20, 6)(ids)
    h = keras.layers.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="relu")(h)
    h = keras.layers.GlobalMaxPooling1D()(h)
    model = keras.Model(ids, keras.layers.Dense(3, activation="softmax")(h))
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    return model


def test_text_cnn_on_token_ids_trains_as_the_reference(secure_backend):
    """Embedding (the data owner one-hot encodes its ids before sharing), causal dilated Conv1D,
    GlobalMaxPooling1D: two encrypted SGD steps through privatize(...).fit against the plaintext
    backend's (the float64 reference); the embedding rows of ids seen in the batches move, the
    others stay, but for their fixed-point encoding."""
    from bridge.registry import get_backend
    from frontends.keras.training import fit_encrypted
    from privacy_bridge import privatize

    rng = np.random.default_rng(9)
    x, y = rng.integers(0, 14, size=(16, 10)), rng.integers(0, 3, size=16)  # ids 14..19 never occur
    secure, reference = _text_cnn(), _text_cnn()
    start = [w.copy() for w in secure.get_weights()]
    privatize(secure, privacy="encrypted_training", backend=secure_backend.name, timeout_s=120).fit(
        x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    fit_encrypted(reference, get_backend("plaintext"), (x, y), batch_size=8, shuffle=False, verbose=0)
    for got, want, before in zip(secure.get_weights(), reference.get_weights(), start, strict=True):
        change = np.abs(want - before).max()
        assert change > 2**-12
        assert np.abs(got - want).max() <= 0.1 * change + 2**-13
    table_before, table_after = start[0], secure.get_weights()[0]
    np.testing.assert_allclose(table_after[14:], table_before[14:], atol=2**-16, rtol=0)  # encoding only
    assert np.abs(table_after[:14] - table_before[:14]).max() > 2**-12


def test_overflow_check_reads_magnitudes_from_plain_relus_only(secure_backend):
    """A dense output of -1500 feeding LeakyReLU(0.4): |x| = 2 relu(x) - x holds for a plain ReLU
    only (here it would read 2 (-600) + 1500 = 300, under the bound 1024); the two-sided check
    flags the layer, and training stops before the step."""
    from bridge.mpc.training import TrainingOverflowError

    c = Chain({"x": (2,)})
    h = c(irops.Dense(units=2), "x", kernel=np.array([[1000.0, 0.0], [0.0, 1.0]]), bias=np.zeros(2))
    out = _head(c, c(irops.Relu(negative_slope=0.4), h))
    program = c.program(out)
    secure = SecureTrainingExecutable(program, c.weights, secure_backend.make_kernels(), timeout_s=60)
    try:
        secure.load_data({"alice": (np.array([[-1.5, 0.1], [0.2, 0.3]]), np.array([0, 1]))})
        with pytest.raises(TrainingOverflowError, match=f"fixed-point overflow in layer '{h}'"):
            secure.train_batch(np.arange(2))
    finally:
        secure.close()
