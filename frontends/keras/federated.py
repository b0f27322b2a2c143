"""``fit_federated``: FedAvg on a compiled Keras model, with secure aggregation on a chosen backend.

Each client trains a copy of the model on its own data with the model's own
compiled optimizer, loss and metrics, on whichever Keras backend is active; the
averaging, sampling, dropouts and privacy live in ``bridge.federated``.
``privatize(model, privacy="federated", ...).fit(data_by_client)`` calls this.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bridge.backend import BackendError
from bridge.federated import (
    FedAvg,
    FedAvgConfig,
    LocalResult,
    RoundResult,
    SecureAggregator,
    TrustedAggregator,
)
from bridge.federated.aggregate import FailureInjector
from bridge.federated.fedavg import clients_per_round
from frontends.keras.privatize import progress_verbosity


@dataclass
class _Worker:
    """A compiled copy of the model that trains one client at a time."""

    model: Any
    optimizer_start: list[np.ndarray]
    lock: threading.Lock = field(default_factory=threading.Lock)


class KerasLocalTrainer:
    """Local training at a client: ``fit`` of a model copy from the global weights, fresh optimizer state.

    Every local run starts the optimizer from its initial state (as TFF's client
    optimizers do), so Adam moments or momentum never leak between clients or rounds.
    The E local epochs are one ``fit`` call over E permutations of the client's data
    placed end to end (a batch may straddle two epochs), drawn from a NumPy
    ``Generator`` seeded with (seed, round, client): runs are reproducible, and one
    call instead of E saves Keras' per-call setup.  The metrics are the run's averages.
    Copies are pooled: one is made per concurrently training client (a client
    abandoned after a timeout keeps its copy until it finishes).
    """

    def __init__(
        self,
        model: Any,
        data_by_client: Mapping[str, tuple[Any, Any]],
        *,
        local_epochs: int = 1,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.data = dict(data_by_client)
        self.local_epochs = int(local_epochs)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._compile_config = model.get_compile_config()
        self._workers: list[_Worker] = []
        self._pool_lock = threading.Lock()

    def _make_worker(self) -> _Worker:
        import keras

        clone = keras.models.clone_model(self.model)
        try:
            clone.compile_from_config(self._compile_config)
        except Exception as exc:  # noqa: BLE001 - re-raised with what to do
            raise ValueError(
                "fit_federated copies the model for each client with model.get_compile_config(), which failed "
                f"({type(exc).__name__}: {exc}). Register custom losses, metrics or optimizers with "
                "@keras.saving.register_keras_serializable()."
            ) from exc
        if not clone.optimizer.built:
            clone.optimizer.build(clone.trainable_variables)
        start = [np.array(keras.ops.convert_to_numpy(v)) for v in clone.optimizer.variables]
        return _Worker(clone, start)

    def _acquire(self) -> _Worker:
        with self._pool_lock:
            for worker in self._workers:
                if worker.lock.acquire(blocking=False):
                    return worker
            worker = self._make_worker()
            worker.lock.acquire()
            self._workers.append(worker)
            return worker

    def __call__(self, client: str, weights: Sequence[np.ndarray], round_index: int) -> LocalResult:
        import keras

        x, y = self.data[client]
        n = _num_samples(y)
        worker = self._acquire()
        try:
            model = worker.model
            model.set_weights(list(weights))
            for variable, value in zip(model.optimizer.variables, worker.optimizer_start, strict=True):
                variable.assign(value)
            rng = np.random.default_rng([self.seed, round_index, zlib.crc32(client.encode())])
            order = np.concatenate([rng.permutation(n) for _ in range(self.local_epochs)])
            history = model.fit(
                keras.tree.map_structure(lambda a: np.asarray(a)[order], x),
                np.asarray(y)[order],
                batch_size=self.batch_size,
                epochs=1,
                shuffle=False,
                verbose=0,
            )
            logs = history.history
            metrics = {name: float(values[-1]) for name, values in logs.items()}
            return LocalResult([np.asarray(w) for w in model.get_weights()], n, metrics)
        finally:
            worker.lock.release()


def fit_federated(
    model: Any,
    backend_name: str,
    data_by_client: Mapping[str, tuple[Any, Any]],
    *,
    rounds: int,
    local_epochs: int = 1,
    secure_aggregation: bool = True,
    client_fraction: float = 1.0,
    min_clients: int = 2,
    clip_norm: float | None = None,
    noise_multiplier: float = 0.0,
    delta: float = 1e-5,
    batch_size: int = 32,
    validation_data: tuple[Any, Any] | None = None,
    callbacks: Sequence[Any] | None = None,
    verbose: str | int = "auto",
    seed: int = 0,
    round_timeout_s: float | None = None,
    failure_injector: FailureInjector | None = None,
) -> Any:
    """Train ``model`` by FedAvg over ``data_by_client`` = {client: (x, y)}; returns a ``keras.callbacks.History``.

    secure_aggregation: True (default) secret-shares each client's update to the two
      compute parties of backend ``backend_name``, which add shares with its kernels;
      only the sum reaches the model owner.  False uses a *trusted aggregator that
      sees every client's update in the clear*.
    client_fraction, min_clients: each round samples ceil(fraction * clients); a round
      in which fewer than ``min_clients`` updates survive raises ``TooFewClientsError``.
    clip_norm, noise_multiplier, delta: DP-FedAvg (``bridge.federated.dp``); the
      (epsilon, delta) spent is reported per round by dp-accounting's RDP accountant.
    round_timeout_s: a client whose local training takes longer is dropped from the
      round (also the aggregators' wait for a client's share; 30 s if None).
    failure_injector: ``f(round_index, client, phase)`` for tests: raising drops the
      client at "train" or "mid_share" (see ``bridge.federated.aggregate``).

    History per round: the clients' sample-weighted ``loss`` and compiled metrics
    (not released with DP noise on), ``val_*`` on ``validation_data`` (evaluated by
    the model owner), ``clients_used``, ``clients_dropped``, ``bytes_per_party``
    (the most any aggregator sent), ``upload_bytes`` (all clients), and ``epsilon``
    with noise on.  ``history.federated_rounds`` lists who took part and who dropped
    and why; ``history.privacy`` the DP parameters.  The final global weights are
    left in ``model``.
    """
    import keras

    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        raise ValueError(
            "fit_federated needs a compiled model: call model.compile(optimizer=..., loss=...) first, "
            "as for model.fit. Each client trains with that optimizer and loss."
        )
    clients = _check_clients(data_by_client)
    config = FedAvgConfig(
        rounds=rounds,
        client_fraction=client_fraction,
        min_clients=min_clients,
        clip_norm=clip_norm,
        noise_multiplier=noise_multiplier,
        delta=delta,
        round_timeout_s=round_timeout_s,
        seed=seed,
    )
    if int(local_epochs) < 1:
        raise ValueError(f"local_epochs must be at least 1, received {local_epochs}")
    aggregator = _aggregator(backend_name, clients, secure_aggregation, round_timeout_s)
    trainer = KerasLocalTrainer(model, data_by_client, local_epochs=local_epochs, batch_size=batch_size, seed=seed)
    fedavg = FedAvg(clients, trainer, aggregator, config, failure_injector)

    history = keras.callbacks.History()
    callback_list = keras.callbacks.CallbackList(
        [*(callbacks or []), history], model=model, epochs=rounds, verbose=0, steps=None
    )
    history.federated_rounds = []
    history.privacy = _privacy_summary(config, fedavg)
    show = progress_verbosity(verbose)
    per_round = clients_per_round(len(clients), client_fraction)

    model.stop_training = False
    callback_list.on_train_begin()
    weights = [np.asarray(w) for w in model.get_weights()]
    for r in range(rounds):
        callback_list.on_epoch_begin(r)
        bar = None
        if show:
            print(f"Round {r + 1}/{rounds}")
            bar = keras.utils.Progbar(per_round, verbose=show, unit_name="client")
        done = [0]

        def on_client_done(client: str, ok: bool, bar: Any = bar, done: list[int] = done) -> None:
            done[0] += 1
            if bar is not None:
                bar.update(done[0])

        result = fedavg.run_round(r, weights, on_client_done)
        weights = result.weights
        model.set_weights(weights)
        logs = _round_logs(result)
        if validation_data is not None:
            x_val, y_val = validation_data
            scores = model.evaluate(x_val, y_val, batch_size=batch_size, verbose=0, return_dict=True)
            logs.update({f"val_{k}": float(v) for k, v in scores.items()})
        history.federated_rounds.append(_round_report(result))
        if bar is not None:
            bar.update(per_round, values=list(logs.items()), finalize=True)
            for client, why in result.dropped.items():
                print(f"  dropped {client}: {why}")
        callback_list.on_epoch_end(r, logs)
        if model.stop_training:
            break
    callback_list.on_train_end()
    if fedavg.ledger is not None:
        history.privacy["epsilon"] = fedavg.ledger.epsilon
    return history


def _aggregator(
    backend_name: str, clients: Sequence[str], secure: bool, round_timeout_s: float | None
) -> SecureAggregator | TrustedAggregator:
    if not secure:
        return TrustedAggregator()
    from bridge.mpc.backend import SecureBackend
    from bridge.registry import get_backend

    backend = get_backend(backend_name)
    if not isinstance(backend, SecureBackend):
        raise BackendError(
            f"secure aggregation needs a backend with ring kernels (torch-spdz, tf-pond); backend "
            f"{backend_name!r} has none. Pick a secure backend, or pass secure_aggregation=False for a "
            "trusted aggregator that sees every update."
        )
    share_timeout = round_timeout_s if round_timeout_s is not None else 30.0
    return SecureAggregator(backend.make_kernels(), clients, share_timeout_s=share_timeout)


def _check_clients(data_by_client: Mapping[str, tuple[Any, Any]]) -> list[str]:
    if not isinstance(data_by_client, Mapping) or not data_by_client:
        raise TypeError(
            "federated training takes data_by_client = {client_name: (x, y), ...} with at least one client, "
            f"received {type(data_by_client).__name__}"
        )
    for name, pair in data_by_client.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"client names must be non-empty strings, received {name!r}")
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"client {name!r}: expected its data as (x, y), received {type(pair).__name__}")
        x, y = pair
        n = _num_samples(y)
        first = np.shape(_first_leaf(x))[0] if n else 0
        if n == 0 or first != n:
            raise ValueError(f"client {name!r}: x has {first} samples and y has {n}; both must be equal and non-zero")
    return list(data_by_client)


def _first_leaf(x: Any) -> Any:
    import keras

    return keras.tree.flatten(x)[0]


def _num_samples(y: Any) -> int:
    return int(np.shape(y)[0]) if np.ndim(y) else 0


def _round_logs(result: RoundResult) -> dict[str, float]:
    logs = {k: float(v) for k, v in result.metrics.items()}
    logs["clients_used"] = float(len(result.included))
    logs["clients_dropped"] = float(len(result.dropped))
    logs["bytes_per_party"] = float(result.aggregate.bytes_per_aggregator)
    logs["upload_bytes"] = float(result.aggregate.upload_bytes)
    if result.epsilon is not None:
        logs["epsilon"] = float(result.epsilon)
    return logs


def _round_report(result: RoundResult) -> dict[str, Any]:
    return {
        "round": result.round_index + 1,
        "sampled": list(result.sampled),
        "included": list(result.included),
        "dropped": dict(result.dropped),
        "bytes_per_aggregator": result.aggregate.bytes_per_aggregator,
        "aggregation_rounds": result.aggregate.rounds,
        "upload_bytes": result.aggregate.upload_bytes,
        "epsilon": result.epsilon,
        "wall_s": result.wall_s,
    }


def _privacy_summary(config: FedAvgConfig, fedavg: FedAvg) -> dict[str, Any]:
    if fedavg.ledger is None:
        return {"epsilon": None, "delta": None, "clip_norm": config.clip_norm, "noise_multiplier": 0.0}
    return {
        "epsilon": 0.0,
        "delta": config.delta,
        "clip_norm": config.clip_norm,
        "noise_multiplier": config.noise_multiplier,
        "accountant": fedavg.ledger.accountant_name,
    }
