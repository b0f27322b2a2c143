"""``privacy-bridge bench``: JSON lines for tools, and the kernel table."""

from __future__ import annotations

import json

from frontends.cli import main


def test_bench_json_is_one_object_per_row_on_stdout(capsys):
    assert main(["bench", "--quick", "--backend", "torch-spdz", "--workload", "mlp_infer", "--json"]) == 0
    captured = capsys.readouterr()
    (line,) = captured.out.strip().splitlines()
    row = json.loads(line)
    assert row["table"].startswith("Inference") and row["workload"] == "mlp_infer" and row["backend"] == "torch-spdz"
    assert isinstance(row["bytes_per_party"], int) and isinstance(row["rounds"], int) and row["rounds"] > 0
    assert row["ratio"] == row["wall_s"] / row["plaintext_torch_s"]
    assert row["online_s"] > 0 and row["offline_s"] > 0  # the query with its material made before, and that making
    assert "mlp_infer | torch-spdz" in captured.err  # the text table, for a person watching


def test_bench_kernels_prints_each_shape_class_and_its_fastest_path(monkeypatch, tmp_path, capsys):
    import bridge.bench.kernels as bench_kernels
    from bridge.registry import get_backend

    monkeypatch.setenv("PRIVACY_BRIDGE_CACHE_DIR", str(tmp_path))

    def prime(name: str) -> None:  # two shape classes instead of every workload, as party threads run them
        kernels = get_backend(name).make_kernels()
        with kernels.parallel_parties(3):
            for m, k, n in ((8, 40, 8), (64, 3, 5)):
                kernels.matmul(kernels.zeros((m, k)), kernels.zeros((k, n)))

    monkeypatch.setattr(bench_kernels, "prime", prime)
    assert main(["bench", "--kernels", "--backend", "torch-spdz", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["shape_class"] for r in rows] == ["matmul 64x4x8", "matmul 8x64x8"]
    for row in rows:
        times = {p: row[f"{p}_ms"] for p in ("int64", "limbs", "limbs16")}
        assert row["choice"] == min(times, key=times.get) and row["backend"] == "torch-spdz"
    assert (tmp_path / "kernel-choices.json").exists()
