"""Real architectures, unchanged: keras.applications families at small inputs (weights=None) and
keras.io-style example models, imported and run on the reference and on both secure backends.

The reference must equal ``model.predict`` within 1e-4; encrypted serving must equal it within
the zoo tolerance of ``test_zoo`` (whole models chain several approximations).  Whole
applications are long: they are ``slow``; the default run keeps one application on the
reference and one small example model encrypted on every backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from frontends.keras import privatize, to_ir
from tests.conformance import zoo_attention
from tests.conformance.test_zoo import ZOO_TOLERANCE
from tests.conftest import SECURE_BACKENDS

REFERENCE_TOLERANCE = 1e-4
#: a party of a whole application may compute for minutes between two messages on a loaded
#: 2-core host (ConvNeXtTiny's 768 x 3072 dense layers): the liveness timeout allows it
APPLICATION_TIMEOUT_S = 900.0


def _app(name: str, shape: tuple[int, int, int] = (32, 32, 3), **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        import keras

        keras.utils.set_random_seed(5)
        return getattr(keras.applications, name)(weights=None, input_shape=shape, classes=5, **kwargs)

    return build


def timeseries_fcn() -> Any:
    """keras.io 'Timeseries classification from scratch': Conv1D + BN + ReLU blocks, GAP, softmax."""
    import keras

    keras.utils.set_random_seed(5)
    x = keras.Input((16, 1))
    h = x
    for _ in range(2):
        h = keras.layers.Conv1D(4, 3, padding="same")(h)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(x, keras.layers.Dense(2, activation="softmax")(h))


def small_image_classifier() -> Any:
    """keras.io 'Image classification from scratch', shrunk: rescaling, separable convs, residuals."""
    import keras

    keras.utils.set_random_seed(5)
    x = keras.Input((12, 12, 3))
    h = keras.layers.Rescaling(1.0 / 255)(x)
    h = keras.layers.Conv2D(4, 3, strides=2, padding="same")(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    previous = h
    h = keras.layers.SeparableConv2D(8, 3, padding="same")(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.MaxPooling2D(3, strides=2, padding="same")(h)
    residual = keras.layers.Conv2D(8, 1, strides=2, padding="same")(previous)
    h = keras.layers.add([h, residual])
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dropout(0.25)(h)
    return keras.Model(x, keras.layers.Dense(1, activation="sigmoid")(h))


APPLICATIONS: dict[str, Callable[[], Any]] = {
    "MobileNetV3Small": _app("MobileNetV3Small", alpha=0.75),
    "MobileNet": _app("MobileNet", alpha=0.25),
    "MobileNetV2": _app("MobileNetV2", alpha=0.35),
    "ResNet50": _app("ResNet50"),
    "ResNet50V2": _app("ResNet50V2"),
    "EfficientNetB0": _app("EfficientNetB0"),
    "EfficientNetV2B0": _app("EfficientNetV2B0"),
    "DenseNet121": _app("DenseNet121"),
    "VGG16": _app("VGG16"),
    "Xception": _app("Xception", (71, 71, 3)),
    "InceptionV3": _app("InceptionV3", (75, 75, 3)),
    "NASNetMobile": _app("NASNetMobile"),
    "ConvNeXtTiny": zoo_attention.convnext_tiny,
}
EXAMPLES: dict[str, Callable[[], Any]] = {
    "timeseries_fcn": timeseries_fcn,
    "small_image_classifier": small_image_classifier,
    "transformer_text_classifier": zoo_attention.transformer_text_classifier,
    "causal_transformer": zoo_attention.causal_transformer,
    "regnet_x_stage": zoo_attention.regnet_x_stage,
}
#: the slices of the default run: the rest is marked slow
FAST_REFERENCE = {"timeseries_fcn", "small_image_classifier", "transformer_text_classifier", "causal_transformer"}
FAST_ENCRYPTED = {"timeseries_fcn"}  # the default run's encrypted attention model: test_transformer


def _params(names: list[str], fast: set[str]) -> list[Any]:
    return [pytest.param(n, marks=() if n in fast else pytest.mark.slow) for n in names]


def _input(model: Any, batch: int = 2) -> np.ndarray:
    shape = model.input_shape[1:]
    return np.random.default_rng(7).uniform(0.0, 1.0, (batch, *shape)).astype(np.float32)


def _randomize_statistics(model: Any) -> Any:
    """Batch-norm statistics away from (0, 1), so that the folded scale and shift matter."""
    import keras

    rng = np.random.default_rng(9)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            weights = layer.get_weights()
            if len(weights) == 4:  # gamma, beta, moving mean, moving variance
                shape = weights[0].shape
                layer.set_weights([rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.1, shape),
                                   rng.normal(0, 0.1, shape), rng.uniform(0.5, 1.5, shape)])
    return model


@pytest.mark.parametrize("name", _params([*APPLICATIONS, *EXAMPLES], FAST_REFERENCE))
def test_reference_matches_predict(name):
    from bridge.reference import run_reference

    model = _randomize_statistics({**APPLICATIONS, **EXAMPLES}[name]())
    program, weights = to_ir(model)
    x = _input(model)
    (got,) = run_reference(program, weights, {next(iter(program.graph.inputs)): x}).values()
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=REFERENCE_TOLERANCE, rtol=0)


@pytest.mark.parametrize("backend_name", SECURE_BACKENDS)
@pytest.mark.parametrize("name", _params(["timeseries_fcn", "small_image_classifier", "transformer_text_classifier",
                                          "causal_transformer", "regnet_x_stage", *APPLICATIONS], FAST_ENCRYPTED))
def test_encrypted_serving_matches_predict(backend_name, name):
    model = _randomize_statistics({**APPLICATIONS, **EXAMPLES}[name]())
    x = _input(model, batch=1 if name in APPLICATIONS else 3)
    expected = model.predict(x, verbose=0)
    got = privatize(model, privacy="encrypted_serving", backend=backend_name,
                    timeout_s=APPLICATION_TIMEOUT_S).predict(x, verbose=0)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=ZOO_TOLERANCE, rtol=0)
