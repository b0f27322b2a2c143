"""Every example and the demo run in a reduced setting, so that none rots."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def _run(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", CI="1")
    env.pop("PRIVACY_BRIDGE_BACKEND", None)
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_there_is_an_example_per_seed_scenario():
    names = {p.stem for p in EXAMPLES}
    assert {"encrypted_training", "encrypted_serving", "federated_hospitals", "logistic_regression"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_and_reports_an_accuracy(example, tmp_path):
    out = _run([sys.executable, str(example), "--quick"], tmp_path)
    accuracies = [float(v) for v in re.findall(r"accuracy[^0-9\n]*([01]\.\d+)", out)]
    assert accuracies, out
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    assert max(accuracies) > 0.5, out  # far above chance on these data sets


def test_demo_prints_the_table_and_writes_the_plot(tmp_path):
    plot = tmp_path / "curves.png"
    out = _run([sys.executable, "-m", "frontends.cli", "demo", "--quick", "--plot", str(plot)], tmp_path)
    assert "plaintext Keras" in out and "encrypted serving" in out
    assert "encrypted training" in out and "federated" in out
    assert re.search(r"\d+\.\d%", out)
    assert plot.exists() and plot.stat().st_size > 1000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


LAUNCHED = [
    ("encrypted_serving", "cluster", "server1", "encrypted accuracy"),
    ("encrypted_training", "training_cluster", "model_owner", "test accuracy after encrypted training"),
    ("federated_hospitals", "federated_cluster", "model_owner", "test accuracy of the federated model"),
]


@pytest.mark.parametrize(("example", "cluster", "reporter", "line"), LAUNCHED, ids=[e for e, *_ in LAUNCHED])
def test_every_example_cluster_file_fits_its_example(example, cluster, reporter, line):
    """Without starting a process (the launches below run in make test-slow): each example's
    cluster file loads and gives the parties its mode needs, the reporting party among them."""
    from bridge.cluster import load_cluster
    from bridge.federated.distributed import FederatedCluster
    from bridge.ir import Role

    config = load_cluster(ROOT / "examples" / f"{cluster}.toml")
    assert not config.insecure and config.keys is not None  # launch makes the keys on first use
    if example == "federated_hospitals":
        assert FederatedCluster.from_cluster(config).owner == reporter
        return
    assert len(config.with_role(Role.COMPUTE)) == 2 and len(config.with_role(Role.DEALER)) == 1
    if example == "encrypted_serving":
        placement = config.placement(["x"], ["y"])  # what privatize makes of the cluster
        config.check_placement(placement)
        assert reporter in placement.output_receivers["y"]
    else:  # encrypted training: one model owner (it reports), the data owners
        assert config.with_role(Role.MODEL_OWNER) == (reporter,) and config.with_role(Role.DATA_OWNER)


@pytest.mark.parametrize(("example", "cluster", "reporter", "line"), LAUNCHED, ids=[e for e, *_ in LAUNCHED])
def test_example_runs_one_process_per_party_with_its_cluster_file(example, cluster, reporter, line, tmp_path):
    """``privacy-bridge launch --cluster examples/X.toml -- examples/Y.py --quick``, on free ports."""
    from bridge.cluster import load_cluster, to_toml
    from tests.distributed.conftest import free_port

    config = load_cluster(ROOT / "examples" / f"{cluster}.toml")
    moved = config.model_copy(update={"parties": tuple(
        p.model_copy(update={"address": f"127.0.0.1:{free_port()}"}) for p in config.parties)})
    (tmp_path / "cluster.toml").write_text(to_toml(moved))
    out = _run([sys.executable, "-m", "frontends.cli", "launch", "--cluster", str(tmp_path / "cluster.toml"), "--",
                str(ROOT / "examples" / f"{example}.py"), "--quick"], tmp_path)
    reported = re.findall(rf"^\[(\w+)\] {line}[^0-9\n]*([01]\.\d+)", out, flags=re.MULTILINE)
    assert reporter in {party for party, _ in reported}, out[-3000:]
    assert all(float(a) > 0.5 for _, a in reported), out[-3000:]
    # every party ran the script to its end, each in its own process
    assert {p.name for p in config.parties} <= set(re.findall(r"^\[(\w+)\] backend: ", out, flags=re.MULTILINE))
