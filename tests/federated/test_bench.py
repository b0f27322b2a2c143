"""The federated benchmark row (quick size): its columns and exact traffic counts."""

from __future__ import annotations

from bridge.bench.federated import federated_bench

#: the 64-32-10 MLP's float weights, then the averaged metrics (accuracy, loss) and the weight a_i
VECTOR = 64 * 32 + 32 + 32 * 10 + 10 + 2 + 1
CLIENTS = 3


def test_federated_row_counts_exact_traffic(secure_backend):
    row = federated_bench(secure_backend.name, quick=True)
    assert row["workload"] == "fedavg_digits_3clients" and row["backend"] == secure_backend.name
    assert row["rounds"] == 3 and row["ratio"] == row["wall_s"] / row["local_training_s"]
    # each aggregator: a 1-byte bitmap to its peer, then the bitmap and its share of the sum to the owner
    assert row["bytes_per_party"] == 1 + 8 * (CLIENTS + VECTOR)
    # each client: one 8-byte share of every entry to each of the two aggregators
    assert row["upload_bytes"] == CLIENTS * 2 * 8 * VECTOR
    assert row["test_accuracy"] > 0.8
