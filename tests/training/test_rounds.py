"""Rounds of one SGD step of mlp_train's shape, exact, on every secure backend.

Where they go (one compute party, ``CommStats`` labels; ``bridge.bench.workloads``):
  forward       3 dense products (the kernels are masked already: 1 each), 2 ReLUs (5 each),
                softmax over 10 classes (46: max tree 20, exp 13, reciprocal 12, product 1)
  overflow      the range check 10 and its reveal 1
  metrics       p_true 1, log 13, the reveal to the model owner 1
  backward      dense_2 1, relu_1 1, dense_1 1, relu_0 1, dense_0 1: a dense layer opens its
                input and dy in one message (``batched.mask_many``) for dx and dW
  update        SGD truncates locally (0); the three kernels are re-masked in one round
The step was 95 rounds before the backward openings and the re-masking were batched.
"""

from __future__ import annotations

import numpy as np

from bridge.bench.workloads import mlp_train_program, random_data

#: the rounds above: 3 + 10 + 46 + 11 + 15 + 5 + 1
ROUNDS_PER_STEP = 91
#: backward and update only (labels of the gradient rules and the re-masking)
TRAINING_ROUNDS = 6


def _step_stats(backend, batch: int = 8):
    program, weights = mlp_train_program(sizes=(12, 6, 5, 10))
    x, y = random_data(batch, sizes=(12, 6, 5, 10))
    executable = backend.prepare_training(program, weights)
    executable.load_data({"alice": (x, y)})
    executable.train_batch(np.arange(batch))
    return executable.last_stats


def test_rounds_per_sgd_step(secure_backend):
    stats = _step_stats(secure_backend)
    for party in ("server0", "server1"):
        assert stats.total_rounds(party) == ROUNDS_PER_STEP
        labels = stats.snapshot()[party]
        training = sum(r for label, (_, r) in labels.items() if "_grad" in label or label == "mask")
        assert training == TRAINING_ROUNDS, sorted(labels)
        # each dense layer's backward is one opening (its input and dy together)
        dense = [r for label, (_, r) in sorted(labels.items()) if label.startswith("dense_") and "grad" in label]
        assert dense == [1, 1, 1]
