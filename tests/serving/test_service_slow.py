"""The service in threads: a forward pass longer than the cluster's ``timeout_s`` (server0's
first matmul sleeps 2.5x as long) is answered right, because the servers tell the waiting
client that they work on its request (``bridge.serving.progress``) and count each other's
"working" heartbeats; then server0 stalls in its slow kernel (its heartbeats and notices
stop) and the client is told within ``timeout_s`` of the silence, naming it."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from bridge.registry import get_backend
from bridge.serving.client import ServiceUnavailableError, deploy
from bridge.serving.config import load_service
from frontends.keras.client import connect
from tests.distributed.models import tiny_mlp
from tests.serving.helpers import ATOL, make_service, nodes_in_threads, plaintext
from tests.serving.helpers import wait_nodes_ready as wait_ready

TIMEOUT_S = 4.0
SLOW_S = 2.5 * TIMEOUT_S


@pytest.mark.parametrize("backend", ["torch-spdz", "tf-pond"])
def test_a_forward_longer_than_timeout_is_answered_and_a_stall_still_named(tmp_path, backend, monkeypatch):
    cluster = make_service(tmp_path, clients=["alice"], timeout_s=TIMEOUT_S)
    service = load_service(cluster)
    secure = get_backend(backend)
    kernels_class = type(secure.make_kernels())
    matmul = kernels_class.matmul
    slow = {"armed": False, "stall": False, "slept": 0}

    def slowed(self, a, b):
        if slow["armed"] and threading.current_thread().name == "serving-server0-mpc":
            slow["armed"] = False
            slow["slept"] += 1
            if slow["stall"]:  # a paused process: no heartbeats to the peers, no notices to clients
                nodes["server0"]._transport._beating.set()
            time.sleep(SLOW_S)
        return matmul(self, a, b)

    monkeypatch.setattr(kernels_class, "matmul", slowed)
    with nodes_in_threads(service, secure) as nodes:
        program, weights = tiny_mlp()
        deploy(cluster, program, weights, "owner")
        wait_ready(nodes)
        x = np.random.default_rng(2).uniform(-1, 1, size=(2, 6))
        with connect(cluster, identity="alice") as client:
            client.spec()
            slow["armed"] = True
            start = time.monotonic()
            got = client.predict(x)
            assert slow["slept"] == 1 and time.monotonic() - start >= SLOW_S
            assert np.abs(got - plaintext(weights, x)).max() < ATOL

            slow.update(armed=True, stall=True)
            start = time.monotonic()
            with pytest.raises(ServiceUnavailableError, match="'server0'") as stalled:
                client.predict(x)
            waited = time.monotonic() - start
            assert slow["slept"] == 2, stalled.value
            assert waited <= TIMEOUT_S + 2.0, (waited, str(stalled.value))
