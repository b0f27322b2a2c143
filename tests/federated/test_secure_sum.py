"""Secure aggregation on every secure backend's kernels: exact sums, hiding, dropouts, costs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bridge.federated import NoiseSpec, SecureAggregator, TooFewClientsError, TrustedAggregator
from bridge.federated.secure_sum import AGGREGATORS, MODEL_OWNER, REVEAL_LABEL, client_party
from bridge.ir import Numerics
from bridge.mpc import wire

CLIENTS = ("a", "b", "c")


@pytest.fixture
def aggregator(secure_backend):
    return SecureAggregator(secure_backend.make_kernels(), CLIENTS, share_timeout_s=0.3)


def weighted_vectors(rng, length=500):
    """Each client's vector [n_i * d_i, n_i], as FedAvg builds them."""
    samples = {"a": 123.0, "b": 45.0, "c": 310.0}
    updates = {c: rng.normal(scale=0.05, size=length) for c in CLIENTS}
    vectors = {c: np.concatenate([samples[c] * updates[c], [samples[c]]]) for c in CLIENTS}
    average = sum(samples[c] * updates[c] for c in CLIENTS) / sum(samples.values())
    return vectors, average


def test_secure_sum_equals_plain_weighted_average(aggregator):
    vectors, average = weighted_vectors(np.random.default_rng(0))
    result = aggregator.aggregate(0, vectors)
    plain = TrustedAggregator().aggregate(0, vectors)
    f = aggregator.numerics.frac_bits
    tolerance = len(CLIENTS) * 2.0 ** -(f + 1)  # each client's rounding, summed
    assert np.max(np.abs(result.total - plain.total)) <= tolerance
    assert result.total[-1] == plain.total[-1]  # sample counts are integers: exact
    secure_average = result.total[:-1] / result.total[-1]
    assert np.max(np.abs(secure_average - average)) <= tolerance / result.total[-1] + 1e-12
    assert result.included == CLIENTS and not result.dropped


def test_costs(aggregator):
    length = 501
    vectors, _ = weighted_vectors(np.random.default_rng(1), length - 1)
    result = aggregator.aggregate(0, vectors)
    m = len(CLIENTS)
    # to the peer: one bit per client; to the owner: the included bitmap and the share
    assert result.bytes_per_aggregator == (m + 7) // 8 + 8 * (m + length)
    assert result.rounds == 2
    assert result.upload_bytes == m * 2 * 8 * length


def test_client_dying_mid_sharing_is_excluded_not_half_counted(aggregator):
    vectors, _ = weighted_vectors(np.random.default_rng(2))

    def injector(round_index, client, phase):
        if client == "b" and phase == "mid_share":
            raise ConnectionResetError("b died after its first share")

    result = aggregator.aggregate(0, vectors, failure_injector=injector)
    assert result.included == ("a", "c")
    assert "ConnectionResetError" in result.dropped["b"] and "discarded" in result.dropped["b"]
    np.testing.assert_allclose(result.total, vectors["a"] + vectors["c"], atol=1e-4)
    # the aggregator is reusable afterwards, with every client back
    again = aggregator.aggregate(1, vectors)
    assert again.included == CLIENTS


def test_too_few_after_sharing_reveals_nothing(aggregator):
    vectors, _ = weighted_vectors(np.random.default_rng(3))

    def injector(round_index, client, phase):
        if client in ("a", "b") and phase == "mid_share":
            raise RuntimeError("gone")

    before = aggregator.parties.stats.snapshot()
    with pytest.raises(TooFewClientsError, match="only 1 client update.*nothing was revealed"):
        aggregator.aggregate(0, vectors, min_clients=2, failure_injector=injector)
    delta = aggregator.parties.stats.since(before)
    for a in AGGREGATORS:
        # only the 3-entry included bitmap went to the owner, no share of the sum
        assert delta.bytes_sent[a][REVEAL_LABEL] == 8 * len(CLIENTS)


