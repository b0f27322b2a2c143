"""keras.io 'Text classification with Transformer' from token ids: token and position embeddings,
MultiHeadAttention, LayerNormalization, the feed-forward Sequential; the reference equals
``model.predict`` within 1e-4 and encrypted serving is within the zoo tolerance on both backends
(4 s on torch-spdz, 10 s on tf-pond here: the default run's encrypted attention model)."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.reference import run_reference
from frontends.keras import privatize, to_ir
from tests.conformance import zoo_attention
from tests.conformance.test_zoo import ZOO_TOLERANCE
from tests.conftest import SECURE_BACKENDS

REFERENCE_TOLERANCE = 1e-4
#: the waiting parties hear nothing while the servers run the block: above its duration on a loaded host
LIVENESS_S = 600.0


def _ids(batch: int = 4) -> np.ndarray:
    return np.random.default_rng(3).integers(0, zoo_attention.VOCAB, (batch, zoo_attention.MAXLEN)).astype(np.int32)


def test_transformer_from_tokens_reference_matches_predict():
    model = zoo_attention.transformer_token_classifier()
    program, weights = to_ir(model)
    kinds = [n.op.kind for n in program.graph.nodes]
    assert kinds[:3] == ["embedding", "add_constant", "multi_head_attention"]
    ids = _ids()
    (got,) = run_reference(program, weights, {next(iter(program.graph.inputs)): ids}).values()
    np.testing.assert_allclose(got, model.predict(ids, verbose=0), atol=REFERENCE_TOLERANCE, rtol=0)


@pytest.mark.parametrize("backend_name", SECURE_BACKENDS)
def test_transformer_from_tokens_encrypted_matches_predict(backend_name):
    model = zoo_attention.transformer_token_classifier()
    ids = _ids(3)
    expected = model.predict(ids, verbose=0)
    got = privatize(model, privacy="encrypted_serving", backend=backend_name, timeout_s=LIVENESS_S).predict(
        ids, verbose=0)
    np.testing.assert_allclose(got, expected, atol=ZOO_TOLERANCE, rtol=0)
