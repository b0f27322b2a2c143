"""``privatize(model, privacy=...)``: the one line a Keras user adds.

The returned object has Keras' ``predict`` / ``evaluate`` / ``fit``; what runs
underneath is the model's IR on the backend that configuration picks
(``bridge.registry.configured_backend``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from bridge.backend import Backend, BackendError, Executable
from bridge.ir import Numerics, Placement, PrivacyMode, Program
from bridge.ir.tokens import caller_shape
from bridge.registry import configured_backend

#: privacy mode -> keyword arguments of ``privatize`` that only that mode takes
#: the serving range check's settings (``bridge.mpc.session.SecureExecutable``)
SERVING_CHECKS = ("check_overflow", "overflow_bound", "max_reruns")
MODE_OPTIONS: dict[PrivacyMode, frozenset[str]] = {
    PrivacyMode.NONE: frozenset(),
    PrivacyMode.ENCRYPTED_SERVING: frozenset({"timeout_s", "device", *SERVING_CHECKS}),
    PrivacyMode.ENCRYPTED_TRAINING: frozenset({"timeout_s", "device", "keep_shared", "check_overflow"}),
    PrivacyMode.FEDERATED: frozenset(
        {
            "rounds",
            "local_epochs",
            "secure_aggregation",
            "client_fraction",
            "min_clients",
            "clip_norm",
            "noise_multiplier",
            "delta",
            "round_timeout_s",
        }
    ),
}


def privatize(
    model: Any,
    privacy: str | PrivacyMode = "none",
    backend: str | None = None,
    parties: Placement | Mapping[str, Any] | None = None,
    *,
    numerics: Numerics | None = None,
    **options: Any,
) -> "PrivateModel":
    """Wrap a Keras model so that it runs privately.

    privacy: "none", "encrypted_serving", "encrypted_training" or "federated".
    backend: a registered backend name; None means configuration decides
      (``PRIVACY_BRIDGE_BACKEND``, then ``[tool.privacy-bridge]`` in the nearest
      pyproject.toml up to the repository root).  Configuration picks the engine of the
      private modes; ``privacy="none"`` falls back to the plaintext reference when the
      configured backend cannot run it.
    parties: a ``Placement``, or keyword arguments for ``Placement.default``
      (e.g. ``{"data_owner": "alice", "compute": ("s0", "s1")}``).
    options: mode-specific settings (``rounds=``, ``local_epochs=``, ``timeout_s=``...).
    """
    try:
        mode = PrivacyMode(privacy)
    except ValueError:
        modes = [m.value for m in PrivacyMode]
        raise ValueError(f"privacy={privacy!r} is not a privacy mode; use one of {modes}") from None
    unknown = sorted(set(options) - MODE_OPTIONS[mode])
    if unknown:
        raise TypeError(
            f"privatize(privacy={mode.value!r}) got unexpected options {unknown}; "
            f"this mode takes {sorted(MODE_OPTIONS[mode])}"
        )
    engine, _ = configured_backend(backend, mode)
    if mode == PrivacyMode.ENCRYPTED_TRAINING:  # refuse a serving-only layer now, by name, not mid-fit
        from frontends.keras.training import check_trainable

        check_trainable(model, numerics)
    return PrivateModel(model, mode, engine, parties, numerics, options)


class PrivateModel:
    """A Keras model bound to a privacy mode and a backend."""

    def __init__(
        self,
        model: Any,
        mode: PrivacyMode,
        backend: Backend,
        parties: Placement | Mapping[str, Any] | None,
        numerics: Numerics | None,
        options: dict[str, Any],
    ) -> None:
        self.model = model
        self.privacy = mode
        self.backend = backend
        self.options = options
        self._parties = parties
        self._numerics = numerics or Numerics()
        self._executable: Executable | None = None
        self._weights_version: list[np.ndarray] | None = None
        self.last_stats: Any = None
        #: queries of the last predict rerun after the range check flagged them (truncation failures)
        self.last_reruns = 0

    # -- the Program --------------------------------------------------------------------
    def to_program(self) -> tuple[Program, dict[str, np.ndarray]]:
        """The model's IR with this wrapper's placement and numerics."""
        from frontends.keras.importer import to_ir

        program, weights = to_ir(self.model, numerics=self._numerics, privacy=self.privacy)
        placement = self._placement(program)
        return program.model_copy(update={"placement": placement}), weights

    def _placement(self, program: Program) -> Placement:
        inputs, outputs = list(program.graph.inputs), list(program.graph.outputs)
        cluster = self._cluster()
        if isinstance(self._parties, Placement):
            placement = self._parties
        elif cluster is not None and not self._parties:
            placement = cluster[0].placement(inputs, outputs)
        else:
            placement = Placement.default(inputs, outputs, **dict(self._parties or {}))
        if cluster is not None:
            cluster[0].check_placement(placement)
        return placement

    def _cluster(self) -> Any:
        """(ClusterConfig, this party) when this process is one party of a cluster
        (``privacy-bridge party/launch`` or torchrun variables), else None: embedded."""
        from bridge.cluster import cluster_from_environment

        return cluster_from_environment(os.environ)

    @property
    def program(self) -> Program:
        return self.to_program()[0]

    def _prepared(self) -> Executable:
        """Prepare once; prepare again if the Keras weights changed since (e.g. after fit)."""
        current = [np.asarray(w) for w in self.model.get_weights()]
        stale = self._weights_version is None or any(
            a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(current, self._weights_version)
        )
        if self._executable is None or stale:
            if self._executable is not None:
                self._executable.close()
            program, weights = self.to_program()
            self._executable = self.backend.prepare(program, weights, **self._prepare_options())
            self._weights_version = current
        return self._executable

    def _prepare_options(self) -> dict[str, Any]:
        options = {k: v for k, v in self.options.items() if k in {"timeout_s", "device", *SERVING_CHECKS}}
        cluster = self._cluster()
        if cluster is not None:
            options["cluster"], options["party"] = cluster
        return options

    # -- Keras API ----------------------------------------------------------------------------
    def predict(self, x: Any, batch_size: int | None = None, verbose: str | int = "auto", steps: int | None = None) -> Any:
        """Like ``keras.Model.predict``: batches of ``batch_size`` (default 32), outputs concatenated."""
        if self.privacy == PrivacyMode.ENCRYPTED_TRAINING or self.privacy == PrivacyMode.FEDERATED:
            # Training modes serve with the trained Keras model in the clear (the owner has it).
            return self.model.predict(x, batch_size=batch_size, verbose=verbose, steps=steps)
        size = check_batch_size(batch_size)
        program = self._executable.program if self._executable is not None else self.to_program()[0]
        inputs = _as_input_dict(program, x)
        n = check_input_shapes(program, inputs)
        if n == 0:  # nothing to share or run: the receivers get empty arrays of the output shape
            self.last_stats = None
            return self._empty_outputs(program)
        executable = self._prepared()
        program = executable.program
        starts = list(range(0, n, size))
        if steps is not None:
            starts = starts[:steps]
        bar = _progbar(len(starts), verbose)
        chunks: dict[str, list[np.ndarray]] = {name: [] for name in program.graph.outputs}
        stats = []
        self.last_reruns = 0
        for i, start in enumerate(starts):
            batch = {k: v[start : start + size] for k, v in inputs.items()}
            result = executable.run(batch)
            for name, value in result.outputs.items():
                chunks[name].append(value)
            stats.append(result.stats)
            self.last_reruns += result.reruns
            if bar is not None:
                bar.update(i + 1)
        self.last_stats = _merge_stats(stats)
        outputs = [np.concatenate(chunks[name]).astype(np.float32) for name in program.graph.outputs if chunks[name]]
        if not outputs:
            return None  # this process hosts no output receiver (distributed mode)
        return outputs[0] if len(outputs) == 1 else outputs

    def _empty_outputs(self, program: Program) -> Any:
        """What ``predict`` returns for zero samples: (0, *feature shape) float32 arrays for the
        outputs this process receives (every output, embedded), None where it receives none."""
        cluster = self._cluster()
        receivers = program.placement.output_receivers
        names = [n for n in program.graph.outputs if cluster is None or cluster[1] in receivers[n]]
        outputs = [np.zeros((0, *program.graph.outputs[n].feature_shape), np.float32) for n in names]
        if not outputs:
            return None
        return outputs[0] if len(outputs) == 1 else outputs

    def evaluate(
        self,
        x: Any,
        y: Any,
        batch_size: int | None = None,
        verbose: str | int = "auto",
        return_dict: bool = False,
    ) -> Any:
        """Like ``keras.Model.evaluate``: the compiled loss and metrics on private predictions.

        Only the output receiver (the client) sees the predictions, so the loss and
        metrics are computed on its side, in the clear, from what it received.
        """
        predictions = self.predict(x, batch_size=batch_size, verbose=verbose)
        if predictions is None:
            return None  # this process is not the client (distributed mode)
        if len(np.asarray(y)) == 0:
            raise ValueError("evaluate received 0 samples; the loss and metrics of an empty set are undefined. "
                             "Pass at least one sample.")
        return compiled_scores(self.model, y, predictions, return_dict)

    def fit(self, x: Any = None, y: Any = None, **kwargs: Any) -> Any:
        """Train: encrypted (``data`` = {owner: (x, y)} or (x, y)) or federated ({client: (x, y)})."""
        data = x if y is None else (x, y)
        if self.privacy == PrivacyMode.ENCRYPTED_TRAINING:
            from frontends.keras.training import fit_encrypted

            allowed = {"keep_shared", "check_overflow", "timeout_s", "device"}
            extra = {k: v for k, v in self.options.items() if k in allowed}
            return fit_encrypted(
                self.model, self.backend, data, parties=self._parties, numerics=self._numerics,
                cluster=self._cluster(), **extra, **kwargs,
            )
        if self.privacy == PrivacyMode.FEDERATED:
            from frontends.keras.federated import fit_federated

            # fit() arguments win over privatize()'s (epochs= vs rounds= is settled in fit_federated)
            settings = {**self.options, **kwargs}
            return fit_federated(self.model, self.backend.name, data, cluster=self._cluster(), **settings)
        if self.privacy == PrivacyMode.NONE:
            if isinstance(data, tuple):
                return self.model.fit(*data, **kwargs)
            return self.model.fit(data, **kwargs)
        raise BackendError(
            f"privacy={self.privacy.value!r} serves a trained model and does not train; "
            "use privacy='encrypted_training' or 'federated' to train privately"
        )


def compiled_scores(model: Any, y: Any, predictions: Any, return_dict: bool) -> Any:
    """The model's compiled loss and metrics, evaluated with Keras on given predictions."""
    import keras

    y_true = np.asarray(y)
    y_pred = np.asarray(predictions)
    scores: dict[str, float] = {}
    loss = getattr(model, "loss", None)
    if loss is not None:
        loss_fn = keras.losses.get(loss) if isinstance(loss, str) else loss
        scores["loss"] = float(np.mean(keras.ops.convert_to_numpy(loss_fn(y_true, y_pred))))
    for metric in _compiled_metrics(model, loss):
        metric.reset_state()
        metric.update_state(y_true, y_pred)
        scores[metric.name] = float(keras.ops.convert_to_numpy(metric.result()))
    if return_dict:
        return scores
    values = list(scores.values())
    return values[0] if len(values) == 1 else values


