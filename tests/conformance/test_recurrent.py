"""Embedding, SimpleRNN, LSTM, GRU, Bidirectional and TimeDistributed from Keras: imported
models equal ``model.predict`` on the reference (1e-4) and, encrypted, within the recurrent
tolerance (``cases_recurrent``) on both backends; token ids are checked and one-hot encoded at
the data owner (the servers receive one-hot shares only); what is not supported is refused by
name; encrypted training refuses these layers at ``privatize`` time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from bridge.ir.tokens import TokenInputError
from bridge.reference import run_reference
from frontends.keras import UnsupportedLayerError, privatize, to_ir
from tests.conformance.cases_recurrent import TOLERANCE as RECURRENT_TOLERANCE
from tests.conftest import SECURE_BACKENDS

REFERENCE_TOLERANCE = 1e-4
#: the parties that only wait (model owner, client) hear nothing during the whole unrolled forward pass,
#: which takes minutes on tf-pond on a loaded 2-core host: a liveness limit above that
LIVENESS_S = 600.0
STEPS, VOCAB = 6, 13


def _sequence_model(layer: Callable[[], Any], features: int = 3) -> Any:
    import keras

    keras.utils.set_random_seed(3)
    x = keras.Input((STEPS, features))
    return keras.Model(x, layer()(x))


def _layers() -> dict[str, Callable[[], Any]]:
    import keras

    L = keras.layers
    return {
        "simple_rnn": lambda: L.SimpleRNN(4),
        "simple_rnn_relu_seq": lambda: L.SimpleRNN(4, activation="relu", return_sequences=True),
        "simple_rnn_backwards_seq": lambda: L.SimpleRNN(4, go_backwards=True, return_sequences=True),
        "lstm": lambda: L.LSTM(4),
        "lstm_seq_backwards": lambda: L.LSTM(4, return_sequences=True, go_backwards=True),
        "lstm_hard_sigmoid_nobias": lambda: L.LSTM(3, recurrent_activation="hard_sigmoid", use_bias=False),
        "gru_reset_after": lambda: L.GRU(4, return_sequences=True),
        "gru_reset_before": lambda: L.GRU(4, reset_after=False),
        "gru_backwards_nobias": lambda: L.GRU(3, go_backwards=True, use_bias=False),
        "bidirectional_concat_seq": lambda: L.Bidirectional(L.LSTM(3, return_sequences=True)),
        "bidirectional_sum": lambda: L.Bidirectional(L.GRU(3), merge_mode="sum"),
        "bidirectional_ave_seq": lambda: L.Bidirectional(L.SimpleRNN(3, return_sequences=True), merge_mode="ave"),
        "bidirectional_mul_seq": lambda: L.Bidirectional(L.GRU(3, return_sequences=True, reset_after=False),
                                                        merge_mode="mul"),
        "time_distributed_dense": lambda: L.TimeDistributed(L.Dense(2, activation="tanh")),
        "time_distributed_dropout": lambda: L.TimeDistributed(L.Dropout(0.5)),
    }


LAYER_NAMES = list(_layers())


def _randomize_biases(model: Any) -> Any:
    """Keras initialises biases to zero (and LSTM's forget bias to one): make them matter."""
    rng = np.random.default_rng(11)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            layer.set_weights([w + rng.normal(0, 0.2, w.shape) if w.ndim <= 2 and "bias" in v.path else w
                               for w, v in zip(weights, layer.weights, strict=True)])
    return model


def _x(model: Any, batch: int = 3) -> np.ndarray:
    return np.random.default_rng(5).normal(size=(batch, *model.input_shape[1:])).astype(np.float32)


def _ids(batch: int = 3, steps: int = STEPS, vocab: int = VOCAB) -> np.ndarray:
    ids = np.random.default_rng(4).integers(0, vocab, size=(batch, steps)).astype(np.int32)
    ids[0, 0], ids[-1, -1] = 0, vocab - 1
    return ids


def _reference(model: Any, x: np.ndarray) -> np.ndarray:
    program, weights = to_ir(model)
    (out,) = run_reference(program, weights, {next(iter(program.graph.inputs)): x}).values()
    return out


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_reference_matches_predict(name):
    model = _randomize_biases(_sequence_model(_layers()[name]))
    x = _x(model)
    np.testing.assert_allclose(_reference(model, x), model.predict(x, verbose=0), atol=REFERENCE_TOLERANCE, rtol=0)


def embedding_classifier() -> Any:
    import keras

    keras.utils.set_random_seed(2)
    ids = keras.Input((STEPS,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, 4)(ids)
    h = keras.layers.Bidirectional(keras.layers.GRU(3))(h)
    return keras.Model(ids, keras.layers.Dense(2, activation="softmax")(h))


def test_embedding_reference_matches_predict():
    model = _randomize_biases(embedding_classifier())
    program, _ = to_ir(model)
    (spec,) = program.graph.inputs.values()
    assert spec.dtype == "int32" and spec.shape == (None, STEPS, VOCAB)
    ids = _ids()
    np.testing.assert_allclose(_reference(model, ids), model.predict(ids, verbose=0), atol=REFERENCE_TOLERANCE, rtol=0)


#: the encrypted slice of the default run (each layer kind once); the rest is slow
FAST_ENCRYPTED = {"lstm_seq_backwards", "gru_reset_before", "bidirectional_ave_seq", "time_distributed_dense"}


@pytest.mark.parametrize("backend_name", SECURE_BACKENDS)
@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST_ENCRYPTED else pytest.mark.slow)
                                  for n in LAYER_NAMES])
