"""The distributed benchmark measures real process runs and checks their counts against embedded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bridge.bench_distributed import measure, three_party_placement
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
    assert row["counts_match"] is True
    assert row["wall_s"] > 0 and row["embedded_wall_s"] > 0
    # the relu layer dominates: 4 comparison rounds + bit injection, 2 dense layers, the reveal
    assert row["rounds"] == 8
    assert row["bytes_per_party"] > 0 and row["dealer_bytes"] > 0
