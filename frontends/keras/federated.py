"""``fit_federated``: FedAvg on a compiled Keras model, with secure aggregation on a chosen backend.

Each client trains a copy of the model on its own data with the model's own
compiled optimizer, loss and metrics, on whichever Keras backend is active; the
averaging, sampling, dropouts and privacy live in ``bridge.federated``.
``privatize(model, privacy="federated", ...).fit(data_by_client)`` calls this.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
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
from frontends.keras.quiet import no_retracing_warnings


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
        self._workers: list[_Worker] = []
        self._pool_lock = threading.Lock()

    def _make_worker(self) -> _Worker:
        import keras

        clone = keras_clone(self.model)
        if not clone.optimizer.built:
            clone.optimizer.build(clone.trainable_variables)
        start = [np.array(keras.ops.convert_to_numpy(v)) for v in clone.optimizer.variables]
        return _Worker(clone, start)

    def prepare(self, workers: int) -> None:
        """Make ``workers`` model copies now, so that ``round_timeout_s`` times local training
        only, not the cloning and compiling of a client's first copy."""
        with self._pool_lock:
            while len(self._workers) < workers:
                self._workers.append(self._make_worker())

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
            with no_retracing_warnings():  # each pooled copy traces its own train step: by design
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


def keras_metric_names(model: Any) -> tuple[str, ...]:
    """The keys of ``model.fit``'s history for this compiled model ("loss" and the compiled
    metrics), sorted, without training: every party of a distributed run must know them."""
    clone = keras_clone(model)
    cm = getattr(clone, "_compile_metrics", None)
    names = ["loss"]
    if cm is not None:
        inputs = clone.inputs if getattr(clone, "inputs", None) else None
        if inputs is None:
            raise ValueError("fit_federated needs a model with a known input shape (keras.Input(...)) across processes")
        probe = [np.zeros((1, *tuple(t.shape)[1:]), dtype="float32") for t in inputs]
        y = clone(probe[0] if len(probe) == 1 else probe)
        cm.build(y, y)
        names += [m.name for m in cm.metrics]
    return tuple(sorted(names))


def keras_clone(model: Any) -> Any:
    """A copy of ``model`` compiled as ``model`` is (its optimizer, loss and metrics)."""
    import keras

    clone = keras.models.clone_model(model)
    try:
        clone.compile_from_config(model.get_compile_config())
    except Exception as exc:  # noqa: BLE001 - re-raised with what to do
        raise ValueError(
            "fit_federated copies the model for each client with model.get_compile_config(), which failed "
            f"({type(exc).__name__}: {exc}). Register custom losses, metrics or optimizers with "
            "@keras.saving.register_keras_serializable()."
        ) from exc
    return clone


