"""What ``fit``'s data arguments mean for encrypted training, as Keras' ``model.fit`` reads them.

  * ``owned_data``: {data owner: (x, y[, sample_weight])} from a mapping of owners or one
    (x, y) pair; x is one array, or (multi-input models) a list in ``model.inputs`` order
    or a dict keyed by input name, and becomes {IR input name: array}.
  * ``split_validation``: ``validation_split`` as Keras applies it, the last
    floor(n * split) rows of the rows as numbered (owners in order) before shuffling.
  * ``with_class_weight``: each owner turns ``class_weight`` into sample weights from its
    own labels (Keras' ``class_weight_to_sample_weights``), locally, before sharing.
  * ``keras_batch_order``: the batches of every epoch exactly as ``model.fit`` would draw
    them: Keras' own epoch iterator for the active Keras backend, run over the row
    indices, so ``keras.utils.set_random_seed`` fixes the order as it does for ``fit``.

The batch order is public: the compute parties gather each batch's rows by index, so
they (and the dealer) learn which rows of the shared data form each batch.  They learn
nothing about the rows' values from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bridge.ir import Program


@dataclass(frozen=True)
class OwnedRows:
    """One data owner's rows: inputs by IR input name, labels, optional sample weights."""

    x: dict[str, np.ndarray]
    y: np.ndarray
    sample_weight: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def rows(self, start: int, stop: int) -> OwnedRows:
        w = None if self.sample_weight is None else self.sample_weight[start:stop]
        return OwnedRows({k: v[start:stop] for k, v in self.x.items()}, self.y[start:stop], w)

    def as_tuple(self) -> tuple[Any, ...]:
        """What ``TrainingExecutable.load_data`` takes: (x, y) or (x, y, w), x one array per input."""
        x: Any = next(iter(self.x.values())) if len(self.x) == 1 else dict(self.x)
        return (x, self.y) if self.sample_weight is None else (x, self.y, self.sample_weight)


def model_input_names(model: Any, program: Program) -> list[str]:
    """The IR input names in ``model.inputs`` order (graph inputs are named after their InputLayer)."""
    graph_names = list(program.graph.inputs)
    names = [getattr(t, "name", None) for t in getattr(model, "inputs", None) or []]
    if len(names) == len(graph_names) and set(names) == set(graph_names):
        return [str(n) for n in names]
    return graph_names


def _inputs(x: Any, names: list[str], what: str) -> dict[str, np.ndarray]:
    if isinstance(x, Mapping):
        unknown = sorted(set(x) - set(names))
        missing = [n for n in names if n not in x]
        if unknown or missing:
            raise ValueError(
                f"{what}: x is a dict with keys {sorted(x)}, but the model's inputs are {names}; "
                "key each array by its Input layer's name"
            )
        return {n: np.asarray(x[n]) for n in names}
    if isinstance(x, (list, tuple)) and len(names) > 1:
        if len(x) != len(names):
            raise ValueError(
                f"{what}: the model has {len(names)} inputs {names} but x holds {len(x)} arrays; "
                "pass one array per input, in model.inputs order"
            )
        return {n: np.asarray(a) for n, a in zip(names, x, strict=True)}
    if len(names) > 1:
        raise ValueError(
            f"{what}: the model has {len(names)} inputs {names}; pass x as a list of {len(names)} arrays "
            "(model.inputs order) or a dict keyed by input name"
        )
    return {names[0]: np.asarray(x)}