def test_encrypted_serving_matches_predict(backend_name, name):
    model = _randomize_biases(_sequence_model(_layers()[name]))
    x = _x(model)
    private = privatize(model, privacy="encrypted_serving", backend=backend_name, timeout_s=LIVENESS_S)
    got = private.predict(x, verbose=0)
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=RECURRENT_TOLERANCE["lstm"], rtol=0)


@pytest.mark.parametrize("backend_name", SECURE_BACKENDS)
def test_embedding_encrypted_serving_shares_one_hot_rows(backend_name):
    """The data owner shares one-hot rows: 8 bytes per (step, vocabulary) entry to each compute
    party, exactly, and never the ids; the answer matches predict."""
    model = _randomize_biases(embedding_classifier())
    ids = _ids()
    private = privatize(model, privacy="encrypted_serving", backend=backend_name, timeout_s=LIVENESS_S)
    got = private.predict(ids, verbose=0)
    np.testing.assert_allclose(got, model.predict(ids, verbose=0), atol=RECURRENT_TOLERANCE["gru"], rtol=0)
    stats = private.last_stats.snapshot()
    (name,) = to_ir(model)[0].graph.inputs
    sent = {party: labels[f"share:{name}"][0] for party, labels in stats.items() if f"share:{name}" in labels}
    assert sent == {"client": 2 * 8 * ids.size * VOCAB}  # one share to each compute party, counted at the sender


# -- token ids are checked where they are held ------------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    (np.array([[1, 2, 3, 4, 5, VOCAB]]), f"in \\[0, {VOCAB}\\).*received {VOCAB} at index \\(0, 5\\)"),
    (np.array([[1, 2, -1, 4, 5, 6]]), "received -1 at index \\(0, 2\\)"),
    (np.array([[1.0, 2.5, 3, 4, 5, 6]]), "integers; received 2.5 at index \\(0, 1\\)"),
    (np.zeros((1, STEPS, VOCAB)), "(expected shape|token ids of shape) \\(batch, 6\\)"),
])
@pytest.mark.parametrize("backend_name", ["plaintext", *SECURE_BACKENDS[:1]])
def test_bad_token_ids_are_refused_at_the_data_owner(backend_name, bad, message):
    model = embedding_classifier()
    private = privatize(model, privacy="none" if backend_name == "plaintext" else "encrypted_serving",
                        backend=backend_name)
    with pytest.raises((TokenInputError, ValueError), match=message):
        private.predict(bad, verbose=0)


def test_token_ids_one_hot():
    from bridge.ir import TensorSpec
    from bridge.ir.tokens import one_hot

    rows = one_hot("t", np.array([[0, 3], [2, 2]]), TensorSpec(shape=(None, 2, 4), dtype="int32"))
    np.testing.assert_array_equal(rows.argmax(-1), [[0, 3], [2, 2]])
    assert rows.sum() == 4 and rows.shape == (2, 2, 4)


# -- refusals ---------------------------------------------------------------------------------------

