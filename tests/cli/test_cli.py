"""The privacy-bridge command prints real content."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.ir import load_program
from frontends.cli import main
from tests.conformance.zoo import lenet


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "lenet.keras"
    lenet().save(path)
    return path


def test_backends_lists_modes_and_ops(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "torch-spdz" in out and "tf-pond" in out and "plaintext" in out
    assert "encrypted_serving" in out and "max_pool2d" in out


def test_inspect_prints_nodes_shapes_parameters_and_placement(saved_model, capsys):
    assert main(["inspect", str(saved_model)]) == 0
    out = capsys.readouterr().out
    assert "conv2d" in out and "max_pool2d" in out and "(None, 10, 10, 4)" in out
    # conv 3*3*1*4+4, conv 3*3*4*6+6, dense 24*10+10, dense 10*3+3
    assert f"total parameters: {40 + 222 + 250 + 33}" in out
    assert "server0" in out and "dealer" in out and "model_owner" in out


def test_export_writes_a_loadable_program(saved_model, tmp_path, capsys):
    out_dir = tmp_path / "ir"
    assert main(["export", str(saved_model), str(out_dir)]) == 0
    program, weights = load_program(out_dir)
    assert [n.op.kind for n in program.graph.nodes][:2] == ["conv2d", "relu"]
    assert sum(w.size for w in weights.values()) == 545
    assert main(["inspect", str(out_dir)]) == 0
    assert "total parameters: 545" in capsys.readouterr().out


def test_bad_model_path_is_a_clear_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing.keras")]) == 2
    assert "error" in capsys.readouterr().err


def test_bench_measures_a_workload(capsys):
    assert main(["bench", "--quick", "--backend", "torch-spdz", "--workload", "mlp_infer"]) == 0
    out = capsys.readouterr().out
    assert "mlp_infer" in out and "bytes_per_party" in out
    row = [line for line in out.splitlines() if line.startswith("mlp_infer")][0]
    cells = [c.strip() for c in row.split("|")]
    assert cells[1] == "torch-spdz" and float(cells[2]) > 0
    assert np.isfinite(float(cells[4]))


def test_launch_grace_lets_the_others_finish_after_a_party_fails(tmp_path, capsys):
    import textwrap

    from bridge.cluster import to_toml
    from tests.distributed.conftest import loopback_cluster

    (tmp_path / "cluster.toml").write_text(to_toml(loopback_cluster(["a", "b", "c"])))
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        if os.environ["PRIVACY_BRIDGE_PARTY"] == "b":
            sys.exit(3)
        time.sleep(1.5)
        print("finished", flush=True)
    """))
    args = ["launch", "--cluster", str(tmp_path / "cluster.toml")]
    assert main([*args, "--grace", "30", "--", str(script)]) == 3  # b's status, but a and c were not killed
    out = capsys.readouterr().out
    assert out.count("finished") == 2 and "[launch] killed" not in out
    assert main([*args, "--grace", "0", "--", str(script)]) == 3
    out = capsys.readouterr().out
    assert "finished" not in out and "[launch] killed ['a', 'c']" in out.replace("'c', 'a'", "'a', 'c'")