def _owner_rows(pair: Any, names: list[str], what: str) -> OwnedRows:
    if not isinstance(pair, (tuple, list)) or len(pair) not in (2, 3):
        raise ValueError(f"{what} must be an (x, y) pair or an (x, y, sample_weight) triple, received "
                         f"{type(pair).__name__}")
    x = _inputs(pair[0], names, what)
    y = np.asarray(pair[1])
    w = None if len(pair) == 2 or pair[2] is None else np.asarray(pair[2], dtype=np.float64)
    arrays = {f"x[{n!r}]" if len(x) > 1 else "x": a for n, a in x.items()} | {"y": y}
    scalars = [name for name, a in arrays.items() if a.ndim == 0]
    if scalars:
        raise ValueError(f"{what} must be an (x, y) pair of arrays with one row per sample; {scalars} are scalars")
    counts = {name: len(a) for name, a in arrays.items()}
    if w is not None:
        counts["sample_weight"] = len(w)
        if w.ndim != 1:
            raise ValueError(f"{what}: sample_weight must be one weight per row, shape (n,); received shape {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            bad = int(np.flatnonzero(~np.isfinite(w) | (w < 0))[0])
            raise ValueError(f"{what}: sample weights must be finite and >= 0; received {w[bad]} at index {bad}")
    if len(set(counts.values())) != 1:
        raise ValueError(f"{what}: the arrays have different numbers of rows: {counts}")
    return OwnedRows(x, y, w)


def owned_data(
    data: Any, what: str, names: list[str], default_owner: str, sample_weight: Any = None
) -> dict[str, OwnedRows]:
    """{owner: rows} from {owner: (x, y[, w])} or one (x, y[, w]) pair of ``default_owner``."""
    if isinstance(data, Mapping):
        if sample_weight is not None:
            raise ValueError(
                f"sample_weight= applies to one (x, y) pair; with {what} split among data owners, give each "
                "owner an (x, y, sample_weight) triple instead"
            )
        out = {str(owner): _owner_rows(pair, names, f"{what}[{owner!r}]") for owner, pair in data.items()}
        if not out:
            raise ValueError(f"{what} maps no data owner to data")
        return out
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        pair = tuple(data) if sample_weight is None else (data[0], data[1], sample_weight)
        if len(data) == 3 and sample_weight is not None:
            raise ValueError(f"{what} carries sample weights and sample_weight= was given too; pass one of them")
        return {default_owner: _owner_rows(pair, names, what)}
    raise ValueError(
        f"{what} must map data-owner names to (x, y) pairs, e.g. {{'alice': (x_a, y_a), 'bob': (x_b, y_b)}}, "
        f"or be one (x, y) pair for a single local data owner; received {type(data).__name__}"
    )


def with_class_weight(owned: dict[str, OwnedRows], class_weight: Any) -> dict[str, OwnedRows]:
    """Each owner's sample weights from its own labels, as Keras' fit(class_weight=...) makes them."""
    if class_weight is None:
        return owned
    from keras.src.trainers.data_adapters.data_adapter_utils import class_weight_to_sample_weights

    if not isinstance(class_weight, Mapping) or not all(isinstance(c, (int, np.integer)) for c in class_weight):
        raise ValueError(f"class_weight must be a dict {{class index: weight}}, received {class_weight!r}")
    if any(r.sample_weight is not None for r in owned.values()):
        raise ValueError("class_weight and sample weights cannot be given together (as in Keras' fit); pass one")
    weights = {int(c): float(w) for c, w in class_weight.items()}
    if any(not math.isfinite(w) or w < 0 for w in weights.values()):
        raise ValueError(f"class weights must be finite and >= 0, received {class_weight!r}")
    return {
        owner: OwnedRows(r.x, r.y, np.asarray(class_weight_to_sample_weights(r.y, weights), dtype=np.float64))
        for owner, r in owned.items()
    }


def complete_weights(owned: dict[str, OwnedRows]) -> dict[str, OwnedRows]:
    """All owners weighted or none: an owner without weights weighs each row 1 (Keras' default)."""
    if all(r.sample_weight is None for r in owned.values()):
        return owned
    return {o: r if r.sample_weight is not None else OwnedRows(r.x, r.y, np.ones(len(r))) for o, r in owned.items()}


def split_validation(
    owned: dict[str, OwnedRows], validation_split: float
) -> tuple[dict[str, OwnedRows], dict[str, OwnedRows]]:
    """(train, validation): the last floor(n * split) of the rows, numbered owner after owner,
    become validation rows of the same owners, as ``keras.utils`` splits one array."""
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), received {validation_split}")
    total = sum(len(r) for r in owned.values())
    split_at = int(math.floor(total * (1.0 - validation_split)))
    if split_at in (0, total):
        raise ValueError(
            f"validation_split={validation_split} leaves {'no training' if split_at == 0 else 'no validation'} "
            f"rows of the {total} given; use a split between {1 / total:.3g} and {1 - 1 / total:.3g}"
        )
    train, validation, start = {}, {}, 0
    for owner, rows in owned.items():
        cut = min(max(split_at - start, 0), len(rows))
        if cut > 0:
            train[owner] = rows.rows(0, cut)
        if cut < len(rows):
            validation[owner] = rows.rows(cut, len(rows))
        start += len(rows)
    return train, validation


def _as_numpy(value: Any) -> np.ndarray:
    import keras

    while isinstance(value, (list, tuple, dict)):
        value = keras.tree.flatten(value)[0]
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.int64).reshape(-1)


def keras_batch_order(model: Any, rows: int, batch_size: int, epochs: int, shuffle: Any) -> list[list[np.ndarray]]:
    """Row indices of every batch of every epoch, drawn by Keras' own epoch iterator for the
    active backend over x = arange(rows): the order ``model.fit(x, y, batch_size=...,
    epochs=..., shuffle=...)`` uses, from the same random state (``keras.utils.set_random_seed``).

    All epochs are drawn up front, before any protocol step can touch a global random state.
    """
    import keras

    backend = keras.backend.backend()
    indices = np.arange(rows, dtype=np.int64)
    options = dict(x=indices, batch_size=batch_size, steps_per_epoch=None, shuffle=shuffle, steps_per_execution=1)
    if backend == "tensorflow":
        from keras.src.backend.tensorflow.trainer import TFEpochIterator

        iterator: Any = TFEpochIterator(distribute_strategy=model.distribute_strategy, **options)
    elif backend == "torch":
        from keras.src.backend.torch.trainer import TorchEpochIterator

        iterator = TorchEpochIterator(**options)
    elif backend == "jax":
        from keras.src.backend.jax.trainer import JAXEpochIterator

        iterator = JAXEpochIterator(**options)
    else:
        from keras.src.trainers.epoch_iterator import EpochIterator

        iterator = EpochIterator(**options)
    iterator.reset()
    order = []
    for _ in range(epochs):
        batches = []
        with iterator.catch_stop_iteration():
            for _begin, _end, data in iterator:
                batch = next(data) if hasattr(data, "__next__") else data  # TF hands over the iterator
                batches.append(_as_numpy(batch))
        order.append(batches)
    return order


def keras_seed_is_set() -> bool:
    """Whether ``keras.utils.set_random_seed`` fixed the global random state."""
    from keras.src.utils.rng_utils import get_random_seed

    return get_random_seed() is not None