def fit_federated(
    model: Any,
    backend_name: str,
    data_by_client: Mapping[str, tuple[Any, Any]],
    *,
    rounds: int | None = None,
    epochs: int | None = None,
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
    cluster: tuple[Any, str] | None = None,
) -> Any:
    """Train ``model`` by FedAvg over ``data_by_client`` = {client: (x, y)}; returns a ``keras.callbacks.History``.

    rounds: FedAvg rounds.  ``epochs`` is Keras' name for the same loop: as in
      ``model.fit(..., epochs=N)``, each History entry is one round, so ``epochs=N``
      means ``rounds=N`` (giving both with different values is an error; each client's
      own passes over its data per round are ``local_epochs``).  Neither: 1 round, as
      Keras' ``epochs`` defaults to 1.  ``history.params`` records ``rounds``,
      ``local_epochs`` and ``epochs_are: "rounds"``.

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
    cluster: (ClusterConfig, this process's party): one process per party
      (``bridge.federated.distributed``; ``privatize`` passes it under
      ``privacy-bridge party/launch``).  The clients are the cluster's data owners; a
      client's process needs only its own entry of ``data_by_client``; an aggregator
      waits the cluster's ``timeout_s`` for a share, and ``round_timeout_s`` bounds
      each client's local training (it then withdraws from the round).  The model
      owner's history is the one described here (with ``bytes_sent``, its own
      traffic, instead of the aggregators'); elsewhere each round logs ``bytes_sent``,
      and the clients end with the final global weights in ``model``.

    History per round: the clients' sample-weighted ``loss`` and compiled metrics
    (not released with DP noise on), ``val_*`` on ``validation_data`` (evaluated by
    the model owner), ``clients_used``, ``clients_dropped``, ``bytes_per_party``
    (the most any aggregator sent), ``upload_bytes`` (all clients), and ``epsilon``
    with noise on.  ``history.federated_rounds`` lists who took part and who dropped
    and why; ``history.privacy`` the DP parameters.  The final global weights are
    left in ``model`` (``history.received_weights``: False only at an aggregator's
    process, which never sees the model).
    """
    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        raise ValueError(
            "fit_federated needs a compiled model: call model.compile(optimizer=..., loss=...) first, "
            "as for model.fit. Each client trains with that optimizer and loss."
        )
    rounds = _rounds(rounds, epochs)
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
    settings = {"local_epochs": local_epochs, "batch_size": batch_size, "seed": seed}
    driver = _Driver(model, config, validation_data, batch_size, callbacks, verbose, int(local_epochs))
    if cluster is not None:
        if not secure_aggregation:
            raise BackendError(
                "secure_aggregation=False keeps a trusted aggregator in one process; with one process per party "
                "(privacy-bridge party/launch) federated training always aggregates securely. Drop "
                "secure_aggregation=False, or run embedded (without a cluster)."
            )
        return _fit_distributed(model, backend_name, data_by_client, cluster, config, settings,
                                failure_injector, driver)
    clients = _check_clients(data_by_client)
    aggregator = _aggregator(backend_name, clients, secure_aggregation, round_timeout_s)
    trainer = KerasLocalTrainer(model, data_by_client, **settings)
    trainer.prepare(clients_per_round(len(clients), config.client_fraction))
    fedavg = FedAvg(clients, trainer, aggregator, config, failure_injector)
    return driver.drive(fedavg, len(clients), fedavg.run_round)


class _Driver:
    """The model owner's loop over rounds: Keras callbacks, progress, History."""

    def __init__(self, model: Any, config: FedAvgConfig, validation_data: Any, batch_size: int,
                 callbacks: Sequence[Any] | None, verbose: str | int, local_epochs: int = 1) -> None:
        self.model, self.config = model, config
        self.validation_data, self.batch_size = validation_data, batch_size
        self.callbacks, self.verbose = callbacks, verbose
        self.local_epochs = local_epochs

    def history(self) -> tuple[Any, Any]:
        import keras

        history = keras.callbacks.History()
        # Keras' "epochs" here are FedAvg rounds; params (what every callback sees) says so.
        callback_list = keras.callbacks.CallbackList(
            [*(self.callbacks or []), history], model=self.model, epochs=self.config.rounds, verbose=0, steps=None,
            rounds=self.config.rounds, local_epochs=self.local_epochs, epochs_are="rounds",
        )
        history.federated_rounds = []
        return history, callback_list

    def drive(self, fedavg: FedAvg, num_clients: int,
              play: Callable[[int, list[np.ndarray], Callable[[str, bool], None]], RoundResult]) -> Any:
        import keras

        model, config = self.model, self.config
        history, callback_list = self.history()
        history.privacy = _privacy_summary(config, fedavg)
        show = progress_verbosity(self.verbose)
        per_round = clients_per_round(num_clients, config.client_fraction)
        model.stop_training = False
        callback_list.on_train_begin()
        weights = [np.asarray(w) for w in model.get_weights()]
        for r in range(config.rounds):
            callback_list.on_epoch_begin(r)
            bar = None
            if show:
                print(f"Round {r + 1}/{config.rounds}")
                bar = keras.utils.Progbar(per_round, verbose=show, unit_name="client")
            done = [0]

            def on_client_done(client: str, ok: bool, bar: Any = bar, done: list[int] = done) -> None:
                done[0] += 1
                if bar is not None:
                    bar.update(done[0])

            result = play(r, weights, on_client_done)
            weights = result.weights
            model.set_weights(weights)
            logs = _round_logs(result)
            if self.validation_data is not None:
                x_val, y_val = self.validation_data
                with no_retracing_warnings():
                    scores = model.evaluate(x_val, y_val, batch_size=self.batch_size, verbose=0, return_dict=True)
                logs.update({f"val_{k}": float(v) for k, v in scores.items()})
            history.federated_rounds.append(_round_report(result))
            if bar is not None:
                shown = {k: v for k, v in logs.items() if k not in COUNTERS}
                bar.update(per_round, values=list(shown.items()), finalize=True)
                counters = counter_line(logs)
                if counters:
                    print(f"  {counters}")
                for client, why in result.dropped.items():
                    print(f"  dropped {client}: {why}")
            callback_list.on_epoch_end(r, logs)
            if model.stop_training:
                break
        callback_list.on_train_end()
        if fedavg.ledger is not None:
            history.privacy["epsilon"] = fedavg.ledger.epsilon
        history.received_weights = True
        return history


