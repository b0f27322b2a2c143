"""The mlp_train benchmark row (quick size): the columns the bench table prints, within budget."""

from __future__ import annotations

from bridge.bench.training import mlp_train

COLUMNS = {"workload", "backend", "wall_s", "online_s", "offline_s", "plaintext_torch_s", "ratio", "bytes_per_party",
           "rounds", "dealer_bytes"}


def test_mlp_train_row(secure_backend):
    row = mlp_train(secure_backend.name, quick=True)
    assert set(row) == COLUMNS
    assert row["backend"] == secure_backend.name and row["workload"] == "mlp_train (quick)"
    assert row["wall_s"] > 0 and row["plaintext_torch_s"] > 0 and row["ratio"] == row["wall_s"] / row["plaintext_torch_s"]
    # training draws its dealer material inline: all of it online, no offline phase to report
    assert row["online_s"] == row["wall_s"] and row["offline_s"] is None
    # a quarter of the epoch: the 300 MB-per-party-per-epoch budget, scaled
    assert 0 < row["bytes_per_party"] < 300e6 / 4
    assert row["rounds"] > 4 * 50 and row["dealer_bytes"] > 0