def _refusals() -> dict[str, tuple[Callable[[], Any], str]]:
    import keras

    L = keras.layers

    def seq(layer: Callable[[], Any]) -> Callable[[], Any]:
        return lambda: _sequence_model(layer)

    def tokens(build: Callable[[Any], Any]) -> Callable[[], Any]:
        def model() -> Any:
            ids = keras.Input((STEPS,), dtype="int32")
            return keras.Model(ids, build(ids))
        return model

    return {
        "mask_zero": (tokens(lambda i: L.GlobalAveragePooling1D()(L.Embedding(VOCAB, 4, mask_zero=True)(i))),
                      "mask_zero=True"),
        "return_state": (lambda: keras.Model(*(lambda x: (x, L.LSTM(3, return_state=True)(x)[0]))(
            keras.Input((STEPS, 3)))), "return_state=True"),
        "stateful": (lambda: keras.Model(*(lambda x: (x, L.GRU(3, stateful=True)(x)))(
            keras.Input(batch_shape=(2, STEPS, 3)))), "stateful=True"),
        "activation": (seq(lambda: L.SimpleRNN(3, activation="gelu")), "activation='gelu'"),
        "merge_none": (lambda: keras.Model(*(lambda x: (x, L.Bidirectional(L.LSTM(3), merge_mode=None)(x)[0]))(
            keras.Input((STEPS, 3)))), "merge_mode=None"),
        "time_distributed_conv": (lambda: keras.Model(*(lambda x: (x, L.TimeDistributed(L.Conv1D(2, 2))(x)))(
            keras.Input((STEPS, 4, 3)))), "a Conv1D layer inside"),
        "ids_into_dense": (tokens(lambda i: L.Dense(2)(i)), "integer input"),
        "ids_unused_by_embedding": (
            lambda: keras.Model(*(lambda i, f: ([i, f], L.Dense(2)(f)))(keras.Input((STEPS,), dtype="int32"),
                                                                          keras.Input((3,)))),
            "no Embedding reading it"),
        "embedding_of_floats": (lambda: keras.Model(*(lambda x: (x, L.Embedding(VOCAB, 2)(x)))(keras.Input((STEPS,)))),
                                "not an integer model input"),
    }


@pytest.mark.parametrize("name", list(_refusals()))
def test_unsupported_options_are_refused_by_name(name):
    build, message = _refusals()[name]
    with pytest.raises(UnsupportedLayerError, match=message):
        to_ir(build())


@pytest.mark.parametrize("build", [embedding_classifier, lambda: _sequence_model(lambda: __import__("keras").layers.LSTM(2))])
def test_encrypted_training_refuses_at_privatize(build):
    from bridge.reference_train import TrainingRefused

    model = build()
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    with pytest.raises(TrainingRefused, match=r"\((gru|lstm)\) cannot be trained encrypted: .*encrypted serving only"):
        privatize(model, privacy="encrypted_training")


# -- the in-layer range check ----------------------------------------------------------------------

@pytest.mark.parametrize("backend_name", SECURE_BACKENDS[:1])
def test_saturated_pre_activations_are_flagged_not_answered(backend_name):
    """Pre-activations past the range bound are hidden by tanh/sigmoid in the output, so the
    layer checks them itself: the query is refused naming the layer, never answered."""
    from bridge.mpc.range_check import FixedPointOverflowError

    model = _sequence_model(lambda: __import__("keras").layers.LSTM(2, name="cell"))
    x = np.full((1, STEPS, 3), 2e7, dtype=np.float32)  # |x W| far above the 2^20 bound; |h| <= 1
    private = privatize(model, privacy="encrypted_serving", backend=backend_name, timeout_s=LIVENESS_S)
    with pytest.raises(FixedPointOverflowError, match="'cell'"):
        private.predict(x, verbose=0)


# -- cost: rounds per step, exact ------------------------------------------------------------------

#: rounds of one more step (``bridge.mpc.recurrent``): h U, the batched gate sigmoid (27), the cell's
#: products and the second activation
ROUNDS_PER_STEP = {"simple_rnn": 28, "lstm": 57, "gru_reset_after": 57, "gru_reset_before": 58}


@pytest.mark.parametrize("backend_name, name", [
    pytest.param(b, n, marks=() if b == "torch-spdz" or n == "lstm" else pytest.mark.slow, id=f"{n}-{b}")
    for n in ROUNDS_PER_STEP for b in SECURE_BACKENDS])  # the same protocol code: tf-pond's others under slow
def test_rounds_per_step(backend_name, name):
    from bridge.ir import ops as irops
    from bridge.registry import get_backend
    from tests.conformance.cases_recurrent import _recurrent_case

    op = {"simple_rnn": irops.SimpleRNN(units=2), "lstm": irops.LSTM(units=2),
          "gru_reset_after": irops.GRU(units=2), "gru_reset_before": irops.GRU(units=2, reset_after=False)}[name]
    rounds = []
    for steps in (2, 3):
        case = _recurrent_case(name, op, steps=steps)
        executable = get_backend(backend_name).prepare(case.program, case.weights)
        try:
            stats = executable.run(case.inputs).stats.snapshot()["server0"]
        finally:
            executable.close()
        rounds.append(sum(r for _, r in stats.values()))
    assert rounds[1] - rounds[0] == ROUNDS_PER_STEP[name]
