"""The float64 reference: hand-computed cases per op, input checks, and properties on random graphs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from bridge.im2col import im2col_plan
from bridge.ir import Graph, Node, ParamSpec, Placement, Program, TensorSpec, validate_graph, validate_program
from bridge.ir import ops as irops
from bridge.reference import REFERENCE_FORWARD, InputValidationError, run_reference, run_reference_all
from tests.ir.strategies import programs


def one_op(op, inputs: list[np.ndarray], params: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Run a single-node Program through ``run_reference`` (so validation runs too)."""
    params = params or {}
    names = [f"x{i}" for i in range(len(inputs))]
    node = Node(name="op", op=op, inputs=tuple(names), output="y", params={r: f"op/{r}" for r in params})
    probe = Graph(
        inputs={n: TensorSpec(shape=(None, *x.shape[1:])) for n, x in zip(names, inputs)},
        outputs={},
        parameters={f"op/{r}": ParamSpec(shape=v.shape) for r, v in params.items()},
        nodes=(node,),
    )
    out_shape = validate_graph(probe)["y"]
    graph = probe.model_copy(update={"outputs": {"y": TensorSpec(shape=(None, *out_shape))}})
    program = Program(graph=graph, placement=Placement.default(names, ["y"]))
    weights = {f"op/{r}": v for r, v in params.items()}
    return run_reference(program, weights, dict(zip(names, inputs)))["y"]


def image(values, h: int, w: int) -> np.ndarray:
    """A single-channel (1, h, w, 1) image."""
    return np.asarray(values, dtype=np.float64).reshape(1, h, w, 1)


NINE = image(range(1, 10), 3, 3)  # [[1 2 3] [4 5 6] [7 8 9]]


def test_every_op_kind_has_a_rule():
    assert set(REFERENCE_FORWARD) == set(irops.OP_KINDS)


def test_dense():
    kernel = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])
    y = one_op(irops.Dense(units=3), [np.array([[1.0, 2.0], [0.0, -1.0]])], {"kernel": kernel, "bias": np.array([0.5, 0.0, 0.0])})
    np.testing.assert_array_equal(y, [[1.5, 2.0, 0.0], [0.5, -1.0, 1.0]])
    y = one_op(irops.Dense(units=3, use_bias=False), [np.array([[1.0, 2.0]])], {"kernel": kernel})
    np.testing.assert_array_equal(y, [[1.0, 2.0, 0.0]])


def test_conv2d_valid_sums_each_window_plus_bias():
    y = one_op(irops.Conv2D(filters=1, kernel_size=2), [NINE], {"kernel": np.ones((2, 2, 1, 1)), "bias": np.array([1.0])})
    np.testing.assert_array_equal(y[0, :, :, 0], [[13, 17], [25, 29]])


def test_conv2d_same_pads_the_extra_cell_after():
    # Even kernel, stride 1: total padding 1 per axis goes bottom/right (Keras/TensorFlow).
    op = irops.Conv2D(filters=1, kernel_size=2, padding="same", use_bias=False)
    y = one_op(op, [NINE], {"kernel": np.ones((2, 2, 1, 1))})
    np.testing.assert_array_equal(y[0, :, :, 0], [[12, 16, 9], [24, 28, 15], [15, 17, 9]])


def test_conv2d_same_strided_with_asymmetric_kernel():
    # 3x3 input, 1x3 kernel [1, 10, 100], stride 2: columns pad (1, 1), rows pad (0, 0).
    op = irops.Conv2D(filters=1, kernel_size=(1, 3), strides=2, padding="same", use_bias=False)
    kernel = np.array([1.0, 10.0, 100.0]).reshape(1, 3, 1, 1)
    y = one_op(op, [NINE], {"kernel": kernel})
    # (0,0): pad,1,2 -> 10*1 + 100*2; (0,1): 2,3,pad -> 2 + 30; (1,0): pad,7,8 -> 70 + 800.
    np.testing.assert_array_equal(y[0, :, :, 0], [[210, 32], [870, 98]])


def test_conv2d_kernel_layout_is_keras_hwio():
    # Two input channels, two filters: filter f reads channel c with weight kernel[0, 0, c, f].
    x = np.array([[[[1.0, 10.0]]]])  # (1, 1, 1, 2)
    kernel = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2): [c][f]
    y = one_op(irops.Conv2D(filters=2, kernel_size=1, use_bias=False), [x], {"kernel": kernel})
    np.testing.assert_array_equal(y.reshape(-1), [1 * 1 + 10 * 3, 1 * 2 + 10 * 4])


