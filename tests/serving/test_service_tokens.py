"""A token model (Embedding + Conv1D + GlobalMaxPooling1D) deployed to the service in threads:
the client checks and one-hot encodes its ids itself (``bridge.ir.tokens``), so
``client.predict(ids)`` answers what ``model.predict(ids)`` does; bad ids (negative, too
large, fractional) are refused at the client with the library's error before anything is
sent (the servers count no request), and the service answers the next good request."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.ir.tokens import TokenInputError
from bridge.registry import get_backend
from bridge.serving.client import deploy
from bridge.serving.config import load_service
from frontends.cli import main
from frontends.keras.client import connect
from tests.serving.helpers import make_service, nodes_in_threads
from tests.serving.helpers import wait_nodes_ready as wait_ready

VOCAB, STEPS = 40, 10
#: fixed point, one-hot lookup, conv, max pool, dense, softmax: a few 1e-4 (tiny_mlp's ATOL)
ATOL = 2e-3


def text_cnn():
    import keras

    keras.utils.set_random_seed(3)
    ids = keras.Input((STEPS,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, 6)(ids)
    h = keras.layers.Conv1D(8, 3, activation="relu")(h)
    h = keras.layers.GlobalMaxPooling1D()(h)
    return keras.Model(ids, keras.layers.Dense(3, activation="softmax")(h))


@pytest.mark.parametrize("backend", ["torch-spdz", "tf-pond"])
def test_token_model_served(tmp_path, backend):
    from frontends.keras.importer import to_ir

    model = text_cnn()
    program, weights = to_ir(model)
    cluster = make_service(tmp_path, clients=["alice"], timeout_s=10.0)
    service = load_service(cluster)
    with nodes_in_threads(service, get_backend(backend), log=print) as nodes:
        deploy(cluster, program, weights, "owner")
        wait_ready(nodes)
        rng = np.random.default_rng(0)
        ids = rng.integers(0, VOCAB, size=(4, STEPS)).astype(np.int32)
        ids[0, :3] = [0, VOCAB - 1, 0]  # both ends of the vocabulary
        with connect(cluster, identity="alice") as client:
            got = client.predict(ids)
            expected = model.predict(ids, verbose=0)
            assert got.shape == expected.shape == (4, 3) and got.dtype == np.float32
            assert np.abs(got - expected).max() < ATOL, np.abs(got - expected).max()
            assert (got.argmax(-1) == expected.argmax(-1)).all()
            # one example without a batch axis: a batch of one, as for float inputs
            assert np.abs(client.predict(ids[1]) - expected[1:2]).max() < ATOL

            sent = nodes["server0"].stats.snapshot()["counts"]["requests"]
            bad = ids.copy()
            bad[2, 5] = VOCAB
            with pytest.raises(TokenInputError, match=rf"token ids must be in \[0, {VOCAB}\).*{VOCAB}.*\(2, 5\)"):
                client.predict(bad)
            bad[2, 5] = -1
            with pytest.raises(TokenInputError, match=r"received -1 at index \(2, 5\)"):
                client.predict(bad)
            with pytest.raises(TokenInputError, match="integers; received 2.5"):
                client.predict(np.where(ids == ids[0, 0], 2.5, ids).astype(np.float64))
            with pytest.raises(TokenInputError, match=rf"token ids of shape \(batch, {STEPS}\)"):
                client.predict(np.zeros((2, STEPS, VOCAB)))  # one-hot rows are the client's business, not the caller's
            assert nodes["server0"].stats.snapshot()["counts"]["requests"] == sent  # nothing was sent

            more = rng.integers(0, VOCAB, size=(2, STEPS))
            assert np.abs(client.predict(more) - model.predict(more, verbose=0)).max() < ATOL

        # the command line's predict takes the ids from a .npy file the same way
        np.save(tmp_path / "ids.npy", ids)
        assert main(["predict", "--cluster", str(cluster), "--identity", "alice", "--input",
                     str(tmp_path / "ids.npy"), "--output", str(tmp_path / "y.npy")]) == 0
        assert np.abs(np.load(tmp_path / "y.npy") - expected).max() < ATOL