def _fit_distributed(
    model: Any,
    backend_name: str,
    data_by_client: Mapping[str, tuple[Any, Any]],
    cluster: tuple[Any, str],
    config: FedAvgConfig,
    settings: dict[str, Any],
    failure_injector: FailureInjector | None,
    driver: _Driver,
) -> Any:
    """This process's party of FedAvg (``bridge.federated.distributed``)."""
    from bridge.federated.distributed import DistributedFedAvg, FederatedCluster, federated_runner
    from bridge.ir import Numerics

    cluster_config, party = cluster
    parts = FederatedCluster.from_cluster(cluster_config)
    if not isinstance(data_by_client, Mapping):
        raise TypeError(f"federated training takes data_by_client = {{client_name: (x, y)}}, received "
                        f"{type(data_by_client).__name__}")
    strangers = sorted(set(data_by_client) - set(parts.clients))
    if strangers:
        raise ValueError(f"data_by_client names {strangers}, which are not data_owner parties of the cluster "
                         f"(its clients are {list(parts.clients)})")
    local: dict[str, tuple[Any, Any]] = {}
    if party in parts.clients:
        if party not in data_by_client:
            raise ValueError(f"this process is client {party!r}, but data_by_client has no entry for it; "
                             f"pass {{{party!r}: (x, y)}}")
        local = {party: data_by_client[party]}
        _check_clients(local)
    backend = _secure_backend(backend_name)
    trainer = KerasLocalTrainer(model, local, **settings)
    if local:
        trainer.prepare(1)  # this client's copy, before round_timeout_s starts counting
    fedavg = FedAvg(parts.clients, trainer, None, config, failure_injector)
    runner = federated_runner(backend, cluster_config, party, Numerics())
    metric_names = () if config.differentially_private else keras_metric_names(model)
    federated = DistributedFedAvg(fedavg, runner, parts, metric_names)
    if not federated.is_owner:
        return _follow(model, federated, driver, fedavg)
    try:
        history = driver.drive(fedavg, len(parts.clients), lambda r, w, _done: federated.run_round(r, w))
        federated.finish(len(history.federated_rounds), [np.asarray(w) for w in model.get_weights()])
    except BaseException as exc:
        runner.transport.abort(f"{type(exc).__name__}: {exc}")  # nobody waits for a failed owner
        raise
    return history


