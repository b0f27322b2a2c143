"""Serving's range check and ReLUs with options (relu6, leaky, threshold).

The check reads |x| as 2 ReLU(x) - x where x feeds a ReLU, and treats a ReLU's output as
non-negative.  Both hold for max(x, 0) only: before the fix, a relu6 input above 12
(2 max_value - x < 0) or a leaky ReLU's negative output under an average pool made an
honest query fail with FixedPointOverflowError (MobileNetV2 is relu6 throughout).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bridge.mpc.range_check import FixedPointOverflowError, serving_check_plan
from frontends.keras import privatize, to_ir
from tests.conftest import SECURE_BACKENDS


def _relu6_model() -> Any:
    """Dense outputs of 20 (all-5 kernel, inputs of 1): relu6 saturates, 2 * 6 - 20 < 0."""
    import keras

    keras.utils.set_random_seed(1)
    x = keras.Input((4,))
    h = keras.layers.Dense(32, kernel_initializer=keras.initializers.Constant(5.0), name="pre")(x)
    h = keras.layers.ReLU(max_value=6.0, name="relu6")(h)
    return keras.Model(x, keras.layers.Dense(2, name="head")(h))


def _leaky_pool_model() -> Any:
    """Negative conv outputs, a leaky ReLU keeps them negative, an average pool of them."""
    import keras

    keras.utils.set_random_seed(1)
    x = keras.Input((4, 4, 1))
    h = keras.layers.Conv2D(2, 1, kernel_initializer=keras.initializers.Constant(-3.0), name="conv")(x)
    h = keras.layers.LeakyReLU(negative_slope=0.25, name="leaky")(h)
    h = keras.layers.AveragePooling2D(2, name="pool")(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(x, keras.layers.Dense(2, name="head")(h))


def _plain_model() -> Any:
    import keras

    keras.utils.set_random_seed(1)
    x = keras.Input((4,))
    h = keras.layers.Dense(8, name="pre")(x)
    h = keras.layers.ReLU(name="relu")(h)
    return keras.Model(x, keras.layers.Dense(2, name="head")(h))


def test_the_plan_uses_the_relu_identity_only_for_a_plain_relu():
    plans = {}
    for build in (_relu6_model, _leaky_pool_model, _plain_model):
        program, _ = to_ir(build())
        plans[build.__name__] = {e.layer: e for e in serving_check_plan(program).entries}
    assert plans["_plain_model"]["pre"].rectified is not None  # |x| from the ReLU, for free
    assert plans["_relu6_model"]["pre"].rectified is None  # checked two-sided instead
    assert not plans["_leaky_pool_model"]["pool"].nonnegative  # a leaky output can be < 0


@pytest.mark.parametrize("backend_name", SECURE_BACKENDS)
@pytest.mark.parametrize("build", [_relu6_model, _leaky_pool_model], ids=["relu6", "leaky_pool"])
def test_honest_queries_through_relu_options_are_answered(backend_name, build):
    model = build()
    x = np.ones((2, *model.input_shape[1:]), np.float32)
    expected = model.predict(x, verbose=0)
    private = privatize(model, privacy="encrypted_serving", backend=backend_name)
    got = private.predict(x, verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-2, rtol=0)
    assert private.last_reruns == 0


@pytest.mark.parametrize("backend_name", SECURE_BACKENDS)
def test_an_overflow_before_relu6_is_still_refused(backend_name):
    """The two-sided check still sees a value past the bound in front of relu6."""
    model = _relu6_model()
    x = np.ones((2, 4), np.float32)
    x[1] = 1e5  # pre-activations of 2e6 > 2^20
    with pytest.raises(FixedPointOverflowError, match="layer 'pre'"):
        privatize(model, privacy="encrypted_serving", backend=backend_name).predict(x, verbose=0)
