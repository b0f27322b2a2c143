"""DP-FedAvg pieces: CSPRNG Gaussian noise, clipping, and the epsilon dp-accounting reports."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bridge.federated import FedAvg, FedAvgConfig, LocalResult, SecureAggregator, TrustedAggregator
from bridge.federated.dp import PrivacyLedger, clip_update, csprng_gaussian
from bridge.mpc.prg import Prg

dp_accounting = pytest.importorskip("dp_accounting")


def test_csprng_gaussian_is_standard_normal_and_reproducible_from_a_seed():
    z = csprng_gaussian((200_000,), 1.0)
    assert stats.kstest(z, "norm").pvalue > 1e-6
    assert abs(z.std() - 1) < 0.01
    seed = bytes(range(32))
    np.testing.assert_array_equal(csprng_gaussian((5,), 2.0, Prg(seed)), csprng_gaussian((5,), 2.0, Prg(seed)))
    assert not np.array_equal(csprng_gaussian((5,), 1.0), csprng_gaussian((5,), 1.0))


def test_clip_update():
    v = np.array([3.0, 4.0])
    clipped, norm = clip_update(v, 1.0)
    assert norm == 5.0 and np.allclose(clipped, [0.6, 0.8])
    same, _ = clip_update(v, 10.0)
    assert same is v


def classical_rdp_epsilon(sigma_eff: float, rounds: int, delta: float) -> float:
    """Mironov 2017, Prop. 3, for the full-batch Gaussian: an upper bound any RDP accountant meets."""
    orders = np.linspace(1.01, 512, 20_000)
    return float(np.min(rounds * orders / (2 * sigma_eff**2) + np.log(1 / delta) / (orders - 1)))


def pld_epsilon(z: float, rounds: int, delta: float) -> float:
    """The tight (PLD) epsilon of the same mechanism: no sound accountant reports less.

    dp-accounting's PLD accountant reads a GaussianDpEvent's multiplier as noise / C
    and applies the replace-one sensitivity 2C itself; its RDP accountant does not,
    which is why the ledger hands RDP z / 2.  Forgetting that would put the ledger's
    epsilon below this exact value.
    """
    accountant = dp_accounting.pld.PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE)
    accountant.compose(dp_accounting.GaussianDpEvent(z), rounds)
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize("z", [2.0, 4.0])
def test_ledger_epsilon_between_tight_and_classical_bounds(z):
    delta, rounds = 1e-5, 10
    ledger = PrivacyLedger(z, population=3, delta=delta)
    for _ in range(rounds):
        ledger.record_round(3)
    # replacing one client moves the clipped sum by up to 2C: the effective multiplier is z / 2
    assert pld_epsilon(z, rounds, delta) <= ledger.epsilon <= classical_rdp_epsilon(z / 2, rounds, delta)


def test_ledger_epsilon_grows_with_rounds_and_shrinks_with_noise_and_sampling():
    def eps(z, rounds, sample, population=10):
        ledger = PrivacyLedger(z, population=population, delta=1e-5)
        for _ in range(rounds):
            ledger.record_round(sample)
        return ledger.epsilon

    assert eps(2.0, 5, 10) < eps(2.0, 10, 10)
    assert eps(4.0, 10, 10) < eps(2.0, 10, 10)
    assert eps(2.0, 10, 3) < eps(2.0, 10, 10)


CLIENTS = ("a", "b", "c", "d")


def check_dp_round_noise(aggregator) -> None:
    """The averaged update differs from the exact average of clipped updates by N(0, (zC / m)^2)."""
    clients = CLIENTS
    size = 20_000
    rng = np.random.default_rng(0)
    updates = {c: rng.normal(size=size) for c in clients}

    def trainer(client, weights, round_index):
        return LocalResult([weights[0] + updates[client]], 50, {})

    clip, z = 10.0, 1.5
    config = FedAvgConfig(rounds=1, clip_norm=clip, noise_multiplier=z, min_clients=2)
    result = FedAvg(clients, trainer, aggregator, config).run_round(0, [np.zeros(size)])
    exact = np.mean([clip_update(updates[c], clip)[0] for c in clients], axis=0)
    error = result.weights[0] - exact
    expected_std = z * clip / len(clients)
    assert abs(error.std() / expected_std - 1) < 0.03
    assert stats.kstest(error / expected_std, "norm").pvalue > 1e-6
    assert result.epsilon > 0


def test_dp_round_noise_trusted_aggregator():
    check_dp_round_noise(TrustedAggregator())


def test_dp_round_noise_secure_aggregation(secure_backend):
    check_dp_round_noise(SecureAggregator(secure_backend.make_kernels(), CLIENTS))