def naive_conv(x, kernel, strides, pads):
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    kh, kw, _, f = kernel.shape
    oh = (xp.shape[1] - kh) // strides[0] + 1
    ow = (xp.shape[2] - kw) // strides[1] + 1
    out = np.zeros((x.shape[0], oh, ow, f))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * strides[0]: i * strides[0] + kh, j * strides[1]: j * strides[1] + kw, :]
            out[:, i, j, :] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return out


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides", [(1, 1), (2, 1), (2, 3)])
def test_conv2d_matches_a_direct_loop(padding, strides):
    rng = np.random.default_rng(7)
    x, kernel, bias = rng.normal(size=(2, 7, 6, 3)), rng.normal(size=(3, 2, 3, 4)), rng.normal(size=4)
    op = irops.Conv2D(filters=4, kernel_size=(3, 2), strides=strides, padding=padding)
    pads = im2col_plan(7, 6, 3, 3, 2, strides, padding).pads
    expected = naive_conv(x, kernel, strides, pads) + bias
    np.testing.assert_allclose(one_op(op, [x], {"kernel": kernel, "bias": bias}), expected, rtol=0, atol=1e-12)


def test_avg_pool_same_divides_by_real_cells_only():
    y = one_op(irops.AvgPool2D(pool_size=2, strides=1, padding="same"), [NINE])
    np.testing.assert_array_equal(y[0, :, :, 0], [[3, 4, 4.5], [6, 7, 7.5], [7.5, 8.5, 9]])


def test_avg_pool_same_counts_on_a_symmetric_border():
    # 5x5 ones, 3x3 window, stride 2: pads (1, 1); sums are the real-cell counts 4/6/9,
    # and every mean is exactly 1.
    plan = im2col_plan(5, 5, 1, 3, 3, (2, 2), "same")
    assert plan.valid_counts.tolist() == [4, 6, 4, 6, 9, 6, 4, 6, 4]
    y = one_op(irops.AvgPool2D(pool_size=3, strides=2, padding="same"), [np.ones((1, 5, 5, 1))])
    np.testing.assert_array_equal(y, np.ones((1, 3, 3, 1)))


def test_avg_pool_valid_and_per_channel():
    x = np.stack([NINE[..., 0], -NINE[..., 0]], axis=-1)  # (1, 3, 3, 2)
    y = one_op(irops.AvgPool2D(pool_size=2, strides=1), [x])
    np.testing.assert_array_equal(y[0, :, :, 0], [[3, 4], [6, 7]])
    np.testing.assert_array_equal(y[0, :, :, 1], [[-3, -4], [-6, -7]])


def test_max_pool_valid_strided():
    x = image(range(16), 4, 4)
    y = one_op(irops.MaxPool2D(pool_size=2, strides=2), [x])
    np.testing.assert_array_equal(y[0, :, :, 0], [[5, 7], [13, 15]])


def test_max_pool_same_never_picks_padding():
    # All values negative: a zero-padded max would return 0 at the border.
    y = one_op(irops.MaxPool2D(pool_size=2, strides=1, padding="same"), [-NINE])
    np.testing.assert_array_equal(y[0, :, :, 0], [[-1, -2, -3], [-4, -5, -6], [-7, -8, -9]])


def test_global_avg_pool():
    x = np.stack([NINE[..., 0], 2 * NINE[..., 0]], axis=-1)
    np.testing.assert_array_equal(one_op(irops.GlobalAvgPool2D(), [x]), [[5.0, 10.0]])


def test_flatten_and_reshape_are_row_major_nhwc():
    x = np.arange(16, dtype=np.float64).reshape(2, 2, 2, 2)
    np.testing.assert_array_equal(one_op(irops.Flatten(), [x]), np.arange(16).reshape(2, 8))
    y = one_op(irops.Reshape(target_shape=(2, -1)), [np.arange(12, dtype=np.float64).reshape(2, 6)])
    np.testing.assert_array_equal(y, [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]])


def test_add_is_n_ary():
    a, b, c = np.array([[1.0, 2.0]]), np.array([[10.0, 20.0]]), np.array([[100.0, 200.0]])
    np.testing.assert_array_equal(one_op(irops.Add(), [a, b, c]), [[111.0, 222.0]])
    np.testing.assert_array_equal(a, [[1.0, 2.0]])  # inputs untouched


