"""The service with its three parties in threads of this process (the short version of
test_service.py, which runs one process per party): four clients at once, good / bad /
good from each, every good answer checked; an unknown client refused at the handshake;
server1 stopped and started again from its stored share, without the model owner."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from bridge.mpc import wire
from bridge.registry import get_backend
from bridge.security.keys import keygen
from bridge.serving.channel import ServingError
from bridge.serving.client import deploy
from bridge.serving.config import load_service
from bridge.serving.node import ServingNode
from frontends.cli import main
from frontends.keras.client import connect
from tests.distributed.models import tiny_mlp
from tests.serving.helpers import PARTIES, make_service
from tests.serving.test_service import ATOL, CLIENTS, client_session, plaintext


def wait_ready(nodes: dict[str, ServingNode], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(n.ready for n in nodes.values()):
        assert time.monotonic() < deadline, {p: n.ready for p, n in nodes.items()}
        time.sleep(0.1)


@pytest.mark.parametrize("backend", ["torch-spdz", "tf-pond"])
def test_service_in_threads(tmp_path, backend, capsys):
    cluster = make_service(tmp_path, clients=CLIENTS, timeout_s=20.0)
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
        for name in CLIENTS:
            assert not isinstance(results.get(name), BaseException), f"{name}: {results.get(name)}\n{logs}"
            assert max(err for _, err in results[name]) < ATOL, results[name]
        deadline = time.monotonic() + 10  # a server counts an answer just after sending it
        while nodes["server0"].stats.snapshot()["counts"].get("answered") != 2 * len(CLIENTS):
            assert time.monotonic() < deadline, nodes["server0"].stats.snapshot()
            time.sleep(0.05)
        counts = nodes["server0"].stats.snapshot()["counts"]
        assert counts["reruns"] >= len(CLIENTS)  # each overflowing request was rerun alone before its refusal

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
        deadline = time.monotonic() + 10
        while nodes["server0"].stats.snapshot()["counts"].get("refused_connections", 0) < 1:
            assert time.monotonic() < deadline, "server0 did not count the refused handshake"
            time.sleep(0.05)

        # only the model owner deploys
        with pytest.raises(ServingError, match="only the model owner"):
            deploy(cluster, program, weights, "alice")

        # server1 goes away and comes back from its stored share; no deploy
        nodes["server1"].stop()
        nodes["server1"] = ServingNode(service, "server1", get_backend(backend), log=logs.append)
        nodes["server1"].start()
        wait_ready(nodes)
        x = np.random.default_rng(5).uniform(-1, 1, size=(4, 6))
        with connect(cluster, identity="carol") as client:
            assert np.abs(client.predict(x) - plaintext(weights, x)).max() < ATOL

        # the command line: admit a new client, predict with it from .npy files, status
        assert main(["admit", "--cluster", str(cluster), "--name", "erin"]) == 0
        np.save(tmp_path / "x.npy", x)
        assert main(["predict", "--cluster", str(cluster), "--identity", "erin", "--input", str(tmp_path / "x.npy"),
                     "--output", str(tmp_path / "y.npy")]) == 0
        assert np.abs(np.load(tmp_path / "y.npy") - plaintext(weights, x)).max() < ATOL
        capsys.readouterr()
        assert main(["status", "--cluster", str(cluster), "--identity", "erin"]) == 0
        printed = capsys.readouterr().out
        assert printed.count(" ready ") == 3 and "latency ms p50=" in printed and "answered=" in printed
    finally:
        for node in nodes.values():
            node.stop()