def _follow(model: Any, federated: Any, driver: _Driver, fedavg: FedAvg) -> Any:
    """A client's or an aggregator's loop: play each round until the owner says stop."""
    history, callback_list = driver.history()
    history.privacy = _privacy_summary(driver.config, fedavg)
    show = progress_verbosity(driver.verbose)
    party = federated.party
    weights = [np.asarray(w) for w in model.get_weights()]
    callback_list.on_train_begin()
    r = 0
    while True:
        followed = federated.follow_round(r, weights)
        if followed.stopped:
            history.received_weights = followed.final is not None
            if followed.final is not None:
                model.set_weights(followed.final)
            break
        logs = {"bytes_sent": float(followed.stats.total_bytes(party))}
        history.federated_rounds.append({"round": r + 1, "party": party, "withdrew": followed.withdrew,
                                         "bytes_sent": int(logs["bytes_sent"])})
        if show:
            print(f"Round {r + 1}: {party} sent {int(logs['bytes_sent'])} bytes"
                  + (f"; withdrew: {followed.withdrew}" if followed.withdrew else ""))
        callback_list.on_epoch_begin(r)
        callback_list.on_epoch_end(r, logs)
        r += 1
    callback_list.on_train_end()
    return history


def _secure_backend(backend_name: str) -> Any:
    from bridge.mpc.backend import SecureBackend
    from bridge.registry import get_backend

    backend = get_backend(backend_name)
    if not isinstance(backend, SecureBackend):
        raise BackendError(
            f"secure aggregation needs a backend with ring kernels (torch-spdz, tf-pond); backend "
            f"{backend_name!r} has none. Pick a secure backend, or pass secure_aggregation=False for a "
            "trusted aggregator that sees every update."
        )
    return backend


def _aggregator(
    backend_name: str, clients: Sequence[str], secure: bool, round_timeout_s: float | None
) -> SecureAggregator | TrustedAggregator:
    if not secure:
        return TrustedAggregator()
    backend = _secure_backend(backend_name)
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


#: History keys that count things (clients, bytes): shown as integers, not as Progbar's averaged floats
COUNTERS = ("clients_used", "clients_dropped", "bytes_per_party", "upload_bytes", "bytes_sent")


def counter_line(logs: Mapping[str, float]) -> str:
    """The round's integer counters, as Keras prints metrics ("clients_used: 3 - clients_dropped: 0")."""
    return " - ".join(f"{k}: {int(logs[k]):d}" for k in COUNTERS if k in logs)


def _rounds(rounds: int | None, epochs: int | None) -> int:
    """FedAvg rounds from ``rounds=`` and Keras' ``epochs=`` (the same loop, see ``fit_federated``)."""
    if rounds is not None and epochs is not None and int(rounds) != int(epochs):
        raise ValueError(
            f"fit(epochs={epochs}) asks for {epochs} federated rounds, but the model was privatized with "
            f"rounds={rounds}. In federated mode each epoch of the History is one FedAvg round; pass one of "
            "them (each client's passes over its own data per round are local_epochs=)."
        )
    chosen = rounds if rounds is not None else epochs if epochs is not None else 1
    if isinstance(chosen, bool) or not isinstance(chosen, (int, np.integer)) or chosen < 1:
        raise ValueError(f"rounds (epochs) must be a positive integer, received {chosen!r}")
    return int(chosen)


def _round_logs(result: RoundResult) -> dict[str, float]:
    logs = {k: float(v) for k, v in result.metrics.items()}
    logs["clients_used"] = float(len(result.included))
    logs["clients_dropped"] = float(len(result.dropped))
    aggregate = result.aggregate
    if aggregate.bytes_per_aggregator is not None:
        logs["bytes_per_party"] = float(aggregate.bytes_per_aggregator)
    if aggregate.upload_bytes is not None:
        logs["upload_bytes"] = float(aggregate.upload_bytes)
    if aggregate.party_bytes is not None:
        logs["bytes_sent"] = float(aggregate.party_bytes)
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
