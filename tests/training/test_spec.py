"""compile() -> TrainingSpec: what encrypted training honours, and clear refusals of the rest."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from bridge.ir import Loss, Role
from bridge.reference_train import TrainingRefused
from bridge.registry import get_backend
from frontends.keras.importer import to_ir
from frontends.keras.training import compiled_metrics, fit_encrypted, training_placement, training_spec


def _model(activation="softmax", units=3):
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, activation=activation)])


@pytest.mark.parametrize(
    ("loss", "activation", "kind", "from_logits"),
    [
        ("mse", None, Loss.MSE, False),
        ("mean_squared_error", None, Loss.MSE, False),
        (keras.losses.MeanSquaredError(), None, Loss.MSE, False),
        ("binary_crossentropy", "sigmoid", Loss.BINARY_CROSSENTROPY, False),
        (keras.losses.BinaryCrossentropy(from_logits=True), None, Loss.BINARY_CROSSENTROPY, True),
        ("categorical_crossentropy", "softmax", Loss.CATEGORICAL_CROSSENTROPY, False),
        (keras.losses.CategoricalCrossentropy(from_logits=True), None, Loss.CATEGORICAL_CROSSENTROPY, True),
        ("sparse_categorical_crossentropy", "softmax", Loss.SPARSE_CATEGORICAL_CROSSENTROPY, False),
        (keras.losses.SparseCategoricalCrossentropy(from_logits=True), None, Loss.SPARSE_CATEGORICAL_CROSSENTROPY, True),
        (keras.losses.sparse_categorical_crossentropy, "softmax", Loss.SPARSE_CATEGORICAL_CROSSENTROPY, False),
    ],
)
def test_supported_losses(loss, activation, kind, from_logits):
    model = _model(activation)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.8), loss=loss)
    spec = training_spec(model, epochs=3, batch_size=16, shuffle=False)
    assert (spec.loss, spec.from_logits) == (kind, from_logits)
    assert (spec.optimizer.learning_rate, spec.optimizer.momentum) == (pytest.approx(0.05), pytest.approx(0.8))
    assert (spec.epochs, spec.batch_size, spec.shuffle) == (3, 16, False)


@pytest.mark.parametrize(
    ("optimizer", "message"),
    [
        (keras.optimizers.Adamax(), "optimizer Adamax is not supported.*SGD\\(learning_rate=<float>"),
        (keras.optimizers.Nadam(), "optimizer Nadam is not supported.*Adam\\(learning_rate=<float>"),
        (keras.optimizers.AdamW(), "optimizer AdamW is not supported"),
        (keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True), "SGD option nesterov=True is not supported"),
        (keras.optimizers.Adam(amsgrad=True), "Adam option amsgrad=True is not supported"),
        (keras.optimizers.Adam(weight_decay=1e-4), "Adam option weight_decay=0.0001 is not supported"),
        (keras.optimizers.Adam(clipvalue=0.5), "Adam option clipvalue=0.5 is not supported"),
        (keras.optimizers.RMSprop(clipnorm=1.0), "RMSprop option clipnorm=1.0 is not supported"),
        (keras.optimizers.RMSprop(use_ema=True), "RMSprop option use_ema=True is not supported"),
        (keras.optimizers.Adam(gradient_accumulation_steps=2), "gradient_accumulation_steps=2 is not supported"),
        (keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)),
         "Adam learning_rate must be a constant float, received a schedule"),
        (keras.optimizers.SGD(0.1, weight_decay=1e-4), "weight_decay=0.0001 is not supported"),
        (keras.optimizers.SGD(0.1, clipnorm=1.0), "clipnorm=1.0 is not supported"),
        (keras.optimizers.SGD(0.1, global_clipnorm=1.0), "global_clipnorm=1.0 is not supported"),
        (keras.optimizers.SGD(0.1, use_ema=True), "use_ema=True is not supported"),
        (keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)),
         "learning_rate must be a constant float, received a schedule"),
    ],
)
def test_unsupported_optimizers_are_refused_saying_what_is_supported(optimizer, message):
    model = _model()
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    with pytest.raises(TrainingRefused, match=message):
        training_spec(model)


class _MySGD(keras.optimizers.SGD):
    """A user subclass: its update may differ from plain SGD, so it must be refused."""


def test_adam_and_rmsprop_are_read_with_every_setting():
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(0.002, beta_1=0.8, beta_2=0.99, epsilon=1e-5),
                  loss="sparse_categorical_crossentropy")
    spec = training_spec(model).optimizer
    assert spec.kind == "adam"
    assert (spec.learning_rate, spec.beta_1, spec.beta_2, spec.epsilon) == (
        pytest.approx(0.002), pytest.approx(0.8), pytest.approx(0.99), pytest.approx(1e-5))
    model.compile(optimizer=keras.optimizers.RMSprop(0.01, rho=0.8, momentum=0.5, epsilon=1e-6, centered=True),
                  loss="sparse_categorical_crossentropy")
    spec = training_spec(model).optimizer
    assert spec.kind == "rmsprop" and spec.centered
    assert (spec.learning_rate, spec.rho, spec.momentum, spec.epsilon) == (
        pytest.approx(0.01), pytest.approx(0.8), pytest.approx(0.5), pytest.approx(1e-6))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert training_spec(model).optimizer.learning_rate == pytest.approx(0.001)


def test_a_subclass_of_sgd_is_refused_and_each_keras_backends_own_sgd_accepted():
    model = _model()
    model.compile(optimizer=_MySGD(0.1), loss="sparse_categorical_crossentropy")
    with pytest.raises(TrainingRefused, match="optimizer _MySGD is not supported"):
        training_spec(model)
    # keras.optimizers.SGD builds the active backend's subclass (torch_sgd.SGD under KERAS_BACKEND=torch)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    assert training_spec(model).optimizer.learning_rate == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        ("hinge", "loss 'hinge' is not supported by encrypted training; use 'mse'"),
        (keras.losses.CategoricalCrossentropy(label_smoothing=0.1), "label_smoothing=0.1"),
        (keras.losses.SparseCategoricalCrossentropy(ignore_class=0), "ignore_class=0"),
        (keras.losses.MeanSquaredError(reduction="sum"), "reduction='sum'"),
    ],
)
def test_unsupported_losses_are_refused(loss, message):
    model = _model()
    model.compile(optimizer="sgd", loss=loss)
    with pytest.raises(TrainingRefused, match=message):
        training_spec(model)


def test_uncompiled_model_is_refused():
    with pytest.raises(TrainingRefused, match="not compiled with a loss"):
        training_spec(_model())


def test_metrics_other_than_accuracy_are_refused():
    model = _model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    assert compiled_metrics(model, Loss.SPARSE_CATEGORICAL_CROSSENTROPY) == ("accuracy",)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["auc"])
    with pytest.raises(TrainingRefused, match="metric 'auc' is not computed under encryption"):
        compiled_metrics(model, Loss.SPARSE_CATEGORICAL_CROSSENTROPY)
    model.compile(optimizer="sgd", loss="mse", metrics=["accuracy"])
    with pytest.raises(TrainingRefused, match="needs a classification loss"):
        compiled_metrics(model, Loss.MSE)


def test_fit_arguments_keras_has_but_encrypted_training_lacks_are_refused():
    model = _model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    data = (np.zeros((4, 4)), np.zeros(4))
    with pytest.raises(TypeError, match=r"fit arguments \['initial_epoch', 'steps_per_epoch'\] are not supported"):
        fit_encrypted(model, get_backend("plaintext"), data, steps_per_epoch=2, initial_epoch=1)


def test_training_placement_has_every_role():
    program, _ = to_ir(_model())
    placement = training_placement(program, ["alice", "bob"], {"model_owner": "hospital", "compute": ("a", "b")})
    assert placement.param_owner == "hospital"
    assert placement.compute_parties == ("a", "b") and placement.dealer == "dealer"
    assert placement.with_role(Role.DATA_OWNER) == ("alice", "bob")
    assert set(placement.input_owners.values()) == {"alice"}
    with pytest.raises(ValueError, match="must be distinct"):
        training_placement(program, ["alice", "dealer"])
    with pytest.raises(ValueError, match=r"data owners \['carol'\] are not parties"):
        training_placement(program, ["carol"], placement)
