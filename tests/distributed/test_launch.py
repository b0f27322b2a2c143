"""Three parties in three processes on loopback, per backend: the same results and counts as the
embedded mode, and a party killed mid-protocol named by the others within the timeout."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bridge.cluster import ClusterError, cluster_from_dict, load_cluster, to_toml
from bridge.ir import Program, save_program
from bridge.launch import LaunchReport, launch, launch_parties, run_party
from bridge.reference import run_reference
from bridge.reference_train import ReferenceTrainingExecutable, batch_schedule
from bridge.registry import get_backend
from tests.conftest import SECURE_BACKENDS
from tests.distributed.conftest import TIMEOUT_S, loopback_cluster
from tests.distributed.models import CLIENT, batches, tiny_mlp, tiny_training, training_data

SCRIPT = Path(__file__).with_name("party_script.py")
EPOCHS = 2


class LaunchedRun:
    """One ``launch`` of a party script over a loopback cluster, and what each party wrote.
    With ``train_model``, the same processes train it after serving (``party_script.py train``)."""

    def __init__(self, root: Path, backend: str, extra: list[str], timeout_s: float = TIMEOUT_S,
                 model: Callable[[], tuple[Program, dict[str, np.ndarray]]] = tiny_mlp,
                 train_model: Callable[[], tuple[Program, dict[str, np.ndarray]]] | None = None) -> None:
        self.backend = backend
        self.program, self.weights = model()
        save_program(root / "program", self.program, self.weights)
        if train_model is not None:
            self.train_program, self.train_weights = train_model()
            save_program(root / "training", self.train_program, self.train_weights)
            extra = [*extra, "train", str(root / "training"), str(EPOCHS)]
        self.cluster = loopback_cluster(timeout_s=timeout_s)
        (root / "cluster.toml").write_text(to_toml(self.cluster))
        self.out = root / "out"
        self.out.mkdir()
        self.log = io.StringIO()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.report: LaunchReport = launch_parties(
            root / "cluster.toml",
            [str(SCRIPT), str(root / "program"), backend, str(self.out), *extra],
            timeout_s=180,
            grace_s=30,
            stream=self.log,
            env=env,
        )

    @classmethod
    def saved(cls, root: Path, backend: str, report: LaunchReport, log: str,
              train_model: Callable[[], tuple[Program, dict[str, np.ndarray]]]) -> LaunchedRun:
        """A run made earlier in ``root`` (by another test, maybe in another worker), as made."""
        run = cls.__new__(cls)
        run.backend, run.report, run.log = backend, report, io.StringIO(log)
        run.program, run.weights = tiny_mlp()
        run.train_program, run.train_weights = train_model()
        run.cluster = load_cluster(root / "cluster.toml")
        run.out = root / "out"
        return run

    def record(self, party: str, part: str = "") -> dict:
        path = self.out / f"{party}{part}.json"
        assert path.exists(), f"party {party} wrote nothing; its output:\n{self.output(party)}"
        return json.loads(path.read_text())

    def output(self, party: str) -> str:
        return "".join(line for line in self.log.getvalue().splitlines(True) if line.startswith(f"[{party}]"))


@pytest.fixture(params=SECURE_BACKENDS)
def launched(request, shared_run) -> LaunchedRun:
    """One launch per backend and session, shared by the serving and the training test: three
    processes serve ``tiny_mlp``, then train ``tiny_training`` over the same transports."""
    backend = request.param

    def make(where: Path) -> dict:
        run = LaunchedRun(where, backend, [], timeout_s=30.0, train_model=tiny_training)
        return {"root": str(where), "report": dataclasses.asdict(run.report), "log": run.log.getvalue()}

    saved = shared_run(f"launch-{backend}", make)
    return LaunchedRun.saved(Path(saved["root"]), backend, LaunchReport(**saved["report"]), saved["log"],
                             train_model=tiny_training)


def counts(stats) -> dict:
    return {party: {label: list(v) for label, v in labels.items()} for party, labels in stats.snapshot().items()}


def test_serving_matches_embedded_with_identical_counts(launched):
    run = launched
    assert run.report.killed == [], run.log.getvalue()[-3000:]
    # the serving part ended well in every process (the training test checks the exit statuses)
    assert all("error" not in run.record(p) for p in run.cluster.names), run.log.getvalue()[-3000:]

    embedded = get_backend(run.backend).prepare(run.program, run.weights)
    setup = counts(embedded.setup_stats)
    per_run = []
    outputs = []
    for x in batches():
        result = embedded.run({"x": x})
        per_run.append(counts(result.stats))
        outputs.append(result.outputs["y"])

    for party in run.cluster.names:
        record = run.record(party)
        # each process counts its own party's traffic, label by label, as the embedded mode does
        assert record["setup_stats"] == {party: setup[party]}
        assert record["run_stats"] == [{party: r[party]} for r in per_run]
        if party != CLIENT:
            assert record["outputs"] == [{}, {}]
    received = run.record(CLIENT)["outputs"]
    for x, got, want in zip(batches(), received, outputs, strict=True):
        reference = run_reference(run.program, run.weights, {"x": x})["y"]
        np.testing.assert_allclose(np.array(got["y"]), want, atol=2e-3)
        np.testing.assert_allclose(np.array(got["y"]), reference, atol=2e-3)


def _train(executable, epochs: int) -> list[tuple[float, float]]:
    x, y = training_data()
    rows = executable.load_data({CLIENT: (x, y)})
    steps = []
    for epoch in range(epochs):
        for batch in batch_schedule(rows, executable.program.training.batch_size, epoch, seed=0):
            step = executable.train_batch(batch)
            steps.append((step.loss, step.metrics["accuracy"]))
    return steps


def test_training_matches_embedded_with_identical_counts(launched):
    """The processes that served go on to train (the serving test's launch): the counts of the
    training executable are its own, as embedded."""
    run = launched
    assert run.report.exit_code == 0, run.log.getvalue()[-3000:]
    program, weights = run.train_program, run.train_weights

    embedded = get_backend(run.backend).prepare_training(program, weights, metrics=("accuracy",))
    setup = counts(embedded.setup_stats)
    steps, step_counts = [], []
    x, y = training_data()
    rows = embedded.load_data({CLIENT: (x, y)})
    for epoch in range(EPOCHS):
        for batch in batch_schedule(rows, program.training.batch_size, epoch, seed=0):
            step = embedded.train_batch(batch)
            steps.append((step.loss, step.metrics["accuracy"]))
            step_counts.append(counts(step.stats))
    embedded_weights = embedded.weights()
    plain = ReferenceTrainingExecutable(program, weights, metrics=("accuracy",))
    reference_steps = _train(plain, EPOCHS)
    reference_weights = plain.weights()

    owner = program.placement.param_owner
    for party in run.cluster.names:
        record = run.record(party, ".train")
        assert record["setup_stats"] == {party: setup[party]}
        assert record["step_stats"] == [{party: c[party]} for c in step_counts]
        # only the model owner learns the loss, the metrics and the trained weights
        if party == owner:
            got = np.array(record["losses"])
            np.testing.assert_allclose(got, np.array(reference_steps), atol=5e-3)
            np.testing.assert_allclose(got, np.array(steps), atol=5e-3)
            for name, value in reference_weights.items():
                np.testing.assert_allclose(np.array(record["weights"][name]), value, atol=5e-3)
                np.testing.assert_allclose(np.array(record["weights"][name]), embedded_weights[name], atol=5e-3)
        else:
            assert record["losses"] == [None] * len(steps) and record["weights"] == {}
    # the model kept shared answers the client's query, and only the client
    served = run.record(CLIENT, ".train")["served"]["p"]
    want = run_reference(program, reference_weights, {"x": batches()[0]})["p"]
    np.testing.assert_allclose(np.array(served), want, atol=5e-3)
    assert all(run.record(p, ".train")["served"] == {} for p in run.cluster.names if p != CLIENT)
    assert reference_steps[-1][0] < reference_steps[0][0]  # it learned something


@pytest.mark.parametrize(
    ("backend", "victim"),
    [(b, "dealer") for b in SECURE_BACKENDS] + [("torch-spdz", "server1")],
)
def test_party_killed_mid_protocol_is_named_by_the_others(tmp_path, backend, victim):
    run = LaunchedRun(tmp_path, backend, ["fault", victim, "3"])
    report = run.report
    log = run.log.getvalue()
    own_lines = "\n".join(line for line in log.splitlines() if line.startswith(f"[{victim}]"))
    assert report.returncodes[victim] == -9, f"{victim} exited {report.returncodes[victim]}:\n{own_lines[-3000:]}\n" \
        f"--- the end of the whole log:\n{log[-3000:]}"
    assert report.first_failure == victim
    assert report.killed == [], f"the launcher had to kill {report.killed}: they hung\n{log[-3000:]}"
    killed_at = float(json.loads((run.out / f"{victim}.killed").read_text())["killed_at"])
    failed = 0
    for party in run.cluster.names:
        if party == victim:
            continue
        record = run.record(party)
        if "error" not in record:
            # only a party that never waits on the victim may finish its part (the dealer only sends)
            assert party == "dealer" and report.returncodes[party] == 0, record
            continue
        failed += 1
        assert report.returncodes[party] == 1
        assert f"'{victim}'" in record["error"], record["error"]
        assert "PeerError" in record["error"]
        assert record["failed_at"] - killed_at < TIMEOUT_S, record
        # and it exits by itself (the launcher killed nobody); TensorFlow's teardown alone takes seconds
        assert report.exit_times[party] - report.exit_times[victim] < TIMEOUT_S + 10.0
    assert failed >= 1


def test_launch_stops_everyone_on_the_first_failure_and_reaps_them(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        party = os.environ["PRIVACY_BRIDGE_PARTY"]
        print("hello from", party, "args", sys.argv[1:], flush=True)
        if party == "b":
            sys.exit(3)
        time.sleep(60)
    """))
    config = loopback_cluster(["a", "b", "c"])
    (tmp_path / "cluster.toml").write_text(to_toml(config))
    log = io.StringIO()
    start = time.monotonic()
    report = launch_parties(tmp_path / "cluster.toml", ["--", str(script), "--flag"], timeout_s=60, grace_s=0.5,
                            stream=log)
    assert time.monotonic() - start < 10
    assert report.exit_code == 3 and report.first_failure == "b"
    assert sorted(report.killed) == ["a", "c"]
    assert report.returncodes["a"] < 0 and report.returncodes["c"] < 0
    text = log.getvalue()
    for party in "abc":
        assert f"[{party}] hello from {party} args ['--flag']" in text
    assert "[launch] party 'b' exited with status 3" in text

    ok = tmp_path / "ok.py"
    ok.write_text("import os; print(os.environ['PRIVACY_BRIDGE_CLUSTER'].endswith('cluster.toml'))\n")
    log = io.StringIO()
    assert launch(tmp_path / "cluster.toml", [str(ok)], timeout_s=60, stream=log) == 0
    assert log.getvalue().count("True") == 3

    slow = tmp_path / "slow.py"
    slow.write_text("import time; time.sleep(60)\n")
    log = io.StringIO()
    assert launch(tmp_path / "cluster.toml", [str(slow)], timeout_s=1, stream=log) == 124
    assert "longer than 1 s" in log.getvalue()


