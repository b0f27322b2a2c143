"""Seeded client splits for federated examples and tests: IID and label-skewed (non-IID).

Each function returns one index array per client over a labelled dataset.
``load_digits_clients`` applies them to scikit-learn's ``load_digits``
(1797 8x8 images, 10 classes), for 3 to 10 clients.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Split = Literal["iid", "dirichlet", "shards"]


def iid_split(num_samples: int, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    """A random permutation cut into ``num_clients`` near-equal parts."""
    _check_clients(num_clients, num_samples)
    order = np.random.default_rng(seed).permutation(num_samples)
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def dirichlet_split(
    labels: np.ndarray, num_clients: int, alpha: float = 0.5, seed: int = 0, min_per_client: int = 10
) -> list[np.ndarray]:
    """Label skew (Hsu, Qi, Brown 2019): each class is divided among clients in Dirichlet(alpha) proportions.

    Small ``alpha`` gives each client few classes; large ``alpha`` tends to IID.
    Proportions are redrawn (same generator) until every client has at least
    ``min_per_client`` samples.
    """
    labels = np.asarray(labels)
    _check_clients(num_clients, len(labels))
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, received {alpha}")
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for cls in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == cls))
            cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, alpha))) * len(members)).astype(int)[:-1]
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_per_client:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(
        f"could not give each of {num_clients} clients {min_per_client} samples with alpha={alpha}; "
        "raise alpha or lower min_per_client"
    )


def shard_split(labels: np.ndarray, num_clients: int, shards_per_client: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Pathological label skew (McMahan et al. 2017): sort by label, cut into shards, deal each client a few."""
    labels = np.asarray(labels)
    _check_clients(num_clients, len(labels))
    rng = np.random.default_rng(seed)
    order = np.argsort(labels + rng.uniform(0.0, 0.5, size=len(labels)), kind="stable")
    shards = np.array_split(order, num_clients * shards_per_client)
    dealt = rng.permutation(len(shards)).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in dealt]


def load_digits_clients(
    num_clients: int = 3,
    split: Split = "iid",
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    alpha: float = 0.5,
    shards_per_client: int = 2,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """``load_digits`` scaled to [0, 1], a stratified test split, and the rest split between clients.

    Returns ({"client0": (x, y), ...}, (x_test, y_test)); x is float32 (n, 64), y int64.
    """
    if not 3 <= num_clients <= 10:
        raise ValueError(f"load_digits_clients makes 3 to 10 clients, received num_clients={num_clients}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    if split == "iid":
        parts = iid_split(len(y_train), num_clients, seed)
    elif split == "dirichlet":
        parts = dirichlet_split(y_train, num_clients, alpha=alpha, seed=seed)
    elif split == "shards":
        parts = shard_split(y_train, num_clients, shards_per_client=shards_per_client, seed=seed)
    else:
        raise ValueError(f"split={split!r} is not one of 'iid', 'dirichlet', 'shards'")
    clients = {f"client{i}": (x_train[idx], y_train[idx]) for i, idx in enumerate(parts)}
    return clients, (x_test, y_test)


def _check_clients(num_clients: int, num_samples: int) -> None:
    if num_clients < 1 or num_clients > num_samples:
        raise ValueError(f"cannot split {num_samples} samples between {num_clients} clients")
