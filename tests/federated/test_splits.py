"""Client splits of load_digits: IID and label-skewed, seeded, for 3 to 10 clients."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.federated.splits import dirichlet_split, iid_split, load_digits_clients, shard_split


def load_digits_labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target


def label_share(y: np.ndarray) -> float:
    """The fraction of a client's samples in its most common class (0.1 when balanced)."""
    return float(np.bincount(y, minlength=10).max() / len(y))


@pytest.mark.parametrize("num_clients", [3, 5, 10])
@pytest.mark.parametrize("split", ["iid", "dirichlet", "shards"])
def test_splits_partition_the_training_set(split, num_clients):
    clients, (x_test, y_test) = load_digits_clients(num_clients, split, seed=1)
    assert list(clients) == [f"client{i}" for i in range(num_clients)]
    sizes = [len(y) for _, y in clients.values()]
    assert sum(sizes) + len(y_test) == 1797 and min(sizes) >= 10
    labels = np.concatenate([y for _, y in clients.values()])
    # the clients together hold exactly the training labels: stratified split, 80% of each class
    assert np.array_equal(np.bincount(labels, minlength=10) + np.bincount(y_test, minlength=10),
                          np.bincount(load_digits_labels(), minlength=10))
    assert all(x.dtype == np.float32 and x.max() <= 1.0 for x, _ in clients.values())


def test_index_splits_are_disjoint_and_cover_everything():
    y = np.repeat(np.arange(10), 50)
    for parts in (iid_split(len(y), 4, 0), dirichlet_split(y, 4, 0.3, 0), shard_split(y, 4, 2, 0)):
        joined = np.concatenate(parts)
        assert len(joined) == len(y) and len(np.unique(joined)) == len(y)


def test_label_skew():
    iid, _ = load_digits_clients(5, "iid", seed=0)
    skewed, _ = load_digits_clients(5, "dirichlet", seed=0, alpha=0.2)
    shards, _ = load_digits_clients(5, "shards", seed=0)
    assert max(label_share(y) for _, y in iid.values()) < 0.2
    assert np.mean([label_share(y) for _, y in skewed.values()]) > 0.3
    # two shards per client: at most about two classes each
    assert all(len(np.unique(y)) <= 4 for _, y in shards.values())


def test_seeded():
    a, _ = load_digits_clients(4, "dirichlet", seed=3)
    b, _ = load_digits_clients(4, "dirichlet", seed=3)
    c, _ = load_digits_clients(4, "dirichlet", seed=4)
    assert all(np.array_equal(a[k][1], b[k][1]) for k in a)
    assert any(len(a[k][1]) != len(c[k][1]) or not np.array_equal(a[k][1], c[k][1]) for k in a)


def test_client_count_is_checked():
    with pytest.raises(ValueError, match="3 to 10 clients"):
        load_digits_clients(2)
