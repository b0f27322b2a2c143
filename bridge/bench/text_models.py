"""Text models for the zoo rows: the keras.io text CNN at its realistic size, from token ids.

keras.io's "Text classification from scratch" classifier (Embedding, two strided Conv1D of
128 filters and width 7, GlobalMaxPooling1D, Dense 128, a sigmoid) at the sizes of the
keras.io text examples: a 20,000-word vocabulary, 200 tokens a review, 32-wide embeddings.
Its input is the integer ids; served encrypted, the data owner one-hot encodes them
(``bridge.ir.tokens``), so a query shares 200 x 20,000 one-hot entries per example.  The
model is built seeded with random weights (``weights=None`` in the applications' sense).
Imported lazily by ``bridge.bench.zoo``; Keras is imported only when a model is built.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: name -> (vocabulary, tokens per example, embedding width)
TEXT_MODELS: dict[str, tuple[int, int, int]] = {
    "text_cnn": (20_000, 200, 32),
}


def build_text_model(name: str) -> Any:
    """The keras.io text CNN of ``TEXT_MODELS[name]``, seeded."""
    import keras

    vocabulary, steps, width = TEXT_MODELS[name]
    keras.utils.set_random_seed(0)
    ids = keras.Input((steps,), dtype="int32", name="token_ids")
    h = keras.layers.Embedding(vocabulary, width)(ids)
    h = keras.layers.Conv1D(128, 7, padding="valid", activation="relu", strides=3)(h)
    h = keras.layers.Conv1D(128, 7, padding="valid", activation="relu", strides=3)(h)
    h = keras.layers.GlobalMaxPooling1D()(h)
    h = keras.layers.Dense(128, activation="relu")(h)
    out = keras.layers.Dense(1, activation="sigmoid", name="predictions")(h)
    return keras.Model(ids, out, name=name)


def text_input(name: str, batch: int = 1, seed: int = 0) -> np.ndarray:
    """A batch of token ids, uniform over the vocabulary (what a tokenizer's output looks like to the servers)."""
    vocabulary, steps, _ = TEXT_MODELS[name]
    return np.random.default_rng(seed).integers(0, vocabulary, (batch, steps)).astype(np.int32)
