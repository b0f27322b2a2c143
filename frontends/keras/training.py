"""Encrypted training with Keras' ``fit`` semantics.

``training_spec(model, ...)`` reads what ``model.compile()`` said into the IR's
``TrainingSpec`` and refuses anything it cannot honour, saying what is supported:

  loss       "mse" / MeanSquaredError; "binary_crossentropy" on a sigmoid output;
             "categorical_crossentropy" / "sparse_categorical_crossentropy" on a softmax
             output; the loss objects with ``from_logits=True`` on a linear output.
             No label smoothing, no other reduction than the default.
  optimizer  keras.optimizers.SGD(learning_rate, momentum), Adam(learning_rate, beta_1,
             beta_2, epsilon) and RMSprop(learning_rate, rho, momentum, epsilon,
             centered), Keras' own classes: no nesterov, amsgrad, weight decay,
             gradient clipping, EMA, loss scaling, gradient accumulation or
             learning-rate schedules; no other optimizer.  Adam and RMSprop run
             ``bridge.mpc.optimizers`` (their approximation and its error are there).
  metrics    "accuracy" (or "acc", "categorical_accuracy", "sparse_categorical_accuracy",
             "binary_accuracy") for classification losses; none other.

``fit_encrypted(model, backend, data, ...)`` trains: the model owner shares the
initial weights, each data owner in ``data`` shares its own ``(x, y)`` (labels and
sample weights stay secret), batches run in the order ``model.fit`` would draw
(``fit_data.keras_batch_order``; public to the compute parties), and the
trained weights are written back into ``model``, or, with ``keep_shared=True``,
stay secret-shared on the backend: the returned History's ``serving`` attribute is
then an encrypted-serving Executable over them, and ``model`` is left unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bridge.backend import Backend, BackendError, TrainingExecutable
from bridge.ir import (
    AdamSpec,
    Loss,
    Numerics,
    Party,
    Placement,
    PrivacyMode,
    Program,
    RMSpropSpec,
    Role,
    SGDSpec,
    TrainingSpec,
)
from bridge.reference_train import TrainingRefused, batch_schedule, refuse_untrainable
from frontends.keras.fit_data import (
    complete_weights,
    keras_batch_order,
    keras_seed_is_set,
    model_input_names,
    owned_data,
    split_validation,
    with_class_weight,
)

SUPPORTED_LOSSES = (
    "'mse', 'binary_crossentropy' (sigmoid output), 'categorical_crossentropy' or "
    "'sparse_categorical_crossentropy' (softmax output), or their Loss objects with from_logits=True"
)
SUPPORTED_OPTIMIZER = (
    "keras.optimizers.SGD(learning_rate=<float>, momentum=<float in [0, 1)>), "
    "keras.optimizers.Adam(learning_rate=<float>, beta_1, beta_2, epsilon) or "
    "keras.optimizers.RMSprop(learning_rate=<float>, rho, momentum, epsilon, centered)"
)
ACCURACY_METRICS = ("accuracy", "acc", "categorical_accuracy", "sparse_categorical_accuracy", "binary_accuracy")

_LOSS_NAMES = {
    "mse": Loss.MSE,
    "mean_squared_error": Loss.MSE,
    "meansquarederror": Loss.MSE,
    "binary_crossentropy": Loss.BINARY_CROSSENTROPY,
    "binarycrossentropy": Loss.BINARY_CROSSENTROPY,
    "categorical_crossentropy": Loss.CATEGORICAL_CROSSENTROPY,
    "categoricalcrossentropy": Loss.CATEGORICAL_CROSSENTROPY,
    "sparse_categorical_crossentropy": Loss.SPARSE_CATEGORICAL_CROSSENTROPY,
    "sparsecategoricalcrossentropy": Loss.SPARSE_CATEGORICAL_CROSSENTROPY,
}
#: optimizer config entries and the only values encrypted training honours
_COMMON_DEFAULTS: dict[str, Any] = {
    "weight_decay": None,
    "clipnorm": None,
    "clipvalue": None,
    "global_clipnorm": None,
    "use_ema": False,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
}
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {"sgd": {"nesterov": False}, "adam": {"amsgrad": False}, "rmsprop": {}}


# -- compile() -> TrainingSpec ------------------------------------------------------------------

def _loss(model: Any) -> tuple[Loss, bool]:
    loss = getattr(model, "loss", None)
    if loss is None:
        raise TrainingRefused(f"the model is not compiled with a loss; call model.compile(loss=..., optimizer=...) with {SUPPORTED_LOSSES}")
    if isinstance(loss, (list, tuple, dict)):
        raise TrainingRefused(f"encrypted training takes one loss for one output; received {loss!r}")
    if isinstance(loss, str):
        name, config = loss, {}
    elif hasattr(loss, "get_config"):
        name, config = type(loss).__name__, dict(loss.get_config())
    else:
        name, config = getattr(loss, "__name__", repr(loss)), {}
    kind = _LOSS_NAMES.get(name.lower())
    if kind is None:
        raise TrainingRefused(f"loss {name!r} is not supported by encrypted training; use {SUPPORTED_LOSSES}")
    if config.get("label_smoothing"):
        raise TrainingRefused(f"loss {name} has label_smoothing={config['label_smoothing']}; use label_smoothing=0")
    if config.get("ignore_class") is not None:
        raise TrainingRefused(f"loss {name} has ignore_class={config['ignore_class']}; use ignore_class=None")
    if config.get("axis", -1) != -1:
        raise TrainingRefused(f"loss {name} has axis={config['axis']}; only axis=-1 is supported")
    if config.get("reduction", "sum_over_batch_size") != "sum_over_batch_size":
        raise TrainingRefused(
            f"loss {name} has reduction={config['reduction']!r}; only 'sum_over_batch_size' (the default) is supported"
        )
    return kind, bool(config.get("from_logits", False))


def _keras_optimizer_kind(opt: Any) -> str | None:
    """"sgd", "adam" or "rmsprop" for Keras' own optimizer classes: ``keras.optimizers.X`` or
    the active backend's X (with the torch backend a subclass such as
    ``keras.src.backend.torch.optimizers.torch_sgd.SGD``); never a user subclass, whose
    update may differ from the one computed under encryption."""
    import keras

    cls = type(opt)
    if not cls.__module__.startswith("keras."):
        return None
    for kind, base in (("sgd", keras.optimizers.SGD), ("adam", keras.optimizers.Adam),
                       ("rmsprop", keras.optimizers.RMSprop)):
        if isinstance(opt, base) and cls.__name__ == base.__name__:
            return kind
    return None


def _optimizer(model: Any) -> SGDSpec | AdamSpec | RMSpropSpec:
    opt = getattr(model, "optimizer", None)
    if opt is None:
        raise TrainingRefused(f"the model is not compiled with an optimizer; use {SUPPORTED_OPTIMIZER}")
    kind = _keras_optimizer_kind(opt)
    if kind is None:
        raise TrainingRefused(
            f"optimizer {type(opt).__name__} is not supported by encrypted training (only Keras' own SGD, "
            f"Adam and RMSprop have a secure update here); use {SUPPORTED_OPTIMIZER}"
        )
    name = type(opt).__name__
    config = opt.get_config()
    unsupported = dict(_COMMON_DEFAULTS, **_KIND_DEFAULTS[kind])
    for key, default in unsupported.items():
        if config.get(key, default) not in (default, 0.0 if default is None else default):
            raise TrainingRefused(
                f"{name} option {key}={config[key]!r} is not supported by encrypted training; use "
                f"{SUPPORTED_OPTIMIZER} with {key}={default!r}"
            )
    rate = config.get("learning_rate")
    if not isinstance(rate, (int, float)):
        raise TrainingRefused(
            f"{name} learning_rate must be a constant float, received a schedule ({rate!r}); use {SUPPORTED_OPTIMIZER}"
        )
    if kind == "adam":
        return AdamSpec(learning_rate=float(rate), beta_1=float(config["beta_1"]), beta_2=float(config["beta_2"]),
                        epsilon=float(config["epsilon"]))
    if kind == "rmsprop":
        return RMSpropSpec(learning_rate=float(rate), rho=float(config["rho"]), momentum=float(config["momentum"]),
                           epsilon=float(config["epsilon"]), centered=bool(config["centered"]))
    return SGDSpec(learning_rate=float(rate), momentum=float(config.get("momentum", 0.0)))


def compiled_metrics(model: Any, loss: Loss) -> tuple[str, ...]:
    """The accuracy metric names requested in ``compile(metrics=...)``; refuse any other."""
    try:
        requested = model.get_compile_config().get("metrics") or []
    except (AttributeError, TypeError):
        requested = []
    names = []
    for metric in requested if isinstance(requested, (list, tuple)) else [requested]:
        name = metric if isinstance(metric, str) else (metric or {}).get("config", {}).get("name", repr(metric))
        if name not in ACCURACY_METRICS:
            raise TrainingRefused(
                f"metric {name!r} is not computed under encryption; encrypted training reports the loss and "
                f"{list(ACCURACY_METRICS)}. Compile without it (evaluate the trained model in the clear instead)."
            )
        if loss == Loss.MSE:
            raise TrainingRefused(f"metric {name!r} needs a classification loss; the model is compiled with 'mse'")
        names.append(name)
    return tuple(names)


def training_spec(model: Any, *, epochs: int = 1, batch_size: int = 32, shuffle: bool = True) -> TrainingSpec:
    """``model.compile()``'s loss and optimizer, and ``fit``'s loop settings, as IR."""
    loss, from_logits = _loss(model)
    return TrainingSpec(
        loss=loss, from_logits=from_logits, optimizer=_optimizer(model),
        epochs=epochs, batch_size=batch_size, shuffle=shuffle,
    )


# -- placement ---------------------------------------------------------------------------------

def training_placement(
    program: Program,
    data_owners: list[str],
    parties: Placement | Mapping[str, Any] | None = None,
) -> Placement:
    """Model owner, the data owners, two compute parties and a dealer.

    ``parties`` is a Placement (used as is: it must list the data owners) or keyword
    settings ``model_owner``, ``compute`` (two names), ``dealer``.  The first data
    owner is recorded as the input owner and output receiver, which is who a
    model kept shared (``keep_shared=True``) serves by default.
    """
    if isinstance(parties, Placement):
        missing = sorted(set(data_owners) - set(parties.names))
        if missing:
            raise ValueError(f"data owners {missing} are not parties of the given placement {list(parties.names)}")
        return parties
    settings = dict(parties or {})
    settings.pop("data_owner", None)
    unknown = sorted(set(settings) - {"model_owner", "compute", "dealer"})
    if unknown:
        raise TypeError(f"unknown placement settings {unknown}; use model_owner, compute, dealer (or pass a Placement)")
    model_owner = settings.get("model_owner", "model_owner")
    compute = tuple(settings.get("compute", ("server0", "server1")))
    dealer = settings.get("dealer", "dealer")
    names = [model_owner, *data_owners, *compute, dealer]
    if len(set(names)) != len(names):
        raise ValueError(f"party names must be distinct, received {names}")
    roles = {model_owner: {Role.MODEL_OWNER}, dealer: {Role.DEALER}}
    roles.update({c: {Role.COMPUTE} for c in compute})
    roles.update({d: {Role.DATA_OWNER, Role.CLIENT} for d in data_owners})
    first = data_owners[0]
    return Placement(
        parties=tuple(Party(name=n, roles=frozenset(roles[n])) for n in names),
        input_owners={v: first for v in program.graph.inputs},
        param_owner=model_owner,
        output_receivers={v: (first,) for v in program.graph.outputs},
    )


def cluster_training_placement(program: Program, data_owners: list[str], cluster: Any) -> Placement:
    """The placement of a cluster's parties (``bridge.cluster.ClusterConfig``), with their roles:
    its one ``model_owner`` owns the weights, the first data owner the inputs and outputs."""
    owners_in_cluster = set(cluster.with_role(Role.DATA_OWNER))
    strangers = [d for d in data_owners if d not in owners_in_cluster]
    if strangers:
        raise ValueError(
            f"data owners {strangers} are not data_owner parties of the cluster (it has "
            f"{sorted(owners_in_cluster)}); name the data by the cluster's data owners, e.g. {{name: (x, y)}}"
        )
    model_owners = cluster.with_role(Role.MODEL_OWNER)
    if len(model_owners) != 1:
        raise ValueError(f"encrypted training needs exactly one model_owner in the cluster; it has {list(model_owners)}")
    first = data_owners[0]
    return Placement(
        parties=tuple(Party(name=p.name, roles=p.roles) for p in cluster.parties),
        input_owners={v: first for v in program.graph.inputs},
        param_owner=model_owners[0],
        output_receivers={v: (first,) for v in program.graph.outputs},
    )


# -- fit ------------------------------------------------------------------------------------------

def check_trainable(model: Any, numerics: Numerics | None = None) -> None:
    """Refuse, when ``privatize(..., privacy="encrypted_training")`` is called (before any party
    starts or anything is shared), a model with a layer encrypted training cannot run: the
    error names the layer and says why (a serving-only op, a trainable BatchNormalization).
    Layers the importer refuses are refused here too, by name."""
    from frontends.keras.importer import to_ir

    program, _ = to_ir(model, numerics=numerics, privacy=PrivacyMode.ENCRYPTED_TRAINING)
    refuse_untrainable(program.graph)


def _mean(results: list[Any], key: str | None) -> float:
    total = sum(r.count for r in results)
    return sum((r.loss if key is None else r.metrics[key]) * r.count for r in results) / total


def fit_encrypted(
    model: Any,
    backend: Backend,
    data: Any,
    *,
    epochs: int = 1,
    batch_size: int | None = None,
    validation_data: Any = None,
    validation_split: float = 0.0,
    callbacks: list[Any] | None = None,
    verbose: str | int = "auto",
    shuffle: bool | str = True,
    class_weight: Mapping[int, float] | None = None,
    sample_weight: Any = None,
    seed: int | None = None,
    keep_shared: bool = False,
    parties: Placement | Mapping[str, Any] | None = None,
    check_overflow: bool = True,
    overflow_bound: float | None = None,
    numerics: Numerics | None = None,
    timeout_s: float | None = None,
    device: str | None = None,
    cluster: tuple[Any, str] | None = None,
    **unsupported: Any,
) -> Any:
    """Train ``model`` on ``backend`` like ``model.fit``; returns a ``keras.callbacks.History``.

    data: {data_owner: (x, y)} or {data_owner: (x, y, sample_weight)}, or one (x, y) pair
      (a single local data owner).  x is an array, or for a model with several inputs a
      list of arrays (``model.inputs`` order) or a dict keyed by input name.
    validation_data: (x, y[, w]) or {owner: (x, y[, w])}; shared by its owner (the first data
      owner for a plain tuple) and evaluated after each epoch: val_loss, val_<metric>.
    validation_split: as Keras, the last fraction of the rows (owners in order, before
      shuffling) is held out, each row staying with its owner; ignored with validation_data.
    class_weight, sample_weight: as Keras: the training loss is sum(w_i loss_i) / batch size
      and its gradient is weighted alike; metrics stay unweighted.  Each owner turns
      class_weight into weights from its own labels before sharing; weights stay secret.
    shuffle: Keras' batch order: ``model.fit``'s own epoch iterator draws it, so
      ``keras.utils.set_random_seed(n)`` before fit gives the order ``model.fit`` would use
      after the same call.  The order is public to the compute parties and the dealer.
      ``seed=<int>`` instead uses ``bridge.reference_train.batch_schedule`` (not Keras').
    keep_shared: leave the trained weights secret-shared; ``history.serving`` is an
      encrypted-serving Executable over them and ``model``'s weights are not touched.
    parties: a Placement, or {"model_owner", "compute", "dealer"} names.
    check_overflow, overflow_bound: the fixed-point overflow check of
      ``bridge.mpc.training`` (on by default).
    cluster: (ClusterConfig, this process's party) to run only that party here
      (``privacy-bridge party/launch`` set it through ``privatize``).  Every process
      passes data of the same shapes; only each owner's own values are used, so the
      other processes may pass zeros.  Every process must draw the same batch order:
      call ``keras.utils.set_random_seed(n)`` (the same n) in the script, pass seed=, or
      shuffle=False.  Only the model owner's process sees the loss and metrics (NaN
      elsewhere) and gets the trained weights written into ``model``
      (``history.received_weights``).
    """
    import keras

    from frontends.keras.importer import to_ir

    if unsupported:
        raise TypeError(
            f"fit arguments {sorted(unsupported)} are not supported by encrypted training; it takes epochs, "
            "batch_size, validation_data, validation_split, callbacks, verbose, shuffle, class_weight, "
            "sample_weight, seed, keep_shared, parties, check_overflow, overflow_bound, numerics, timeout_s, device"
        )
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, received {epochs}")
    if shuffle not in (True, False, "batch"):
        raise ValueError(f"shuffle must be True, False or 'batch' (as in Keras' fit), received {shuffle!r}")
    if seed is not None and shuffle == "batch":
        raise ValueError("shuffle='batch' follows Keras' own order; drop seed= to use it")
    batch_size = batch_size or 32
    spec = training_spec(model, epochs=max(epochs, 1), batch_size=batch_size, shuffle=bool(shuffle))
    metrics = compiled_metrics(model, spec.loss)
    config, party = cluster if cluster is not None else (None, None)
    default_owner = "data_owner"
    if isinstance(parties, Mapping) and parties.get("data_owner"):
        default_owner = str(parties["data_owner"])
    elif config is not None and not parties:
        cluster_owners = config.with_role(Role.DATA_OWNER)
        default_owner = cluster_owners[0] if len(cluster_owners) == 1 else default_owner
    program, weights = to_ir(model, numerics=numerics, privacy=PrivacyMode.ENCRYPTED_TRAINING)
    program = program.model_copy(update={"training": spec})
    names = model_input_names(model, program)
    owned = owned_data(data, "data", names, default_owner, sample_weight)
    val = None
    if validation_data is not None:
        val = owned_data(validation_data, "validation_data", names, next(iter(owned)))
    elif validation_split:
        owned, val = split_validation(owned, validation_split)
    owned = complete_weights(with_class_weight(owned, class_weight))
    val = complete_weights(val) if val else None
    owners = list(dict.fromkeys([*owned, *(val or {})]))
    if config is not None and not parties:
        placement = cluster_training_placement(program, owners, config)
    else:
        placement = training_placement(program, owners, parties)
    program = program.model_copy(update={"placement": placement})

    rows = sum(len(r) for r in owned.values())
    if seed is not None:
        order = [batch_schedule(rows, batch_size, epoch, seed, bool(shuffle)) for epoch in range(epochs)]
    else:
        if config is not None and shuffle and not keras_seed_is_set():
            raise ValueError(
                "with one process per party every process must draw the same batch order, but no Keras seed is "
                "set; call keras.utils.set_random_seed(n) with the same n in the script before fit, or pass "
                "shuffle=False"
            )
        order = keras_batch_order(model, rows, batch_size, epochs, shuffle)

    options: dict[str, Any] = {"metrics": metrics}
    if config is not None:
        if backend.name == "plaintext":
            raise BackendError(
                "this process is one party of a cluster (privacy-bridge party/launch), but the plaintext "
                "backend runs every party in one process; pick torch-spdz or tf-pond"
            )
        config.check_placement(placement)
        options["cluster"], options["party"] = config, party
    if backend.name != "plaintext":
        options["check_overflow"] = check_overflow
        if overflow_bound is not None:
            options["overflow_bound"] = overflow_bound
        if timeout_s is not None:
            options["timeout_s"] = timeout_s
        if device is not None:
            options["device"] = device
    executable: TrainingExecutable = backend.prepare_training(program, weights, **options)
    try:
        executable.load_data({o: r.as_tuple() for o, r in owned.items()}, split="train")
        val_rows = executable.load_data({o: r.as_tuple() for o, r in val.items()}, split="validation") if val else 0

        callback_list = keras.callbacks.CallbackList(
            callbacks, add_history=True, add_progbar=verbose not in (0, "silent"),
            verbose=1 if verbose == "auto" else verbose, epochs=epochs, steps=-(-rows // batch_size), model=model,
        )
        model.stop_training = False
        traffic: list[Any] = []
        callback_list.on_train_begin()
        epoch_logs: dict[str, float] = {}
        for epoch in range(epochs):
            callback_list.on_epoch_begin(epoch)
            results = []
            for step, batch in enumerate(order[epoch]):
                callback_list.on_train_batch_begin(step)
                results.append(executable.train_batch(batch))
                logs = {"loss": _mean(results, None), **{m: _mean(results, m) for m in metrics}}
                callback_list.on_train_batch_end(step, logs)
                if model.stop_training:
                    break
            epoch_logs = {"loss": _mean(results, None), **{m: _mean(results, m) for m in metrics}}
            traffic.extend(r.stats for r in results)
            if val_rows:
                val_results = [
                    executable.evaluate_batch(b, "validation")
                    for b in batch_schedule(val_rows, batch_size, 0, 0, shuffle=False)
                ]
                epoch_logs["val_loss"] = _mean(val_results, None)
                epoch_logs.update({f"val_{m}": _mean(val_results, m) for m in metrics})
            callback_list.on_epoch_end(epoch, epoch_logs)
            if model.stop_training:
                break
        history = model.history
        history.comm_stats = _compute_traffic(traffic, program)
        history.received_weights = False
        if keep_shared:
            history.serving = executable.serving()
        else:
            trained = executable.weights()  # {} where another process hosts the model owner
            _write_back(model, trained)
            history.received_weights = bool(trained)
        executable.close()  # drops the shared data; a kept model lives on in history.serving
        callback_list.on_train_end(logs=epoch_logs)
        return history
    except BaseException:
        executable.close()
        raise


def _write_back(model: Any, trained: Mapping[str, np.ndarray]) -> None:
    """Assign each trained parameter ``layer/role`` to the Keras variable it came from."""
    for layer in model.layers:
        for variable in layer.weights:
            name = f"{layer.name}/{variable.path.rsplit('/', 1)[-1]}"
            if name in trained:
                variable.assign(np.asarray(trained[name], dtype=variable.dtype))


def _compute_traffic(stats: list[Any], program: Any) -> tuple[int, int] | None:
    """(bytes, rounds) the busiest compute party sent over all training steps."""
    stats = [s for s in stats if s is not None]
    if not stats:
        return None
    compute = program.placement.compute_parties
    return (
        max(sum(s.total_bytes(p) for s in stats) for p in compute),
        max(sum(s.total_rounds(p) for s in stats) for p in compute),
    )
