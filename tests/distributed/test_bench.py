"""The distributed benchmark measures real process runs and checks their counts against embedded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bridge.bench.distributed import measure, three_party_placement
from bridge.ir import Placement, Program
from tests.distributed.models import tiny_mlp


@dataclass
class TinyWorkload:
    name: str
    program: Program
    weights: dict[str, np.ndarray]

    def inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        return {"x": np.random.default_rng(seed).uniform(-1, 1, size=(4, 6))}


def test_three_party_placement_folds_owners_onto_compute_parties():
    placement = three_party_placement(Placement.default(["x"], ["y"]))
    assert placement.names == ("server0", "server1", "dealer")
    assert placement.param_owner == "server0"
    assert placement.input_owners == {"x": "server1"} and placement.output_receivers == {"y": ("server1",)}


def test_measure_reports_process_figures_and_counts_equal_to_embedded():
    program, weights = tiny_mlp()
    program = program.model_copy(update={"placement": Placement.default(["x"], ["y"])})
    row = measure(TinyWorkload("tiny", program, weights), "torch-spdz", repeats=2)
    assert row["processes"] == 3 and row["threads_per_process"] == 1
    assert row["online_s"] > 0 and row["offline_s"] > 0
    assert row["counts_match"] is True
    assert row["wall_s"] > 0 and row["embedded_wall_s"] > 0
    # the row's figures are one run's, as embedded: a compute party's traffic, sharing excluded
    from bridge.registry import get_backend

    placement = three_party_placement(program.placement)
    folded = program.model_copy(update={"placement": placement})
    stats = get_backend("torch-spdz").prepare(folded, weights).run(TinyWorkload("tiny", program, weights).inputs()).stats
    compute = placement.compute_parties
    assert row["rounds"] == max(stats.total_rounds(p, ("share:",)) for p in compute)
    assert row["bytes_per_party"] == max(stats.total_bytes(p, ("share:",)) for p in compute)
    assert row["dealer_bytes"] == stats.total_bytes("dealer")
    # without serving's range check: 4 comparison rounds + bit injection, 2 dense layers, the reveal
    plain = get_backend("torch-spdz").prepare(folded, weights, check_overflow=False)
    stats = plain.run(TinyWorkload("tiny", program, weights).inputs()).stats
    assert max(stats.total_rounds(p, ("share:",)) for p in compute) == 8


def test_training_row_counts_one_epoch_in_three_processes_as_embedded():
    from bridge.bench.distributed import measure_training

    row = measure_training("torch-spdz", rows=32, sizes=(12, 8, 4))
    assert row["processes"] == 3 and row["threads_per_process"] == 1
    assert row["counts_match"] is True
    assert row["wall_s"] > 0 and row["embedded_wall_s"] > 0
    assert row["workload"] == "mlp_train (32 rows)"
    # the row's figures are what a compute party sends in setup + epoch, sharing excluded
    from bridge.bench.workloads import mlp_train_program, random_data
    from bridge.registry import get_backend

    program, weights = mlp_train_program((12, 8, 4))
    program = program.model_copy(update={"placement": three_party_placement(program.placement)})
    executable = get_backend("torch-spdz").prepare_training(program, weights)
    executable.load_data({"server1": random_data(32, sizes=(12, 8, 4))})
    executable.train_batch(np.arange(32))
    stats = executable.parties.stats
    assert row["bytes_per_party"] == max(stats.total_bytes(p, ("share:",)) for p in ("server0", "server1"))
    assert row["rounds"] == max(stats.total_rounds(p, ("share:",)) for p in ("server0", "server1"))
    assert row["dealer_bytes"] == stats.total_bytes("dealer")