def test_elementwise_activations():
    x = np.array([[-1000.0, -1.0, 0.0, 2.0, 1000.0]])
    np.testing.assert_array_equal(one_op(irops.Relu(), [x]), [[0, 0, 0, 2, 1000]])
    with np.errstate(over="raise", invalid="raise"):  # no overflow at +-1000
        s = one_op(irops.Sigmoid(), [x])
    np.testing.assert_allclose(s, [[0.0, 1 / (1 + np.e), 0.5, 1 / (1 + np.exp(-2.0)), 1.0]], rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(one_op(irops.Tanh(), [x]), [[-1, np.tanh(-1), 0, np.tanh(2), 1]], rtol=1e-15)
    np.testing.assert_array_equal(one_op(irops.Identity(), [x]), x)


def test_softmax_last_axis_and_stable():
    x = np.array([[1.0, 2.0, 3.0], [1000.0, 1001.0, 1002.0]])
    e = np.exp([0.0, 1.0, 2.0])
    with np.errstate(over="raise", invalid="raise"):
        y = one_op(irops.Softmax(), [x])
    np.testing.assert_allclose(y, [e / e.sum(), e / e.sum()], rtol=1e-14)
    z = one_op(irops.Softmax(), [np.arange(12, dtype=np.float64).reshape(2, 2, 3)])
    np.testing.assert_allclose(z.sum(axis=-1), np.ones((2, 2)), rtol=1e-14)
    np.testing.assert_allclose(z[0, 0], e / e.sum(), rtol=1e-14)


def test_batch_norm_inference_form():
    x = np.array([[1.0, 2.0], [3.0, -2.0]])
    params = {
        "gamma": np.array([2.0, 1.0]),
        "beta": np.array([0.5, -1.0]),
        "moving_mean": np.array([1.0, 0.0]),
        "moving_variance": np.array([3.0, 0.0]),
    }
    y = one_op(irops.BatchNorm(epsilon=1.0), [x], params)
    # channel 0: 2 * (x - 1) / 2 + 0.5; channel 1: (x - 0) / 1 - 1
    np.testing.assert_allclose(y, [[0.5, 1.0], [2.5, -3.0]], rtol=1e-15)
    img = np.ones((1, 2, 2, 2)) * np.array([1.0, 2.0])
    np.testing.assert_allclose(one_op(irops.BatchNorm(epsilon=1.0), [img], params), np.ones((1, 2, 2, 2)) * [0.5, 1.0])


# -- a two-node program: every value, and input checks ---------------------------------------------

def mlp() -> tuple[Program, dict[str, np.ndarray]]:
    from tests.ir.test_validation import tiny_program

    return tiny_program()


def test_run_reference_all_returns_every_value():
    program, weights = mlp()
    x = np.array([[1.0, -1.0, 0.5, 2.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    values = run_reference_all(program, weights, {"x": x})
    assert set(values) == {"x", "h", "y"}
    h = x.astype(np.float64) @ weights["fc/kernel"].astype(np.float64) + 1.0
    np.testing.assert_allclose(values["h"], h, rtol=1e-15)
    np.testing.assert_array_equal(values["y"], np.maximum(h, 0))
    assert all(v.dtype == np.float64 for v in values.values())
    out = run_reference(program, weights, {"x": x})
    assert list(out) == ["y"] and np.array_equal(out["y"], values["y"])


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, r"missing input\(s\) \['x'\]; the program takes inputs \['x'\]"),
        ({"x": np.zeros((2, 4)), "z": np.zeros((2, 4))}, r"unexpected input\(s\) \['z'\]"),
        ({"x": np.zeros((2, 5))}, r"input 'x': expected shape \(batch, 4\), received \(2, 5\)"),
        ({"x": np.zeros(4)}, r"input 'x': expected shape \(batch, 4\), received \(4,\)"),
        ({"x": np.zeros((2, 1, 4))}, r"input 'x': expected shape \(batch, 4\), received \(2, 1, 4\)"),
        ({"x": np.array([["a"] * 4])}, r"input 'x' must hold real numbers, received an array of dtype <U1"),
    ],
)
def test_input_errors_name_the_input(inputs, message):
    program, weights = mlp()
    with pytest.raises(InputValidationError, match=message):
        run_reference(program, weights, inputs)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused_with_its_position(bad):
    program, weights = mlp()
    x = np.zeros((3, 4))
    x[1, 2] = bad
    with pytest.raises(InputValidationError, match=r"input 'x' contains NaN or inf \(first at index \(1, 2\)\)"):
        run_reference(program, weights, {"x": x})


def test_inputs_must_share_one_batch_size():
    a, b = np.ones((2, 3)), np.ones((3, 3))
    with pytest.raises(InputValidationError, match=r"inputs must share one batch size: 'x0' has 2 rows, 'x1' has 3"):
        one_op(irops.Add(), [a, b])


def test_program_and_weights_are_validated_first():
    from bridge.ir import IRValidationError

    program, weights = mlp()
    with pytest.raises(IRValidationError, match=r"weights are missing for parameters \['fc/bias'\]"):
        run_reference(program, {"fc/kernel": weights["fc/kernel"]}, {"x": np.zeros((1, 4))})


# -- properties on random graphs -------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(programs())
def test_random_graphs_compute_the_shapes_validation_infers_row_by_row(drawn):
    program, weights = drawn
    shapes = validate_program(program)
    rng = np.random.default_rng(0)
    inputs = {n: rng.normal(size=(3, *s.feature_shape)) for n, s in program.graph.inputs.items()}
    values = run_reference_all(program, weights, inputs)
    assert set(values) == set(shapes)
    for name, shape in shapes.items():
        assert values[name].shape == (3, *shape), name
        assert np.all(np.isfinite(values[name])), name
    # Rows never mix: the batch is three independent runs.
    for row in range(3):
        single = run_reference(program, weights, {n: x[row: row + 1] for n, x in inputs.items()})
        for name, value in single.items():
            np.testing.assert_allclose(value[0], values[name][row], rtol=1e-12, atol=1e-12)