def _compiled_metrics(model: Any, loss: Any) -> list[Any]:
    import keras

    config = getattr(model, "_compile_config", None)
    names = []
    if config is not None:
        names = list(config.config.get("metrics") or [])
    out = []
    for name in names:
        if name in ("accuracy", "acc"):
            loss_name = loss if isinstance(loss, str) else getattr(loss, "name", "")
            if "sparse_categorical" in str(loss_name):
                out.append(keras.metrics.SparseCategoricalAccuracy(name="accuracy"))
            elif "binary" in str(loss_name):
                out.append(keras.metrics.BinaryAccuracy(name="accuracy"))
            else:
                out.append(keras.metrics.CategoricalAccuracy(name="accuracy"))
        else:
            out.append(keras.metrics.get(name))
    return out


def _as_input_dict(program: Program, x: Any) -> dict[str, np.ndarray]:
    names = list(program.graph.inputs)
    if isinstance(x, Mapping):
        return {k: np.asarray(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)) and len(names) > 1:
        return {n: np.asarray(v) for n, v in zip(names, x, strict=True)}
    if len(names) != 1:
        raise ValueError(f"the model takes {len(names)} inputs {names}; pass a list or a dict")
    return {names[0]: np.asarray(x)}


def check_batch_size(batch_size: Any) -> int:
    """Keras' ``batch_size``: None means 32; anything else must be a positive integer."""
    if batch_size is None:
        return 32
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive integer (or None for 32), received {batch_size!r}"
        )
    return int(batch_size)


