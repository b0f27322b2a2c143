"""``privacy-bridge demo``: one Keras model on load_digits, in plaintext and every privacy mode.

Every figure in the table is measured in this run: accuracy on the held-out test
split, wall time, and bytes/rounds sent by one compute party.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from frontends.cli.bench import format_table
from frontends.keras.quiet import no_retracing_warnings

SEED = 7


@dataclass
class DemoData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def owners(self, names: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The training set split evenly between data owners."""
        parts = np.array_split(np.arange(len(self.x_train)), len(names))
        return {n: (self.x_train[i], self.y_train[i]) for n, i in zip(names, parts)}


def load_digits_data(limit_train: int | None = None) -> DemoData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    if limit_train:
        x_train, y_train = x_train[:limit_train], y_train[:limit_train]
    return DemoData(x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64))


def build_model(learning_rate: float = 0.1) -> Any:
    """A small MLP for 8x8 digits, compiled with plain SGD (what encrypted training supports)."""
    import keras

    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


@dataclass
class Row:
    mode: str
    backend: str
    accuracy: float
    wall_s: float
    bytes_per_party: int | str = "-"
    rounds: int | str = "-"
    curve: list[float] = field(default_factory=list)


def _accuracy(model_or_private: Any, data: DemoData) -> float:
    probs = model_or_private.predict(data.x_test, batch_size=128, verbose=0)
    return float(np.mean(np.argmax(probs, axis=1) == data.y_test))


def _compute_traffic(stats: Any, program: Any) -> tuple[int, int]:
    compute = program.placement.compute_parties
    return (
        max(stats.total_bytes(p, ("share:", "setup")) for p in compute),
        max(stats.total_rounds(p, ("share:", "setup")) for p in compute),
    )


def run_plaintext(data: DemoData, epochs: int) -> tuple[Any, Row, list[np.ndarray]]:
    model = build_model()
    initial = model.get_weights()
    start = time.perf_counter()
    history = model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, shuffle=False, verbose=0)
    wall = time.perf_counter() - start
    row = Row("plaintext Keras", "-", _accuracy(model, data), wall, curve=list(history.history["accuracy"]))
    return model, row, initial


def run_serving(model: Any, data: DemoData, backend: str) -> Row:
    from frontends.keras import privatize

    private = privatize(model, privacy="encrypted_serving", backend=backend)
    start = time.perf_counter()
    accuracy = _accuracy(private, data)
    wall = time.perf_counter() - start
    nbytes, rounds = _compute_traffic(private.last_stats, private.program)
    return Row("encrypted serving", backend, accuracy, wall, nbytes, rounds)


def run_none(model: Any, data: DemoData) -> Row:
    from frontends.keras import privatize

    private = privatize(model, privacy="none")
    start = time.perf_counter()
    accuracy = _accuracy(private, data)
    return Row("IR on plaintext reference", "plaintext", accuracy, time.perf_counter() - start)


def progress_verbosity() -> int:
    """Keras' progress bar where a person watches (a terminal), one line per epoch in a log file."""
    return 1 if sys.stdout.isatty() else 2


def run_training(initial: list[np.ndarray], data: DemoData, backend: str, epochs: int,
                 verbose: int | None = None) -> Row | None:
    try:
        from frontends.keras.training import fit_encrypted  # noqa: F401
    except ImportError:
        return None
    from frontends.keras import privatize

    model = build_model()
    model.set_weights(initial)
    private = privatize(model, privacy="encrypted_training", backend=backend)
    start = time.perf_counter()
    # The slowest step of the demo: Keras' own progress bar shows that it is moving.
    history = private.fit(data.owners(("alice", "bob")), epochs=epochs, batch_size=32, shuffle=False,
                          verbose=progress_verbosity() if verbose is None else verbose)
    wall = time.perf_counter() - start
    stats = getattr(history, "comm_stats", None)
    nbytes, rounds = ("-", "-")
    if stats is not None:
        nbytes, rounds = stats
    return Row("encrypted training", backend, _accuracy(model, data), wall, nbytes, rounds,
               curve=list(history.history.get("accuracy", [])))


