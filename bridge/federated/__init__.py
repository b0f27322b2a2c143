"""Federated learning: FedAvg with secure aggregation, dropouts and optional differential privacy.

Modules, each with one job:
  fedavg      rounds, public client sampling, local training with failures and timeouts, averaging
  aggregate   the aggregator interface and the trusted (non-secure) aggregator
  secure_sum  secure aggregation: clients secret-share updates to two aggregators over ring kernels
  distributed one process per party: the owner broadcasts, clients train and share, aggregators sum
  dp          clipping, CSPRNG Gaussian noise, (epsilon, delta) from dp-accounting
  splits      IID and label-skewed client splits (load_digits)
Its benchmark (federated wall time vs the same local training alone) is bridge.bench.federated.
"""

from bridge.federated.aggregate import Aggregate, Aggregator, NoiseSpec, TooFewClientsError, TrustedAggregator
from bridge.federated.fedavg import FedAvg, FedAvgConfig, LocalResult, LocalTrainer, RoundResult, sample_clients
from bridge.federated.secure_sum import SecureAggregator

__all__ = [
    "Aggregate",
    "Aggregator",
    "FedAvg",
    "FedAvgConfig",
    "LocalResult",
    "LocalTrainer",
    "NoiseSpec",
    "RoundResult",
    "SecureAggregator",
    "TooFewClientsError",
    "TrustedAggregator",
    "sample_clients",
]
