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


def _table(out: str) -> list[dict[str, str]]:
    """The rows of inspect's table, cut at the columns its dashes line marks."""
    lines = out.splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line) <= {"-", " "} and line.strip())
    spans, start = [], 0
    for dashes in lines[rule].split("  "):
        spans.append((start, start + len(dashes)))
        start += len(dashes) + 2
    header = [lines[rule - 1][a:b].strip() for a, b in spans]
    rows = []
    for line in lines[rule + 1:]:
        if " rows; total parameters" in line:
            break
        rows.append(dict(zip(header, (line[a:b].strip() for a, b in spans))))
    return rows


def test_inspect_rows_name_every_value_they_use_and_export_counts_them_alike(saved_model, tmp_path, capsys):
    assert main(["inspect", str(saved_model)]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    produced = [row["output"] for row in rows]
    used = [name for row in rows for name in row["inputs"].split(", ") if name]
    assert used and set(used) <= set(produced)  # every input of a row is the output of a row above it
    assert len(set(produced)) == len(rows)
    program, _ = load_program_from(saved_model)
    n_in, n_nodes = len(program.graph.inputs), len(program.graph.nodes)
    assert len(rows) == n_in + n_nodes
    assert f"{n_in} input + {n_nodes} nodes = {len(rows)} rows" in out
    assert main(["export", str(saved_model), str(tmp_path / "ir")]) == 0
    assert f"({n_in} input + {n_nodes} nodes = {len(rows)} rows as in inspect;" in capsys.readouterr().out


def load_program_from(path):
    import keras

    from frontends.keras.importer import to_ir

    return to_ir(keras.models.load_model(path, compile=False))


@pytest.mark.parametrize("command", ["launch", "party"])
def test_launch_and_party_options_all_have_help(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "--cluster FILE" in out and "the cluster file (TOML)" in out
    if command == "launch":
        assert "--timeout SECONDS" in out and "stop every party if the run takes longer (default 600)" in out
    else:
        assert "which party of the file this process is" in out


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