def test_launch_refuses_remote_hosts(tmp_path):
    config = cluster_from_dict({"parties": [
        {"name": "a", "roles": ["compute"], "address": "127.0.0.1:7000"},
        {"name": "b", "roles": ["compute"], "address": "192.0.2.1:7000"},  # TEST-NET-1: never local
    ]})
    (tmp_path / "cluster.toml").write_text(to_toml(config))
    with pytest.raises(ClusterError, match=r"'b' at 192.0.2.1:7000 is elsewhere"):
        launch(tmp_path / "cluster.toml", ["script.py"])


def test_run_party_sets_the_environment_and_returns_the_exit_status(tmp_path, monkeypatch):
    config = loopback_cluster(["a", "b"])
    (tmp_path / "cluster.toml").write_text(to_toml(config))
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from bridge.cluster import cluster_from_environment
        config, party = cluster_from_environment(os.environ)
        sys.exit(int(sys.argv[1]) + config.rank(party))
    """))
    monkeypatch.setattr(os, "environ", dict(os.environ))
    argv = list(sys.argv)
    assert run_party(tmp_path / "cluster.toml", "b", [str(script), "40"]) == 41
    assert os.environ["PRIVACY_BRIDGE_PARTY"] == "b"
    assert sys.argv == argv
    assert run_party(tmp_path / "cluster.toml", "a", ["-m", "json.tool", "--help"]) == 0
    with pytest.raises(ClusterError, match="'zed' is not in the cluster"):
        run_party(tmp_path / "cluster.toml", "zed", [str(script)])
    with pytest.raises(ValueError, match="no script to run"):
        run_party(tmp_path / "cluster.toml", "a", [])
