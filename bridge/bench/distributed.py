"""Benchmark rows with one process per party on loopback: wall time, bytes and rounds.

``distributed_rows(workloads, backends)`` measures each workload (an object with
``name``, ``program``, ``weights`` and ``inputs()``, like ``bridge.bench.workloads``)
twice, each time in fresh processes with one compute thread each
(``torch.set_num_threads(1)``; TensorFlow's intra- and inter-op pools of 1):

* distributed: ``launch`` starts one process per party (by default three: the two
  compute parties, which also own the model and the data, and the dealer); before
  every timed run the parties meet at a barrier on the transport itself (uncounted
  raw messages), so that the run's wall time is the slowest party's, from a common
  start;
* embedded: every party in threads of one process, the same placement.

``wall_s`` is a query with the dealer's work inline; ``online_s`` the same query after
every party made its material (``SecureExecutable.precompute``, each process alone, no
message), whose slowest party's time is ``offline_s``.

``training_rows(backends)`` does the same for ``mlp_train`` (``bridge.bench.training``):
one epoch, end to end from a common start after the parties have connected (party
setup, sharing the weights and the data, the epoch), in three processes and embedded.

Bytes and rounds are counted exactly as ``privacy-bridge bench`` counts them (what a
compute party sends during a run, input sharing excluded; the dealer apart), and
``counts_match`` says whether every party's counts, label by label, equal the
embedded run's.  Figures are printed, never asserted.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bridge.cluster import ClusterConfig, PartyEntry, to_toml
from bridge.ir import Party, Placement, Program, Role, load_program, save_program

#: traffic labels left out of the per-run figures (the input owner's sharing)
EXCLUDE = ("share:",)
BARRIER = b"bench-barrier"


class Workload(Protocol):
    name: str
    program: Program
    weights: dict[str, np.ndarray]

    def inputs(self, seed: int = 0) -> dict[str, np.ndarray]: ...


def three_party_placement(placement: Placement) -> Placement:
    """The workload's placement folded onto 2 compute parties and a dealer: the first
    compute party owns the model, the second owns the inputs and receives the outputs."""
    (c0, c1), dealer = placement.compute_parties, placement.dealer
    assert dealer is not None
    return Placement(
        parties=(
            Party(name=c0, roles=frozenset({Role.COMPUTE, Role.MODEL_OWNER})),
            Party(name=c1, roles=frozenset({Role.COMPUTE, Role.DATA_OWNER, Role.CLIENT})),
            Party(name=dealer, roles=frozenset({Role.DEALER})),
        ),
        input_owners={n: c1 for n in placement.input_owners},
        param_owner=c0,
        output_receivers={n: (c1,) for n in placement.output_receivers},
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_thread_env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONUNBUFFERED": "1",
    }


def measure(
    workload: Workload,
    backend: str,
    *,
    repeats: int = 5,
    three_processes: bool = True,
    timeout_s: float = 600.0,
    embedded: bool = True,
) -> dict[str, Any]:
    """One row: ``workload`` on ``backend``, one process per party (and embedded, to compare)."""
    program = workload.program
    if three_processes:
        program = program.model_copy(update={"placement": three_party_placement(program.placement)})
    placement = program.placement
    with tempfile.TemporaryDirectory(prefix="pb-bench-") as tmp:
        root = Path(tmp)
        save_program(root / "program", program, workload.weights)
        np.savez(root / "inputs.npz", **workload.inputs())
        records = _launch(root, placement, ["party", str(root), backend, str(repeats)], timeout_s,
                          f"distributed {workload.name} on {backend}")
        reference = _embedded(root, ["embedded", str(root), backend, str(repeats)], timeout_s) if embedded else None

    compute, dealer = placement.compute_parties, placement.dealer
    # every timed run starts together, so a run's wall time is its slowest party's
    walls = [max(records[p]["walls"][i] for p in placement.names) for i in range(repeats)]
    last = {p: records[p]["stats"] for p in placement.names}
    row: dict[str, Any] = {
        "workload": workload.name,
        "backend": backend,
        "processes": len(placement.names),
        "threads_per_process": 1,
        "wall_s": float(np.min(walls)),
        "online_s": float(np.min([max(records[p]["online_walls"][i] for p in placement.names)
                                  for i in range(repeats)])),
        "offline_s": float(np.min([max(records[p]["offline"][i] for p in placement.names) for i in range(repeats)])),
        "setup_s": max(records[p]["setup_s"] for p in placement.names),
        "bytes_per_party": max(_total(last[p], EXCLUDE) for p in compute),
        "rounds": max(_total(last[p], EXCLUDE, index=1) for p in compute),
        "dealer_bytes": _total(last[dealer], ()) if dealer else 0,
    }
    if reference is not None:
        row["embedded_wall_s"] = float(np.min(reference["walls"]))
        row["counts_match"] = all(
            records[p]["stats"] == reference["stats"].get(p, {}) and records[p]["setup"] == reference["setup"].get(p, {})
            for p in placement.names
        )
    return row


def _launch(root: Path, placement: Placement, args: list[str], timeout_s: float, what: str) -> dict[str, Any]:
    """Run ``python -m bridge.bench.distributed ARGS`` as every party, one process each; their records."""
    from bridge.launch import launch_parties
    from bridge.security.keys import keygen

    keygen(placement.names, root / "keys")  # authenticated channels, as in a real deployment
    cluster = ClusterConfig(
        parties=tuple(
            PartyEntry(name=p.name, roles=p.roles, address=f"127.0.0.1:{_free_port()}") for p in placement.parties
        ),
        timeout_s=120.0,
        keys=str(root / "keys"),
    )
    (root / "cluster.toml").write_text(to_toml(cluster))
    log_path = root / "launch.log"
    with log_path.open("w") as log:
        report = launch_parties(root / "cluster.toml", ["-m", "bridge.bench.distributed", *args],
                                timeout_s=timeout_s, stream=log, env=_one_thread_env())
    if report.exit_code != 0:
        raise RuntimeError(f"{what} failed (exit {report.exit_code}):\n" + log_path.read_text()[-4000:])
    return {p: json.loads((root / f"{p}.json").read_text()) for p in placement.names}


def _embedded(root: Path, args: list[str], timeout_s: float) -> dict[str, Any]:
    """The same measurement with every party in threads of one fresh process."""
    subprocess.run([sys.executable, "-m", "bridge.bench.distributed", *args],
                   check=True, env=_one_thread_env(), timeout=timeout_s, capture_output=True)
    return json.loads((root / "embedded.json").read_text())


def measure_training(
    backend: str, *, rows: int = 1024, embedded: bool = True, timeout_s: float = 900.0,
    sizes: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """One ``mlp_train`` row: an epoch of ``rows`` samples in three processes (and embedded)."""
    from bridge.bench.workloads import EPOCH_ROWS, SIZES, mlp_train_program, random_data

    sizes = sizes or SIZES
    program, weights = mlp_train_program(sizes)
    program = program.model_copy(update={"placement": three_party_placement(program.placement)})
    placement = program.placement
    x, y = random_data(rows, sizes=sizes)
    with tempfile.TemporaryDirectory(prefix="pb-bench-train-") as tmp:
        root = Path(tmp)
        save_program(root / "program", program, weights)
        np.savez(root / "data.npz", x=x, y=y)
        records = _launch(root, placement, ["train", str(root), backend, "1"], timeout_s,
                          f"distributed mlp_train on {backend}")
        reference = _embedded(root, ["train-embedded", str(root), backend, "1"], timeout_s) if embedded else None
    compute, dealer = placement.compute_parties, placement.dealer
    last = {p: records[p]["stats"] for p in placement.names}
    row: dict[str, Any] = {
        "workload": "mlp_train" + ("" if rows == EPOCH_ROWS and sizes == SIZES else f" ({rows} rows)"),
        "backend": backend,
        "processes": len(placement.names),
        "threads_per_process": 1,
        "wall_s": max(records[p]["walls"][0] for p in placement.names),
        # training draws its dealer material inline (no offline phase for training yet): all online
        "online_s": max(records[p]["walls"][0] for p in placement.names),
        "offline_s": None,
        "bytes_per_party": max(_total(last[p], EXCLUDE) for p in compute),
        "rounds": max(_total(last[p], EXCLUDE, index=1) for p in compute),
        "dealer_bytes": _total(last[dealer], ()) if dealer else 0,
    }
    if reference is not None:
        row["embedded_wall_s"] = reference["walls"][0]
        row["counts_match"] = all(records[p]["stats"] == reference["stats"].get(p, {}) for p in placement.names)
    return row


def training_rows(
    backends: Iterable[str] = ("torch-spdz", "tf-pond"), *, quick: bool = False, embedded: bool = True
) -> list[dict[str, Any]]:
    """An ``mlp_train`` row per backend (``quick``: 256 rows instead of 1024)."""
    return [measure_training(b, rows=256 if quick else 1024, embedded=embedded) for b in backends]


def distributed_rows(
    workloads: Iterable[Workload],
    backends: Iterable[str] = ("torch-spdz", "tf-pond"),
    *,
    repeats: int = 5,
    embedded: bool = True,
) -> list[dict[str, Any]]:
    """A row per workload and backend (what ``privacy-bridge bench`` prints)."""
    workloads = list(workloads)
    return [measure(w, b, repeats=repeats, embedded=embedded) for b in backends for w in workloads]


def _total(labels: Mapping[str, list[int]], exclude: tuple[str, ...], index: int = 0) -> int:
    return sum(v[index] for k, v in labels.items() if not k.startswith(exclude))


# -- inside the measured processes ---------------------------------------------------------------

def _one_thread(backend: str) -> None:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    if backend == "tf-pond":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def _labels(stats: Any, party: str) -> dict[str, list[int]]:
    return {label: list(v) for label, v in stats.snapshot().get(party, {}).items()}


def _barrier(transport: Any, parties: tuple[str, ...]) -> None:
    """Everyone reports to the first party, which releases them together (raw, uncounted)."""
    leader = parties[0]
    if transport.party == leader:
        for p in parties[1:]:
            if transport.recv(p) != BARRIER:
                raise RuntimeError(f"party {p!r} is out of step with the benchmark barrier")
        for p in parties[1:]:
            transport.send(p, BARRIER)
    else:
        transport.send(leader, BARRIER)
        if transport.recv(leader) != BARRIER:
            raise RuntimeError(f"party {leader!r} is out of step with the benchmark barrier")


def _party_main(root: Path, backend_name: str, repeats: int) -> None:
    _one_thread(backend_name)
    from bridge.cluster import cluster_from_environment
    from bridge.registry import get_backend

    found = cluster_from_environment(os.environ)
    if found is None:
        raise RuntimeError("run the benchmark party through bridge.launch")
    cluster, party = found
    program, weights = load_program(root / "program")
    with np.load(root / "inputs.npz") as data:
        inputs = {k: data[k] for k in data.files}
    placement = program.placement
    mine = {k: v if placement.input_owners[k] == party else np.zeros_like(v) for k, v in inputs.items()}
    start = time.perf_counter()
    executable = get_backend(backend_name).prepare(
        program, weights if party == placement.param_owner else None, cluster=cluster, party=party
    )
    setup_s = time.perf_counter() - start
    transport = executable.parties.transport  # type: ignore[attr-defined]
    executable.run(mine)  # warm-up: first-call costs
    walls, stats = [], None
    for _ in range(repeats):
        _barrier(transport, placement.names)
        start = time.perf_counter()
        stats = executable.run(mine).stats
        walls.append(time.perf_counter() - start)
    batch = next(iter(inputs.values())).shape[0]
    executable.precompute(batch, 1)  # warm-up of the precomputed path
    _barrier(transport, placement.names)
    executable.run(mine)
    online, offline = [], []
    for _ in range(repeats):
        offline.append(executable.precompute(batch, 1))
        _barrier(transport, placement.names)
        start = time.perf_counter()
        executable.run(mine)
        online.append(time.perf_counter() - start)
    record = {"walls": walls, "online_walls": online, "offline": offline, "setup_s": setup_s,
              "stats": _labels(stats, party), "setup": _labels(executable.setup_stats, party)}
    (root / f"{party}.json").write_text(json.dumps(record))


def _training_epoch(executable: Any, program: Program, x: np.ndarray, y: np.ndarray, owner: str) -> None:
    from bridge.reference_train import batch_schedule

    rows = executable.load_data({owner: (x, y)})
    for batch in batch_schedule(rows, program.training.batch_size, 0, seed=0):
        executable.train_batch(batch)


def _training_inputs(root: Path) -> tuple[Program, dict[str, np.ndarray], np.ndarray, np.ndarray, str]:
    program, weights = load_program(root / "program")
    with np.load(root / "data.npz") as data:
        x, y = data["x"], data["y"]
    (owner,) = set(program.placement.input_owners.values())
    return program, weights, x, y, owner


def _train_party_main(root: Path, backend_name: str) -> None:
    """One party of the epoch: connect, meet the others, then time setup + sharing + epoch."""
    _one_thread(backend_name)
    from bridge.cluster import cluster_from_environment
    from bridge.mpc.distributed import connect
    from bridge.registry import get_backend

    found = cluster_from_environment(os.environ)
    if found is None:
        raise RuntimeError("run the benchmark party through bridge.launch")
    cluster, party = found
    program, weights, x, y, owner = _training_inputs(root)
    if party != owner:
        x, y = np.zeros_like(x), np.zeros_like(y)  # only the owner's values are used
    backend = get_backend(backend_name)
    _barrier(connect(backend, cluster, party), program.placement.names)  # prepare reuses this connection
    start = time.perf_counter()
    executable = backend.prepare_training(
        program, weights if party == program.placement.param_owner else None, cluster=cluster, party=party,
        timeout_s=120,
    )
    _training_epoch(executable, program, x, y, owner)
    wall = time.perf_counter() - start
    record = {"walls": [wall], "stats": _labels(executable.parties.stats, party)}
    (root / f"{party}.json").write_text(json.dumps(record))


def _train_embedded_main(root: Path, backend_name: str) -> None:
    _one_thread(backend_name)
    from bridge.registry import get_backend

    program, weights, x, y, owner = _training_inputs(root)
    start = time.perf_counter()
    executable = get_backend(backend_name).prepare_training(program, weights, timeout_s=120)
    _training_epoch(executable, program, x, y, owner)
    wall = time.perf_counter() - start
    stats = executable.parties.stats
    record = {"walls": [wall], "stats": {p: _labels(stats, p) for p in program.placement.names}}
    (root / "embedded.json").write_text(json.dumps(record))


def _embedded_main(root: Path, backend_name: str, repeats: int) -> None:
    _one_thread(backend_name)
    from bridge.registry import get_backend

    program, weights = load_program(root / "program")
    with np.load(root / "inputs.npz") as data:
        inputs = {k: data[k] for k in data.files}
    executable = get_backend(backend_name).prepare(program, weights)
    executable.run(inputs)
    walls, stats = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        stats = executable.run(inputs).stats
        walls.append(time.perf_counter() - start)
    names = program.placement.names
    record = {"walls": walls, "stats": {p: _labels(stats, p) for p in names},
              "setup": {p: _labels(executable.setup_stats, p) for p in names}}
    (root / "embedded.json").write_text(json.dumps(record))


def main(argv: list[str] | None = None) -> int:
    """The measured processes: ``party ROOT BACKEND REPEATS`` (under bridge.launch) or
    ``embedded ROOT BACKEND REPEATS``; ``train`` / ``train-embedded`` for one epoch (REPEATS: 1).  ``privacy-bridge bench`` calls ``distributed_rows``."""
    args = sys.argv[1:] if argv is None else argv
    modes = {"party": _party_main, "embedded": _embedded_main}
    training = {"train": _train_party_main, "train-embedded": _train_embedded_main}
    if len(args) != 4 or args[0] not in (*modes, *training):
        print("usage: python -m bridge.bench.distributed {party,embedded,train,train-embedded} ROOT BACKEND REPEATS",
              file=sys.stderr)
        return 2
    import torch  # noqa: F401 - before TensorFlow

    if args[0] in training:
        training[args[0]](Path(args[1]), args[2])
    else:
        modes[args[0]](Path(args[1]), args[2], int(args[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
