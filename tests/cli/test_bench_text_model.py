"""The zoo's text row: keras.io's text CNN at its realistic size takes token ids, imports as
a token input (one-hot depth = the vocabulary), and its query ids stay in the vocabulary."""

from __future__ import annotations

import numpy as np

from bridge.bench.zoo import ZOO_MODELS, build_model, model_input


def test_text_cnn_is_a_zoo_model_from_token_ids():
    from frontends.keras.importer import to_ir

    assert "text_cnn" in ZOO_MODELS
    model = build_model("text_cnn")
    x = model_input(model, batch=2)
    assert x.shape == (2, 200) and x.dtype == np.int32 and 0 <= x.min() and x.max() < 20_000
    assert len(np.unique(x)) > 300  # spread over the vocabulary, not a constant
    program, weights = to_ir(model)
    (spec,) = program.graph.inputs.values()
    assert spec.dtype == "int32" and spec.feature_shape == (200, 20_000)
    assert model.count_params() == 20_000 * 32 + (7 * 32 * 128 + 128) + (7 * 128 * 128 + 128) + 128 * 129 + 129