def run_federated(initial: list[np.ndarray], data: DemoData, backend: str, epochs: int) -> Row | None:
    try:
        from frontends.keras.federated import fit_federated  # noqa: F401
    except ImportError:
        return None
    from frontends.keras import privatize

    model = build_model()
    model.set_weights(initial)
    clients = data.owners(("hospital_a", "hospital_b", "hospital_c"))
    private = privatize(model, privacy="federated", backend=backend, rounds=epochs, local_epochs=1)
    start = time.perf_counter()
    history = private.fit(clients, batch_size=32, verbose=0)
    wall = time.perf_counter() - start
    per_round = history.history.get("bytes_per_party", [])
    nbytes = int(sum(per_round)) if per_round else "-"
    return Row("federated (secure aggregation)", backend, _accuracy(model, data), wall, nbytes, "-",
               curve=list(history.history.get("accuracy", [])))


#: (line style, marker, marker fill): curves that coincide (encrypted training tracks plaintext
#: Keras to the third decimal) stay visible as a solid line under dashes and hollow markers
CURVE_STYLES = [("-", "o", "full"), ("--", "s", "none"), (":", "^", "none"), ("-.", "D", "none"),
                ((0, (5, 1, 1, 1)), "v", "none")]


def draw_curves(ax: Any, rows: list[Row]) -> list[Any]:
    """One line per row, each with its own dash pattern and marker, the first drawn widest."""
    lines = []
    for i, r in enumerate(rows):
        style, marker, fill = CURVE_STYLES[i % len(CURVE_STYLES)]
        label = r.mode if r.backend == "-" else f"{r.mode} ({r.backend})"
        (line,) = ax.plot(range(1, len(r.curve) + 1), r.curve, linestyle=style, marker=marker, fillstyle=fill,
                          linewidth=3.0 if i == 0 else 1.5, markersize=8 if i == 0 else 6, alpha=0.9,
                          zorder=2 + i, label=label)
        lines.append(line)
    return lines


def plot_curves(rows: list[Row], path: str) -> str | None:
    curves = [r for r in rows if r.curve]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    draw_curves(ax, curves)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and rounds are whole numbers
    ax.set_xlabel("epoch / round")
    ax.set_ylabel("training accuracy")
    ax.set_title("load_digits: private vs plaintext training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_demo(backend: str | None = None, all_backends: bool = False, quick: bool = False,
             plot: str | None = "privacy_bridge_demo.png") -> int:
    from bridge.registry import available_backends, configured_backend

    if all_backends:
        backends = [b for b in available_backends() if b != "plaintext"]
    else:  # errors name the argument, variable or file that named the backend
        backends = [configured_backend(backend, "encrypted_serving")[0].name]
    data = load_digits_data(limit_train=600 if quick else None)
    epochs = 3 if quick else 10
    print(f"load_digits: {len(data.x_train)} training / {len(data.x_test)} test images; backends: {backends}")
    steps: list[tuple[str, Callable[[], Row | None]]] = []
    with no_retracing_warnings():
        model, plain_row, initial = run_plaintext(data, epochs)
    rows = [plain_row]
    steps.append(("IR on the plaintext reference", lambda: run_none(model, data)))
    for b in backends:
        steps.append((f"encrypted serving on {b}", lambda b=b: run_serving(model, data, b)))
        steps.append((f"encrypted training on {b}", lambda b=b: run_training(initial, data, b, epochs)))
        steps.append((f"federated on {b}", lambda b=b: run_federated(initial, data, b, epochs)))
    for title, step in steps:
        print(f"-> {title} ...", flush=True)
        with no_retracing_warnings():  # the demo calls Keras on fresh model copies, by design
            row = step()
        if row is not None:
            rows.append(row)
    table = [
        {
            "mode": r.mode,
            "backend": r.backend,
            "test accuracy": f"{100 * r.accuracy:.1f}%",
            "wall s": round(r.wall_s, 2),
            "bytes/party": r.bytes_per_party,
            "rounds": r.rounds,
        }
        for r in rows
    ]
    print()
    print(format_table(table))
    if plot:
        written = plot_curves(rows, plot)
        if written:
            print(f"\nlearning curves written to {written}")
    return 0
