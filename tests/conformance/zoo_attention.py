"""Zoo models that need LayerNormalization / MultiHeadAttention / keras.ops (registered in
``test_applications``): the keras.io transformer text classifier, a RegNetX stage, and
ConvNeXtTiny with its normalisations randomized."""

from __future__ import annotations

from typing import Any

def randomize_normalization(model: Any, seed: int = 11) -> Any:
    """LayerNormalization gamma/beta and ConvNeXt's LayerScale gamma away from their initial 1, 0
    and 1e-6, so that each of them changes the output (batch norms: ``test_applications``)."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in _all_layers(model):
        kind = type(layer).__name__
        if isinstance(layer, keras.layers.LayerNormalization) or kind == "LayerScale":
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) if i == 0 else rng.normal(0.0, 0.2, w.shape)
                               for i, w in enumerate(layer.get_weights())])
    return model


def _all_layers(model: Any) -> list[Any]:
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out.extend(_all_layers(layer))
    return out


def convnext_tiny() -> Any:
    """keras.applications.ConvNeXtTiny at 32x32 (weights=None, 5 classes), normalisations randomized."""
    import keras

    keras.utils.set_random_seed(5)
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=5)
    return randomize_normalization(model)


#: the keras.io "Text classification with Transformer" sizes, shrunk so that encrypted serving is quick
MAXLEN, EMBED_DIM, NUM_HEADS, FF_DIM = 8, 8, 2, 16


def transformer_block(x: Any, embed_dim: int, num_heads: int, ff_dim: int, rate: float = 0.1) -> Any:
    """keras.io's TransformerBlock, written functionally (the example subclasses Layer, which the
    importer refuses): attention, dropout, residual + LayerNorm, a Sequential FFN, residual + LayerNorm."""
    import keras

    layers = keras.layers
    attention = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)(x, x)
    attention = layers.Dropout(rate)(attention)
    out1 = layers.LayerNormalization(epsilon=1e-6)(x + attention)
    ffn = keras.Sequential([layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)])(out1)
    ffn = layers.Dropout(rate)(ffn)
    return layers.LayerNormalization(epsilon=1e-6)(out1 + ffn)


def transformer_text_classifier() -> Any:
    """keras.io 'Text classification with Transformer' after its token and position embedding:
    the input is the embedded sequence (batch, MAXLEN, EMBED_DIM) of floats."""
    import keras

    keras.utils.set_random_seed(5)
    layers = keras.layers
    inputs = keras.Input((MAXLEN, EMBED_DIM))
    x = transformer_block(inputs, EMBED_DIM, NUM_HEADS, FF_DIM)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dropout(0.1)(x)
    x = layers.Dense(20, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    return randomize_normalization(keras.Model(inputs, layers.Dense(2, activation="softmax")(x)))


#: the token version's vocabulary
VOCAB = 30


def transformer_token_classifier() -> Any:
    """keras.io 'Text classification with Transformer', whole: int token ids, TokenAndPositionEmbedding
    written functionally (the token Embedding, plus the position Embedding of arange(maxlen), which
    Keras computes when the model is built: a constant the importer shares as add_constant's
    parameter), the transformer block, pooling and the two Dense layers."""
    import keras

    keras.utils.set_random_seed(5)
    layers = keras.layers
    inputs = keras.Input((MAXLEN,), dtype="int32")
    tokens = layers.Embedding(VOCAB, EMBED_DIM)(inputs)
    positions = layers.Embedding(MAXLEN, EMBED_DIM)(keras.ops.arange(0, MAXLEN))
    x = transformer_block(tokens + positions, EMBED_DIM, NUM_HEADS, FF_DIM)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dropout(0.1)(x)
    x = layers.Dense(20, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    return randomize_normalization(keras.Model(inputs, layers.Dense(2, activation="softmax")(x)))


def causal_transformer() -> Any:
    """A decoder-style block: causal self-attention, keras.ops mean over the steps, exp and matmul."""
    import keras

    keras.utils.set_random_seed(5)
    layers = keras.layers
    inputs = keras.Input((MAXLEN, EMBED_DIM))
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=4)(inputs, inputs, use_causal_mask=True)
    x = layers.LayerNormalization(epsilon=1e-6)(inputs + attention)
    gram = keras.ops.matmul(keras.ops.transpose(x, (0, 2, 1)), x) * (1.0 / MAXLEN)  # (batch, D, D)
    pooled = keras.ops.mean(gram, axis=1)
    return randomize_normalization(keras.Model(inputs, layers.Dense(3, activation="softmax")(pooled)))


def regnet_x_stage() -> Any:
    """RegNetX-200MF's stem and first stage (keras.applications.RegNetX002 left Keras 3): the X block,
    1x1 conv, grouped 3x3 conv of group width 8, 1x1 conv, each with batch norm, and a projected
    shortcut."""
    import keras

    keras.utils.set_random_seed(5)
    layers = keras.layers
    inputs = keras.Input((32, 32, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.ReLU()(layers.BatchNormalization(epsilon=1e-5, momentum=0.9)(x))
    shortcut = layers.BatchNormalization(epsilon=1e-5)(layers.Conv2D(24, 1, strides=2, use_bias=False)(x))
    y = layers.ReLU()(layers.BatchNormalization(epsilon=1e-5)(layers.Conv2D(24, 1, use_bias=False)(x)))
    y = layers.Conv2D(24, 3, strides=2, padding="same", groups=3, use_bias=False)(y)
    y = layers.ReLU()(layers.BatchNormalization(epsilon=1e-5)(y))
    y = layers.BatchNormalization(epsilon=1e-5)(layers.Conv2D(24, 1, use_bias=False)(y))
    x = layers.ReLU()(layers.add([y, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(5, activation="softmax")(x))
