"""FedAvg's protocol-neutral core with a NumPy trainer: averaging, sampling, dropouts, min_clients."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydantic import ValidationError

from bridge.federated import (
    FedAvg,
    FedAvgConfig,
    LocalResult,
    TooFewClientsError,
    TrustedAggregator,
    sample_clients,
)
from bridge.federated.fedavg import WeightLayout

CLIENTS = ("a", "b", "c")
SAMPLES = {"a": 10, "b": 30, "c": 60}
GLOBAL = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32), np.array([7], np.int64)]


def shift(client: str) -> float:
    return {"a": 1.0, "b": 2.0, "c": 4.0, "d": 8.0}[client]


class ShiftTrainer:
    """Client c adds shift(c) to every float weight; reports loss = shift(c)."""

    def __init__(self, slow: dict[str, float] | None = None) -> None:
        self.slow = slow or {}
        self.calls: list[tuple[int, str]] = []

    def __call__(self, client, weights, round_index):
        self.calls.append((round_index, client))
        time.sleep(self.slow.get(client, 0.0))
        new = [w + shift(client) if np.issubdtype(w.dtype, np.floating) else w + 100 for w in weights]
        return LocalResult(new, SAMPLES.get(client, 20), {"loss": shift(client)})


def make(config: FedAvgConfig, trainer=None, injector=None, clients=CLIENTS) -> FedAvg:
    return FedAvg(clients, trainer or ShiftTrainer(), TrustedAggregator(), config, injector)


def test_weighted_average_of_updates_and_metrics():
    result = make(FedAvgConfig(rounds=1)).run_round(0, GLOBAL)
    expected = sum(SAMPLES[c] * shift(c) for c in CLIENTS) / sum(SAMPLES.values())
    np.testing.assert_allclose(result.weights[0], np.full((3, 2), expected), rtol=1e-6)
    np.testing.assert_allclose(result.weights[1], np.full(2, expected), rtol=1e-6)
    assert result.weights[0].dtype == np.float32
    # integer state is not averaged: it keeps the global value
    assert result.weights[2].tolist() == [7]
    assert result.metrics == pytest.approx({"loss": expected})
    assert result.included == CLIENTS and not result.dropped


def test_sampling_is_seeded_public_and_sized_by_fraction():
    clients = tuple("abcdefghij")
    first = [sample_clients(clients, 0.3, seed=5, round_index=r) for r in range(20)]
    again = [sample_clients(clients, 0.3, seed=5, round_index=r) for r in range(20)]
    other = [sample_clients(clients, 0.3, seed=6, round_index=r) for r in range(20)]
    assert first == again and first != other
    assert all(len(s) == 3 and len(set(s)) == 3 for s in first)
    assert len(set(first)) > 5  # rounds differ
    assert sample_clients(clients, 1.0, 0, 0) == clients


def test_failed_client_is_dropped_and_reported_round_completes():
    def injector(round_index, client, phase):
        if client == "b" and phase == "train":
            raise ConnectionError("client b lost its connection")

    result = make(FedAvgConfig(rounds=1), injector=injector).run_round(0, GLOBAL)
    assert result.included == ("a", "c")
    assert "ConnectionError: client b lost its connection" in result.dropped["b"]
    expected = (SAMPLES["a"] * 1.0 + SAMPLES["c"] * 4.0) / (SAMPLES["a"] + SAMPLES["c"])
    np.testing.assert_allclose(result.weights[0], expected, rtol=1e-6)


def test_client_over_the_round_timeout_is_dropped():
    trainer = ShiftTrainer(slow={"c": 2.0})
    start = time.perf_counter()
    result = make(FedAvgConfig(rounds=1, round_timeout_s=0.3), trainer).run_round(0, GLOBAL)
    assert time.perf_counter() - start < 1.5  # did not wait for the slow client
    assert result.included == ("a", "b")
    assert "round_timeout_s=0.3" in result.dropped["c"]


def test_diverged_client_is_dropped():
    class NaNTrainer(ShiftTrainer):
        def __call__(self, client, weights, round_index):
            out = super().__call__(client, weights, round_index)
            if client == "a":
                out.weights[0][0, 0] = np.nan
            return out

    result = make(FedAvgConfig(rounds=1), NaNTrainer()).run_round(0, GLOBAL)
    assert result.included == ("b", "c")
    assert "NaN" in result.dropped["a"]


def test_fewer_than_min_clients_fails_clearly():
    def injector(round_index, client, phase):
        if client != "a":
            raise RuntimeError(f"{client} crashed")

    with pytest.raises(TooFewClientsError, match=r"1 of 3 sampled clients.*min_clients=2") as info:
        make(FedAvgConfig(rounds=1, min_clients=2), injector=injector).run_round(0, GLOBAL)
    assert "b: RuntimeError: b crashed" in str(info.value)


def test_fraction_that_cannot_reach_min_clients_is_refused_upfront():
    with pytest.raises(ValueError, match="samples 1 per round, fewer than min_clients=2"):
        make(FedAvgConfig(rounds=1, client_fraction=0.2, min_clients=2))


def test_noise_without_clipping_is_refused():
    with pytest.raises(ValidationError, match="needs clip_norm"):
        FedAvgConfig(rounds=1, noise_multiplier=1.0)


def test_clipping_bounds_each_update():
    layout = WeightLayout(GLOBAL)
    result = make(FedAvgConfig(rounds=1, clip_norm=1.0)).run_round(0, GLOBAL)
    # every update is a constant vector of 8 entries: clipped to 1 / sqrt(8) per entry
    np.testing.assert_allclose(layout.flatten(result.weights), 1 / np.sqrt(8), rtol=1e-5)


def test_dp_round_uses_equal_weights_and_reports_epsilon():
    config = FedAvgConfig(rounds=1, clip_norm=100.0, noise_multiplier=1e-9)
    result = make(config).run_round(0, GLOBAL)
    np.testing.assert_allclose(result.weights[0], np.mean([1.0, 2.0, 4.0]), rtol=1e-5)
    assert result.metrics == {}  # training metrics are not released under DP
    assert result.epsilon is not None and result.epsilon > 0