def check_input_shapes(program: Program, inputs: Mapping[str, np.ndarray]) -> int:
    """The number of samples, after checking each input's shape *as the user passed it*
    (before batching, so that a (64,) sample is reported as (64,), not as a (32,) batch)."""
    n: int | None = None
    for name, spec in program.graph.inputs.items():
        if name not in inputs:
            continue  # named in the backend's own error
        shape, expected = tuple(np.shape(inputs[name])), caller_shape(spec)  # token inputs: the ids' shape
        want = f"(batch, {', '.join(map(str, expected))})"
        if shape == expected:
            raise ValueError(
                f"input {name!r}: expected a batch of shape {want}, received one sample of shape {shape}. "
                f"predict takes a batch, as Keras' does: pass x[None] (shape (1, {', '.join(map(str, expected))}))."
            )
        if len(shape) != len(expected) + 1 or shape[1:] != expected:
            raise ValueError(
                f"input {name!r}: expected shape {want}, received {shape}. Reshape the data to the model's input."
            )
        if n is not None and shape[0] != n:
            raise ValueError(f"the inputs have different numbers of samples: {n} and {shape[0]} ({name!r})")
        n = shape[0]
    return int(n or 0)


def progress_verbosity(verbose: str | int) -> int:
    """Keras' verbose argument as a Progbar level; "auto" is silent under CI, as logs there are files."""
    if verbose in (0, "silent") or (verbose == "auto" and os.environ.get("CI")):
        return 0
    return 1 if verbose == "auto" else int(verbose)


def _progbar(steps: int, verbose: str | int) -> Any:
    level = progress_verbosity(verbose)
    if not level:
        return None
    import keras

    return keras.utils.Progbar(steps, verbose=level)


def _merge_stats(stats: list[Any]) -> Any:
    """One CommStats for a whole predict call."""
    stats = [s for s in stats if s is not None]
    if not stats:
        return None
    from bridge.mpc.comm import CommStats

    total = CommStats()
    for s in stats:
        for party, labels in s.snapshot().items():
            for label, (nbytes, rounds) in labels.items():
                total.add(party, label, nbytes, rounds)
    return total