def test_update_out_of_fixed_point_range_is_dropped_with_reason(secure_backend):
    numerics = Numerics(frac_bits=30)  # |v| < 2^33, and < 2^33 / 3 for a sum of three
    aggregator = SecureAggregator(secure_backend.make_kernels(), CLIENTS, numerics, share_timeout_s=0.3)
    vectors = {c: np.ones(4) for c in CLIENTS}
    vectors["c"] = np.full(4, 2.0**32)
    result = aggregator.aggregate(0, vectors)
    assert result.included == ("a", "b")
    assert "fixed point" in result.dropped["c"] and "frac_bits" in result.dropped["c"]
    vectors["a"] = np.full(4, np.nan)
    with pytest.raises(TooFewClientsError, match="NaN"):
        aggregator.aggregate(0, vectors, min_clients=2)


class Recorder:
    """Wraps an aggregator's transport and keeps every frame it receives from one client."""

    def __init__(self, inner, source: str) -> None:
        self.inner, self.party, self.source, self.frames = inner, inner.party, source, []

    def send(self, peer, message):
        self.inner.send(peer, message)

    def recv(self, peer):
        message = self.inner.recv(peer)
        if peer == self.source:
            self.frames.append(wire.decode_frame(message))
        return message


def received_shares(aggregator: SecureAggregator, update: np.ndarray) -> dict[str, np.ndarray]:
    recorders = {}
    for a in AGGREGATORS:
        messenger = aggregator.parties.contexts[a].messenger
        recorders[a] = messenger.transport = Recorder(messenger.transport, client_party("a"))
    others = np.zeros_like(update)
    aggregator.aggregate(0, {"a": update, "b": others, "c": others})
    for a in AGGREGATORS:
        aggregator.parties.contexts[a].messenger.transport = recorders[a].inner
    return {a: np.concatenate(r.frames) for a, r in recorders.items()}


def byte_histogram(values: np.ndarray, byte: int) -> np.ndarray:
    return np.bincount(((values.view(np.uint64) >> np.uint64(8 * byte)) & np.uint64(0xFF)).astype(np.int64), minlength=256)


def test_received_shares_are_uniform_and_independent_of_the_update(aggregator):
    n = 40_000
    rng = np.random.default_rng(4)
    updates = {"zeros": np.zeros(n), "large": rng.normal(scale=1e6, size=n)}
    seen = {name: received_shares(aggregator, u) for name, u in updates.items()}
    for a in AGGREGATORS:
        for byte in (0, 3, 7):  # low, middle and top byte of each 64-bit share
            counts = {name: byte_histogram(seen[name][a], byte) for name in updates}
            for name in updates:
                assert stats.chisquare(counts[name]).pvalue > 1e-6, (a, byte, name)
            # same distribution whatever the client's update was
            table = np.stack([counts["zeros"], counts["large"]])
            assert stats.chi2_contingency(table).pvalue > 1e-6, (a, byte)
    # the test has power: the encoded update itself, sent in the clear, fails it
    from bridge.mpc.fixedpoint import encode

    leaked = byte_histogram(encode(updates["large"], aggregator.numerics), 7)
    assert stats.chisquare(leaked).pvalue < 1e-12


def test_noise_is_added_before_reveal_with_the_requested_std(aggregator):
    n, noised, std = 40_000, 30_000, 0.25
    vectors = {c: np.full(n, 0.5) for c in CLIENTS}
    exact = np.full(n, 1.5)
    result = aggregator.aggregate(0, vectors, noise=NoiseSpec(std, noised))
    error = result.total - exact
    assert np.max(np.abs(error[noised:])) <= 3 * 2.0 ** -17  # the slice without noise stays exact
    sample = error[:noised]
    assert abs(sample.std() / std - 1) < 0.03
    assert abs(sample.mean()) < 5 * std / np.sqrt(noised)
    assert stats.kstest(sample / std, "norm").pvalue > 1e-6
    # fresh CSPRNG noise each round
    other = aggregator.aggregate(1, vectors, noise=NoiseSpec(std, noised)).total
    assert not np.allclose(other[:noised], result.total[:noised])


def test_owner_is_not_a_network_alias_of_a_client(secure_backend):
    aggregator = SecureAggregator(secure_backend.make_kernels(), ("model_owner", "aggregator0", "x"))
    vectors = {c: np.full(3, float(i + 1)) for i, c in enumerate(("model_owner", "aggregator0", "x"))}
    result = aggregator.aggregate(0, vectors)
    np.testing.assert_allclose(result.total, np.full(3, 6.0), atol=1e-4)
    assert MODEL_OWNER in aggregator.parties.contexts
