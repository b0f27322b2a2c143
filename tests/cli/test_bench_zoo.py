"""``privacy-bridge bench --zoo`` (``bridge.bench.zoo``): real models served encrypted, one
child process per row so that its peak RSS is its own."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bridge.bench import zoo
from frontends.cli import main
from tests.conformance.test_zoo import ZOO_TOLERANCE
from tests.conftest import SECURE_BACKENDS


def test_an_unknown_zoo_model_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown zoo models \['resnet51'\].*mobilenetv2"):
        zoo.zoo_rows(["resnet51"], ["torch-spdz"])


def test_bench_zoo_runs_each_model_on_each_backend_and_prints_json(monkeypatch, capsys):
    calls = []

    def fake(name, backend_name, **options):
        calls.append((name, backend_name, options["repeats"]))
        return {"model": name, "backend": backend_name, "wall_s": 1.5, "peak_rss_mb": 100.0}

    monkeypatch.setattr(zoo, "measure_in_child", fake)
    assert main(["bench", "--zoo", "--model", "mobilenetv2", "--backend", "torch-spdz", "--backend", "tf-pond",
                 "--quick", "--json"]) == 0
    assert calls == [("mobilenetv2", "torch-spdz", 0), ("mobilenetv2", "tf-pond", 0)]
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(r["model"], r["backend"]) for r in rows] == [("mobilenetv2", "torch-spdz"), ("mobilenetv2", "tf-pond")]
    assert all(r["table"].startswith("Model zoo") for r in rows)


def test_peak_rss_is_the_high_water_mark_of_this_process():
    now = zoo._rss_mb()
    block = np.ones(64 * 2**20 // 8)  # 64 MB touched
    after = zoo._rss_mb()
    assert after >= now + 60 > 60
    assert zoo._peak_rss_mb() >= after - 4  # the kernel's high-water mark trails by a few pages
    del block


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", SECURE_BACKENDS)
def test_a_zoo_row_measured_in_a_child_process(backend_name):
    """The small MobileNetV2 stand-in: counts equal an in-process run's, output within tolerance."""
    from bridge.ir import PrivacyMode
    from bridge.registry import get_backend
    from frontends.keras import to_ir

    row = zoo.measure_in_child("mobilenetv2_32", backend_name, repeats=0, timeout_s=900)
    assert row["model"] == "mobilenetv2_32" and row["backend"] == backend_name and row["input"] == "1x32x32x3"
    assert row["argmax_agrees"] and row["max_abs_error"] < ZOO_TOLERANCE and row["reruns"] == 0
    assert row["peak_rss_mb"] >= row["rss_before_mb"] > 0
    model = zoo.build_model("mobilenetv2_32")
    program, weights = to_ir(model)
    program = program.model_copy(update={"privacy": PrivacyMode.ENCRYPTED_SERVING})
    executable = get_backend(backend_name).prepare(program, weights, timeout_s=300)
    try:
        stats = executable.run({next(iter(program.graph.inputs)): zoo.model_input(model)}).stats
    finally:
        executable.close()
    compute = program.placement.compute_parties
    assert row["bytes_per_party"] == max(stats.total_bytes(p, zoo.EXCLUDE) for p in compute)
    assert row["rounds"] == max(stats.total_rounds(p, zoo.EXCLUDE) for p in compute)
    assert row["dealer_bytes"] == stats.total_bytes(program.placement.dealer)
