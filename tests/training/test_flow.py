"""The encrypted training flow on every secure backend: the same trajectory as plaintext
training, who learns what, the overflow check, keeping the model shared for serving."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.ir import Loss
from bridge.mpc.training import SecureTrainingExecutable, TrainingOverflowError
from bridge.reference_train import ReferenceTrainingExecutable, TrainingRefused, batch_schedule, loss_head
from tests.training.helpers import mlp_program


def _digits(n: int = 240):
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data[:n] / 16.0, d.target[:n]


def _split(x, y):
    half = len(x) // 2
    return {"alice": (x[:half], y[:half]), "bob": (x[half:], y[half:])}


def test_secure_training_follows_plaintext_training(secure_backend):
    x, y = _digits()
    program, weights = mlp_program([64, 16, 10], learning_rate=0.2, momentum=0.5)
    secure = secure_backend.prepare_training(program, weights, metrics=("accuracy",))
    plain = ReferenceTrainingExecutable(program, weights, metrics=("accuracy",))
    assert secure.load_data(_split(x, y)) == plain.load_data(_split(x, y)) == len(x)
    for epoch in range(2):
        for rows in batch_schedule(len(x), 48, epoch, seed=7):
            got, want = secure.train_batch(rows), plain.train_batch(rows)
            assert abs(got.loss - want.loss) < 2e-2
            assert abs(got.metrics["accuracy"] - want.metrics["accuracy"]) <= 1 / 48 + 1e-9
    trained, reference = secure.weights(), plain.weights()
    for name, w in reference.items():
        np.testing.assert_allclose(trained[name], w, atol=2e-2, err_msg=name)
        assert trained[name].dtype == np.float32
    assert not np.allclose(reference["dense_0/kernel"], weights["dense_0/kernel"], atol=1e-2)  # it did train


def test_only_aggregates_reach_the_model_owner_and_labels_stay_shared(secure_backend):
    x, y = _digits(64)
    program, weights = mlp_program([64, 8, 10])
    run = secure_backend.prepare_training(program, weights, metrics=("accuracy",))
    run.load_data(_split(x, y))
    stats = run.train_batch(np.arange(32)).stats
    for party in ("s0", "s1"):
        reveals = {label for label in stats.snapshot()[party] if label.startswith("reveal:")}
        assert reveals == {"reveal:overflow", "reveal:metrics"}
    assert stats.total_bytes("alice") == stats.total_bytes("bob") == 0  # data owners shared once, before
    # the compute parties hold shares of the one-hot labels, never the labels
    share = run.parties.contexts["s1"].kernels.to_numpy(run._data["s1"]["train"][1].share)
    onehot = np.round(np.eye(10)[y] * 2**16).astype(np.int64)
    assert np.mean(share == onehot) < 0.01


def test_exploding_activations_stop_training_naming_the_layer(secure_backend):
    x, y = _digits(64)
    program, weights = mlp_program([64, 8, 10])
    weights = dict(weights, **{"dense_0/kernel": weights["dense_0/kernel"] * 2000})
    from bridge.reference_train import reference_values

    values = reference_values(program, weights, {"x": x[:16]})
    assert np.abs(values["dense_0"]).max() > 2048 and np.abs(values["x"]).max() <= 1.0
    run = secure_backend.prepare_training(program, weights)
    run.load_data({"alice": (x, y)})
    with pytest.raises(TrainingOverflowError, match=r"in layer 'dense_0'.*exceeded 1024"):
        run.train_batch(np.arange(16))


def test_diverging_training_is_caught_before_it_returns_a_model(secure_backend):
    x, y = _digits(96)
    program, weights = mlp_program([64, 16, 10], learning_rate=60.0, momentum=0.9)
    run = secure_backend.prepare_training(program, weights)
    run.load_data({"alice": (x * 16, y)})
    with pytest.raises(TrainingOverflowError, match="dense_"):
        for epoch in range(6):
            for rows in batch_schedule(len(x), 16, epoch, seed=0):
                run.train_batch(rows)
        run.weights()


def test_trained_weights_beyond_the_bound_are_refused_by_name(secure_backend):
    program, weights = mlp_program([4, 3], loss=Loss.MSE)
    weights = dict(weights, **{"dense_0/kernel": np.full((4, 3), 5.0, np.float32)})
    run = secure_backend.prepare_training(program, weights, overflow_bound=4.0)
    with pytest.raises(TrainingOverflowError, match=r"\['dense_0/kernel'\]"):
        run.weights()


def test_overflow_check_cost_is_measured_and_optional(secure_backend):
    x, y = _digits(64)
    program, weights = mlp_program([64, 32, 10])
    sent = {}
    for check in (True, False):
        run = secure_backend.prepare_training(program, weights, check_overflow=check)
        run.load_data({"alice": (x, y)})
        stats = run.train_batch(np.arange(64)).stats
        sent[check] = stats.total_bytes("s0"), stats.total_rounds("s0")
        if not check:
            assert not any("overflow" in label for label in stats.snapshot()["s0"])
    extra_bytes, extra_rounds = sent[True][0] - sent[False][0], sent[True][1] - sent[False][1]
    # one comparison per element of dense_0 (it feeds a ReLU), two per logit; 26.25 bytes each at
    # compare_bits=64, plus bit conversions (1 bit each)
    comparisons = 64 * 32 + 2 * 64 * 10
    assert 26 * comparisons < extra_bytes < 27 * comparisons + 1000
    assert extra_rounds <= 13


def test_kept_shared_model_serves_what_was_trained(secure_backend):
    x, y = _digits(96)
    program, weights = mlp_program([64, 16, 10], learning_rate=0.2)
    run = secure_backend.prepare_training(program, weights)
    run.load_data(_split(x, y))
    for rows in batch_schedule(len(x), 32, 0, seed=1):
        run.train_batch(rows)
    serving = run.serving()
    predictions = serving.run({"x": x[:8]}).outputs[next(iter(program.graph.outputs))]
    trained = run.weights()
    plain = ReferenceTrainingExecutable(program, trained)
    from bridge.reference_train import reference_values

    expected = reference_values(program, trained, {"x": x[:8]})[next(iter(program.graph.outputs))]
    np.testing.assert_allclose(predictions, expected, atol=2e-2)
    assert plain.program.privacy.value == "encrypted_training" and serving.program.privacy.value == "encrypted_serving"


@pytest.mark.parametrize(("loss", "from_logits"), [(Loss.BINARY_CROSSENTROPY, False), (Loss.MSE, False),
                                                   (Loss.CATEGORICAL_CROSSENTROPY, True)])
def test_other_losses_train_like_the_reference(secure_backend, loss, from_logits):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 6))
    width = 1 if loss == Loss.BINARY_CROSSENTROPY else 3
    if loss == Loss.MSE:
        y = x[:, :3] @ rng.normal(size=(3, 3)) * 0.5
    elif loss == Loss.BINARY_CROSSENTROPY:
        y = (x[:, 0] + x[:, 1] > 0).astype(float)
    else:
        y = np.eye(3)[np.argmax(x[:, :3], axis=1)]
    program, weights = mlp_program([6, 8, width], loss=loss, from_logits=from_logits, hidden="tanh",
                                   learning_rate=0.1, momentum=0.5)
    metrics = () if loss == Loss.MSE else ("accuracy",)
    secure = secure_backend.prepare_training(program, weights, metrics=metrics)
    plain = ReferenceTrainingExecutable(program, weights, metrics=metrics)
    secure.load_data({"alice": (x, y)})
    plain.load_data({"alice": (x, y)})
    for rows in batch_schedule(64, 16, 0, seed=3):
        got, want = secure.train_batch(rows), plain.train_batch(rows)
        assert abs(got.loss - want.loss) < 3e-2
    for name, w in plain.weights().items():
        np.testing.assert_allclose(secure.weights()[name], w, atol=3e-2, err_msg=name)


def test_a_model_the_loss_cannot_attach_to_is_refused():
    program, _ = mlp_program([4, 3], loss=Loss.MSE)
    with_ce = program.model_copy(update={"training": program.training.model_copy(
        update={"loss": Loss.CATEGORICAL_CROSSENTROPY})})
    with pytest.raises(TrainingRefused, match="must end in a softmax activation; its last layer 'dense_0' is 'dense'"):
        loss_head(with_ce)
    with pytest.raises(TrainingRefused, match="no training spec"):
        loss_head(program.model_copy(update={"training": None}))


def test_batch_schedule_is_fixed_by_the_seed():
    a = batch_schedule(10, 4, epoch=0, seed=3)
    assert [len(b) for b in a] == [4, 4, 2]
    assert np.array_equal(np.sort(np.concatenate(a)), np.arange(10))
    assert all(np.array_equal(u, v) for u, v in zip(a, batch_schedule(10, 4, epoch=0, seed=3)))
    assert not all(np.array_equal(u, v) for u, v in zip(a, batch_schedule(10, 4, epoch=1, seed=3)))
    assert np.array_equal(np.concatenate(batch_schedule(10, 4, 0, 3, shuffle=False)), np.arange(10))


def test_secure_training_executable_type(secure_backend):
    program, weights = mlp_program([4, 3])
    assert isinstance(secure_backend.prepare_training(program, weights), SecureTrainingExecutable)


def test_a_learning_rate_fixed_point_cannot_hold_is_refused(secure_backend):
    program, weights = mlp_program([4, 3], learning_rate=1e-4)
    with pytest.raises(TrainingRefused, match="learning_rate=0.0001 is not representable in fixed point"):
        secure_backend.prepare_training(program, weights)
