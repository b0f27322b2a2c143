"""Federated training with one process per party: the model owner, two aggregators, the clients.

The same Keras script runs embedded and under ``launch``; the global model, the metrics and
every party's traffic match, and a client killed mid-share is dropped while the rest finish.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from bridge.cluster import ClusterError, to_toml
from bridge.federated import FedAvg, FedAvgConfig
from bridge.federated.distributed import BROADCAST_LABEL, GO, DistributedFedAvg, FederatedCluster
from bridge.ir import Numerics, Role
from bridge.launch import launch_parties
from bridge.mpc.comm import InMemoryNetwork, PeerError
from bridge.mpc.distributed import DistributedParty
from bridge.mpc.numpy_kernels import NumpyKernels
from tests.conftest import SECURE_BACKENDS
from tests.distributed.conftest import loopback_cluster, run_embedded, script_env

SCRIPT = Path(__file__).with_name("federated_script.py")
CLIENTS = ("alice", "bob", "carol")
#: the script's model: Dense(6 -> 8) and Dense(8 -> 3), kernels and biases
PARAMETERS = 6 * 8 + 8 + 8 * 3 + 3
ROUNDS = 2


def _roles(clients: tuple[str, ...]) -> dict[str, frozenset[Role]]:
    roles = {"model_owner": frozenset({Role.MODEL_OWNER}), "aggregator0": frozenset({Role.COMPUTE}),
             "aggregator1": frozenset({Role.COMPUTE})}
    roles.update({c: frozenset({Role.DATA_OWNER}) for c in clients})
    return roles




def _results(text: str) -> dict[str, dict]:
    found = [json.loads(line.split("RESULT ", 1)[1]) for line in text.splitlines() if "RESULT " in line]
    return {r["party"]: r for r in found}


def _launched(tmp_path: Path, backend: str, clients: int, extra: list[str]) -> tuple[dict[str, dict], object, str]:
    cluster = loopback_cluster(_roles(CLIENTS[:clients]), timeout_s=15.0)
    (tmp_path / "cluster.toml").write_text(to_toml(cluster))
    log = io.StringIO()
    # a dead client must not stop the run: give the others time to finish without it
    report = launch_parties(tmp_path / "cluster.toml", [str(SCRIPT), str(clients), str(ROUNDS), *extra],
                            timeout_s=300, grace_s=120, stream=log, env=script_env(backend))
    return _results(log.getvalue()), report, log.getvalue()


@pytest.fixture
def embedded_two_clients(shared_run):
    """``run(backend)``: the embedded 2-client, ROUNDS-round result of the script, made once per
    backend and session for the launched tests (a Keras process: seconds of CPU)."""

    def run(backend: str) -> dict:
        return shared_run(f"federated-embedded-{backend}",
                          lambda where: _results(run_embedded(SCRIPT, ["2", str(ROUNDS)], backend, where))["embedded"])

    return run


@pytest.fixture
def carol_killed(shared_run):
    """``run(backend)``: the launched 3-client run in which carol's process SIGKILLs itself in
    round 1 after its first share reached aggregator 0, made once per backend and session for
    the tests that check its two sides (six Keras processes: the suite's costliest launch)."""

    def run(backend: str) -> dict:
        def make(where: Path) -> dict:
            results, report, log = _launched(where, backend, 3, ["kill", "carol"])
            return {"results": results, "returncodes": report.returncodes, "killed": report.killed,
                    "log": log[-3000:]}

        return shared_run(f"federated-carol-killed-{backend}", make)

    return run


#: what each client uploads per round: its update, its loss and accuracy, its sample weight
LENGTH = PARAMETERS + 2 + 1


def _assert_the_two_client_model(results: dict[str, dict], alone: dict, metrics: tuple[str, ...]) -> None:
    """A launched run ended as the embedded 2-client run: the same global model and ``metrics``
    at the owner (the secure sum is exact in the ring), that model at alice and bob (the
    aggregators never see it), and alice's and bob's uploads (2 * 8 LENGTH bytes a round)."""
    assert sorted(results) == ["aggregator0", "aggregator1", "alice", "bob", "model_owner"], sorted(results)
    owner = results["model_owner"]
    for got, want in zip(owner["weights"], alone["weights"], strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    for key in metrics:
        np.testing.assert_allclose(owner["logs"][key], alone["logs"][key], atol=1e-6)
    for client in ("alice", "bob"):
        for got, want in zip(results[client]["weights"], owner["weights"], strict=True):
            np.testing.assert_allclose(got, want, atol=0)
        assert results[client]["logs"]["bytes_sent"] == [2 * 8 * LENGTH] * ROUNDS
    assert sum(results[c]["logs"]["bytes_sent"][0] for c in ("alice", "bob")) == alone["logs"]["upload_bytes"][0]


def _aggregator_bytes(clients: int, length: int) -> int:
    """What an aggregator sends in a round of ``clients`` clients: who arrived (a bit each) and
    its share of the sum of the arrived updates of ``length`` values plus the count."""
    return (clients + 7) // 8 + 8 * (clients + length)


def _owner_bytes(clients: int) -> int:
    """What the model owner sends in a round: [go, r] and the weights to each client, [go, r] to
    each aggregator."""
    return clients * 8 * (2 + PARAMETERS) + 2 * 8 * 2


@pytest.mark.parametrize("backend", SECURE_BACKENDS)
def test_federated_rounds_across_processes_match_embedded(tmp_path, backend, embedded_two_clients):
    alone = embedded_two_clients(backend)

    results, report, log = _launched(tmp_path, backend, 2, [])
    assert report.exit_code == 0 and report.killed == [], log[-3000:]
    _assert_the_two_client_model(results, alone, ("loss", "accuracy", "clients_used", "clients_dropped"))
    # exact traffic: each aggregator 1 + 8 (m + L) bytes, as embedded; the owner broadcasts
    # [go, r] and the weights to 2 clients, [go, r] to 2 aggregators
    for aggregator in ("aggregator0", "aggregator1"):
        assert results[aggregator]["logs"]["bytes_sent"] == [_aggregator_bytes(2, LENGTH)] * ROUNDS
        assert results[aggregator]["logs"]["bytes_sent"] == alone["logs"]["bytes_per_party"]
    assert results["model_owner"]["logs"]["bytes_sent"] == [_owner_bytes(2)] * ROUNDS


@pytest.mark.parametrize("backend", SECURE_BACKENDS)
def test_the_survivors_of_a_killed_client_match_the_embedded_two_client_run(backend, carol_killed,
                                                                            embedded_two_clients):
    """Once carol is dropped, the launched run is the 2-client one: the same global model,
    metrics and traffic as the embedded 2-client run, carol's round-1 share discarded."""
    run, alone = carol_killed(backend), embedded_two_clients(backend)
    results = run["results"]
    _assert_the_two_client_model(results, alone, ("loss", "accuracy", "clients_used"))
    assert results["model_owner"]["logs"]["clients_dropped"] == [1] * ROUNDS
    # exact traffic: carol stays on the aggregators' roster (a bit and an 8-byte word for her in both
    # rounds, marked absent); the owner stops broadcasting to her in round 2
    for aggregator in ("aggregator0", "aggregator1"):
        assert results[aggregator]["logs"]["bytes_sent"] == [_aggregator_bytes(3, LENGTH)] * ROUNDS
    assert results["model_owner"]["logs"]["bytes_sent"] == [_owner_bytes(3), _owner_bytes(2)]


@pytest.mark.parametrize("backend", SECURE_BACKENDS)
def test_a_client_killed_mid_share_is_dropped_and_the_others_finish(backend, carol_killed):
    run = carol_killed(backend)
    results, codes, log = run["results"], run["returncodes"], run["log"]
    assert codes["carol"] == -9, log
    assert run["killed"] == [], f"the launcher had to kill {run['killed']}: they hung\n{log}"
    assert all(codes[p] == 0 for p in results), log
    assert sorted(results) == ["aggregator0", "aggregator1", "alice", "bob", "model_owner"]
    rounds = results["model_owner"]["rounds"]
    assert [r["included"] for r in rounds] == [["alice", "bob"]] * ROUNDS
    # round 1: its share reached aggregator 0 only and was discarded; round 2: its process is gone
    assert "did not reach both aggregators" in rounds[0]["dropped"]["carol"]
    assert "its process is gone" in rounds[1]["dropped"]["carol"] and "'carol'" in rounds[1]["dropped"]["carol"]


# -- the protocol in threads, over in-memory transports -------------------------------------------

def _parties(clients: tuple[str, ...]) -> tuple[FederatedCluster, dict[str, DistributedParty]]:
    from bridge.cluster import ClusterConfig, PartyEntry

    roles = _roles(clients)
    config = ClusterConfig(parties=tuple(PartyEntry(name=n, roles=r, address=f"127.0.0.1:{7000 + i}")
                                         for i, (n, r) in enumerate(roles.items())))
    cluster = FederatedCluster.from_cluster(config)
    network = InMemoryNetwork(list(roles), timeout_s=2.0)
    kernels = NumpyKernels()
    runners = {n: DistributedParty(network.transport(n), kernels, Numerics(), cluster.aggregators, "(no dealer)")
               for n in roles}
    return cluster, runners


def test_the_cluster_roles_give_the_federated_parts_and_refuse_a_party_with_two():
    cluster, _ = _parties(("alice", "bob"))
    assert cluster.owner == "model_owner"
    assert cluster.aggregators == ("aggregator0", "aggregator1")
    assert cluster.clients == ("alice", "bob")
    config = loopback_cluster({"model_owner": frozenset({Role.MODEL_OWNER}),
                               "a0": frozenset({Role.COMPUTE, Role.DATA_OWNER}), "a1": frozenset({Role.COMPUTE})})
    with pytest.raises(ClusterError, match=r"parties \['a0'\] have two federated parts"):
        FederatedCluster.from_cluster(config)
    config = loopback_cluster({"a0": frozenset({Role.COMPUTE}), "c": frozenset({Role.DATA_OWNER})})
    with pytest.raises(ClusterError, match="exactly one model_owner.*exactly two compute parties"):
        FederatedCluster.from_cluster(config)


def test_a_round_header_out_of_step_is_rejected_naming_the_owner():
    cluster, runners = _parties(("alice", "bob"))

    class Trainer:
        def __call__(self, client, weights, round_index):
            raise AssertionError("an aggregator never trains")

    weights = [np.zeros((2, 2), np.float32)]
    fedavg = FedAvg(cluster.clients, Trainer(), None, FedAvgConfig(rounds=1))
    follower = DistributedFedAvg(fedavg, runners["aggregator0"], cluster, ("loss",))
    owner = runners["model_owner"].contexts["model_owner"]
    with owner.messenger.label(BROADCAST_LABEL):
        owner.messenger.send("aggregator0", np.array([GO, 5], np.int64))  # round 5, while it expects round 0
    with pytest.raises(PeerError, match="'model_owner' sent a round header.*out of step"):
        follower.follow_round(0, weights)


def test_keras_metric_names_are_the_keys_of_fit_history():
    import keras

    from frontends.keras.federated import keras_metric_names

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy", "mae"])
    names = keras_metric_names(model)
    history = model.fit(np.zeros((4, 4)), np.eye(3)[[0, 1, 2, 0]], verbose=0)
    assert names == tuple(sorted(history.history)) == ("accuracy", "loss", "mae")


def test_a_trusted_aggregator_is_refused_across_processes():
    import keras

    from bridge.backend import BackendError
    from frontends.keras.federated import fit_federated

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    config = loopback_cluster(_roles(("alice", "bob")))
    data = {"alice": (np.zeros((4, 4)), np.zeros(4))}
    with pytest.raises(BackendError, match="always aggregates securely"):
        fit_federated(model, "torch-spdz", data, rounds=1, secure_aggregation=False, cluster=(config, "alice"))
    with pytest.raises(ValueError, match=r"names \['zed'\], which are not data_owner parties"):
        fit_federated(model, "torch-spdz", {"zed": data["alice"]}, rounds=1, cluster=(config, "alice"))
    with pytest.raises(ValueError, match="this process is client 'bob', but data_by_client has no entry"):
        fit_federated(model, "torch-spdz", data, rounds=1, cluster=(config, "bob"))


class _StepTrainer:
    """Moves every weight by a client-specific step; reports its sample count and a loss."""

    steps = {"alice": 0.01, "bob": -0.03}
    samples = {"alice": 30, "bob": 20}

    def __call__(self, client, weights, round_index):
        from bridge.federated import LocalResult

        return LocalResult([w + self.steps[client] for w in weights], self.samples[client], {"loss": 1.0 + round_index})

    @classmethod
    def mean_step(cls) -> float:
        return sum(cls.steps[c] * cls.samples[c] for c in cls.steps) / sum(cls.samples.values())


def _play(config: FedAvgConfig, weights: list[np.ndarray], trainer: object = None) -> dict[str, object]:
    """Every party of a FedAvg run in its own thread, each over its own in-memory transport."""
    cluster, runners = _parties(("alice", "bob"))
    results: dict[str, object] = {}

    def party(name: str) -> None:
        fedavg = FedAvg(cluster.clients, trainer or _StepTrainer(), None, config)
        federated = DistributedFedAvg(fedavg, runners[name], cluster, ("loss",))
        try:
            if federated.is_owner:
                w, rounds = weights, []
                for r in range(config.rounds):
                    rounds.append(federated.run_round(r, w))
                    w = rounds[-1].weights
                federated.finish(config.rounds, w)
                results[name] = rounds
            else:
                followed, r = [], 0
                while not (f := federated.follow_round(r, weights)).stopped:
                    followed.append(f)
                    r += 1
                results[name] = (followed, f.final)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            results[name] = exc

    threads = [threading.Thread(target=party, args=(n,)) for n in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_distributed_rounds_average_exactly_and_every_client_ends_with_the_global_model():
    weights = [np.zeros((2, 2), np.float32), np.zeros(3, np.float32)]
    results = _play(FedAvgConfig(rounds=2), weights)
    rounds = results["model_owner"]
    assert not isinstance(rounds, BaseException), rounds
    step = _StepTrainer.mean_step()  # (30 * 0.01 - 20 * 0.03) / 50 = -0.006
    for r, result in enumerate(rounds):
        assert result.included == ("alice", "bob") and result.dropped == {}
        assert result.metrics == {"loss": pytest.approx(1.0 + r, abs=1e-4)}
        np.testing.assert_allclose(result.weights[0], np.full((2, 2), step * (r + 1)), atol=1e-4)
    for client in ("alice", "bob"):
        followed, final = results[client]
        assert len(followed) == 2 and all(f.withdrew == "" for f in followed)
        for got, want in zip(final, rounds[-1].weights, strict=True):
            np.testing.assert_array_equal(got, want)
    for aggregator in ("aggregator0", "aggregator1"):
        followed, final = results[aggregator]
        assert final is None and len(followed) == 2
        length = 7 + 1 + 1  # the update, the loss, the sample weight
        assert [f.stats.total_bytes(aggregator) for f in followed] == [1 + 8 * (2 + length)] * 2


def test_distributed_rounds_with_dp_noise_release_a_noised_mean_only():
    weights = [np.zeros((40, 50), np.float32)]
    results = _play(FedAvgConfig(rounds=1, clip_norm=1.0, noise_multiplier=1.0, min_clients=2), weights)
    (result,) = results["model_owner"]
    assert result.metrics == {} and result.epsilon is not None and result.epsilon > 0
    # alice's update (0.01 on 2000 weights) has norm 0.45 and stays; bob's (-0.03) has norm 1.34 and
    # is clipped to 1; with DP every client weighs 1, and the sum carries N(0, (z C)^2) noise per
    # entry: the released mean is theirs plus noise of standard deviation z C / m = 0.5
    clean = (0.01 - 1.0 / np.sqrt(2000)) / 2
    noise = result.weights[0].ravel() - clean
    assert abs(float(np.mean(noise))) < 0.05 and 0.45 < float(np.std(noise)) < 0.55


class _BobFails(_StepTrainer):
    def __call__(self, client, weights, round_index):
        if client == "bob":
            raise RuntimeError("bob's disk is full")
        return super().__call__(client, weights, round_index)


def test_a_client_whose_training_fails_withdraws_and_nobody_waits_for_it():
    weights = [np.zeros(3, np.float32)]
    results = _play(FedAvgConfig(rounds=1, min_clients=1), weights, _BobFails())
    (result,) = results["model_owner"]
    assert result.included == ("alice",) and "withdrew" in result.dropped["bob"]
    np.testing.assert_allclose(result.weights[0], np.full(3, 0.01), atol=1e-4)  # alice's step alone
    (followed,), _ = results["bob"]
    assert followed.withdrew == "RuntimeError: bob's disk is full"
    # it withdrew at once with an empty share to each aggregator: no timeout was waited out
    assert followed.stats.total_bytes("bob") == 0 and followed.stats.total_rounds("bob") == 1
