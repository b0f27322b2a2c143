"""The service with its three parties in threads of this process (the short version of
test_service.py, which runs one process per party): four clients at once, good / bad /
good from each, every good answer checked; the operator counters exact, and refused to
a client that is not an operator; an unknown client refused at the handshake; server1
stalled (it stops answering) with clients waiting, each told within timeout_s; server1
stopped and started again from its stored share, without the model owner."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from bridge.mpc import wire
from bridge.registry import get_backend
from bridge.security.keys import keygen
from bridge.serving.channel import OperatorOnlyError, ServingError
from bridge.serving.client import ServiceUnavailableError, ServingClient, deploy
from bridge.serving.config import load_service
from bridge.serving.node import ServingNode
from frontends.cli import main
from frontends.keras.client import connect
from tests.distributed.models import tiny_mlp
from tests.serving.helpers import (
    ATOL,
    CLIENTS,
    PARTIES,
    SESSION_ERRORS,
    SESSION_REQUESTS,
    check_sessions,
    client_session,
    make_service,
    plaintext,
)
from tests.serving.helpers import wait_nodes_ready as wait_ready


#: the cluster's timeout_s: what a client waits at most for a stalled party
TIMEOUT_S = 10.0


def stall(node: ServingNode) -> threading.Event:
    """Make ``node`` stop answering, as a paused process would (test_service.py pauses one
    with SIGSTOP): its heartbeats to the other parties stop, and its client connections
    and its next MPC step block until the returned event is set. The step blocks in
    ``_expire``, which every follower step calls holding the queue's lock, so that new
    requests block too."""
    gate = threading.Event()
    handle, expire = node._handle, node._expire
    node._transport._beating.set()  # a paused process sends no heartbeats: the peers can tell who stalled

    def blocked_handle(conn, message):
        gate.wait()
        handle(conn, message)

    def blocked_expire():
        gate.wait()
        expire()

    node._handle, node._expire = blocked_handle, blocked_expire
    return gate


def predict_all_at_once(conns: dict, x: np.ndarray) -> dict[str, tuple[BaseException | None, float]]:
    """Each client's error (or None) and its wait, all sent at once."""
    out: dict[str, tuple[BaseException | None, float]] = {}

    def one(name: str) -> None:
        t0 = time.monotonic()
        try:
            conns[name].predict(x)
            out[name] = (None, time.monotonic() - t0)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            out[name] = (exc, time.monotonic() - t0)

    threads = [threading.Thread(target=one, args=(n,)) for n in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(4 * TIMEOUT_S)
    return out


def wait_counts(node: ServingNode, name: str, value: int) -> dict:
    """The node's counters once ``name`` reached ``value`` (a server counts an answer just after sending it)."""
    deadline = time.monotonic() + 10
    while node.stats.snapshot()["counts"].get(name, 0) < value:
        assert time.monotonic() < deadline, node.stats.snapshot()
        time.sleep(0.05)
    return node.stats.snapshot()["counts"]


@pytest.mark.parametrize("backend", ["torch-spdz", "tf-pond"])
def test_service_in_threads(tmp_path, backend, capsys):
    cluster = make_service(tmp_path, clients=[*CLIENTS, "opsbot"], timeout_s=TIMEOUT_S, operators=["owner", "opsbot"])
    service = load_service(cluster)
    logs: list[str] = []
    nodes = {p: ServingNode(service, p, get_backend(backend), log=logs.append) for p in PARTIES}
    for node in nodes.values():
        node.start()
    try:
        program, weights = tiny_mlp()
        digest = deploy(cluster, program, weights, "owner")
        wait_ready(nodes)
        assert all(n.deployment.digest == digest for n in nodes.values())

        results: dict = {}
        threads = [threading.Thread(target=client_session, args=(cluster, n, weights, i, results))
                   for i, n in enumerate(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        check_sessions(results, CLIENTS, logs)

        # the operator counters, exact: each client sent 3 requests to each compute server (its NaN
        # and wrong shape were refused before sending), 2 answered, 1 refused for overflow after a rerun
        for party in service.compute:
            counts = wait_counts(nodes[party], "answered", 2 * len(CLIENTS))
            assert counts["requests"] == SESSION_REQUESTS * len(CLIENTS), (party, counts)
            assert counts["answered"] == (SESSION_REQUESTS - SESSION_ERRORS) * len(CLIENTS), (party, counts)
            assert counts["errors"] == counts["errors:FixedPointOverflowError"] == SESSION_ERRORS * len(CLIENTS)
            assert counts["reruns"] >= len(CLIENTS)  # each overflowing request was rerun alone before its refusal
        with ServingClient(cluster, "opsbot", parties=tuple(PARTIES)) as ops:
            status = {p: ops.status(p) for p in PARTIES}
        assert status["dealer"]["counts"].get("requests", 0) == 0 and status["dealer"]["role"] == "dealer"
        lat = status["server0"]["latency_s"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"], lat
        # counters are the operators' only: an admitted client that is not one is refused, with the fix
        with ServingClient(cluster, "alice", parties=("server0",)) as c:
            with pytest.raises(OperatorOnlyError, match=r"'alice' may predict but not read the operator counters"):
                c.status("server0")
            assert c.hello("server0")["ready"] is True  # health without counters: any admitted client

        # a client that sends half a request (to server0 only) and leaves disturbs nobody
        half = connect(cluster, identity="dave")
        half._link("server0").ask({"op": "predict", "id": "half", "inputs": ["x"]},
                                  [wire.encode_frame(np.zeros((1, 6), dtype=np.int64))])
        half.close()
        x = np.random.default_rng(4).uniform(-1, 1, size=(2, 6))
        with connect(cluster, identity="alice") as client:
            assert np.abs(client.predict(x) - plaintext(weights, x)).max() < ATOL

        keygen(["mallory"], tmp_path / "outsider")
        with pytest.raises(ServingError, match="refused identity 'mallory'"):
            connect(cluster, identity=tmp_path / "outsider" / "mallory.key")
        wait_counts(nodes["server0"], "refused_connections", 1)

        # only the model owner deploys
        with pytest.raises(ServingError, match="only the model owner"):
            deploy(cluster, program, weights, "alice")

        # server1 stalls with four clients waiting: each is told within timeout_s, naming it
        conns = {n: connect(cluster, identity=n) for n in CLIENTS}
        for c in conns.values():
            c.spec()
        failures = nodes["server0"].stats.snapshot()["counts"].get("cluster_failures", 0)
        gate = stall(nodes["server1"])
        try:
            outcome = predict_all_at_once(conns, np.full((1, 6), 0.25))
        finally:
            gate.set()
            for c in conns.values():
                c.close()
        for name in CLIENTS:
            assert name in outcome, f"{name} still waits after {4 * TIMEOUT_S:g} s: a hang"
            exc, waited = outcome[name]
            assert isinstance(exc, ServiceUnavailableError) and "'server1'" in str(exc), f"{name}: {exc!r}\n{logs}"
            assert waited <= TIMEOUT_S + 3.0, (name, waited, str(exc))
        wait_counts(nodes["server0"], "cluster_failures", failures + 1)  # the leader noticed, and forms again
        wait_ready(nodes)
        x = np.random.default_rng(6).uniform(-1, 1, size=(3, 6))
        with connect(cluster, identity="bob") as client:
            assert np.abs(client.predict(x) - plaintext(weights, x)).max() < ATOL

        # server1 goes away and comes back from its stored share; no deploy
        nodes["server1"].stop()
        nodes["server1"] = ServingNode(service, "server1", get_backend(backend), log=logs.append)
        nodes["server1"].start()
        wait_ready(nodes)
        x = np.random.default_rng(5).uniform(-1, 1, size=(4, 6))
        with connect(cluster, identity="carol") as client:
            assert np.abs(client.predict(x) - plaintext(weights, x)).max() < ATOL

        # the command line: admit a new client, predict with it from .npy files, status (operators only)
        assert main(["admit", "--cluster", str(cluster), "--name", "erin"]) == 0
        np.save(tmp_path / "x.npy", x)
        assert main(["predict", "--cluster", str(cluster), "--identity", "erin", "--input", str(tmp_path / "x.npy"),
                     "--output", str(tmp_path / "y.npy")]) == 0
        assert np.abs(np.load(tmp_path / "y.npy") - plaintext(weights, x)).max() < ATOL
        capsys.readouterr()
        assert main(["status", "--cluster", str(cluster), "--identity", "erin"]) == 2
        refused = capsys.readouterr()
        assert "'erin' may predict but not read the operator counters" in refused.err and "operators" in refused.err
        assert main(["status", "--cluster", str(cluster), "--identity", "opsbot"]) == 0
        printed = capsys.readouterr().out
        assert printed.count(" ready ") == 3 and "latency ms p50=" in printed, printed
        assert "(FixedPointOverflowError 4" in printed and "ServiceUnavailableError" in printed, printed
        assert main(["status", "--cluster", str(cluster), "--identity", "opsbot", "--json"]) == 0
        rows = {r["party"]: r for r in json.loads(capsys.readouterr().out)}
        # every request server0 accepted: the sessions', the half one, alice's, four in the stall, bob's, carol's, erin's
        assert rows["server0"]["counts"]["requests"] == SESSION_REQUESTS * len(CLIENTS) + 9, rows["server0"]["counts"]
        # the loadtest: 3 clients at once, 7 requests of 2 rows in all, each answered (and counted by the servers)
        assert main(["loadtest", "--cluster", str(cluster), "--identity", "alice", "--clients", "3", "--requests", "7",
                     "--batch", "2", "--json"]) == 0
        load = json.loads(capsys.readouterr().out)
        assert (load["answered"], load["errors"], load["rows_per_s"]) == (7, 0, 2 * load["requests_per_s"]), load
        assert 0 < load["p50_s"] <= load["p95_s"] <= load["p99_s"], load
        counts = nodes["server1"].stats.snapshot()["counts"]
        assert counts["requests"] == 2 + 7, counts  # the restarted server1 counts from its restart: carol, erin, load
    finally:
        for node in nodes.values():
            node.stop()
