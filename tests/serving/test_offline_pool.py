"""The service's offline pool (bridge.serving.offline), parties in threads of this process:
each party refills its pool for the batch sizes the service runs, requests consume it
and are still right, and stats and status report online and offline separately."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bridge.registry import get_backend
from bridge.serving.client import deploy
from bridge.serving.config import load_service
from bridge.serving.node import ServingNode
from frontends.keras.client import connect
from tests.distributed.models import tiny_mlp
from tests.serving.helpers import ATOL, make_service, nodes_in_threads, plaintext
from tests.serving.helpers import wait_nodes_ready as wait_ready


def _levels(nodes: dict[str, ServingNode]) -> dict[str, dict[str, int] | None]:
    return {p: (n._pool_snapshot() or {}).get("by_batch") for p, n in nodes.items()}


def _wait_level(nodes: dict[str, ServingNode], level: dict[str, int], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(v != level for v in _levels(nodes).values()):
        assert time.monotonic() < deadline, f"the pools did not refill to {level}: {_levels(nodes)}"
        time.sleep(0.05)


@pytest.mark.parametrize("backend", ["torch-spdz", "tf-pond"])
def test_pool_refills_per_batch_size_and_requests_consume_it(tmp_path, backend):
    cluster = make_service(tmp_path, clients=["alice"], timeout_s=20.0)
    service = load_service(cluster)
    assert (service.serving.offline_depth, service.serving.offline_capacity) == (2, 16)
    with nodes_in_threads(service, get_backend(backend)) as nodes:
        program, weights = tiny_mlp()
        deploy(cluster, program, weights, "owner")
        wait_ready(nodes)
        rng = np.random.default_rng(0)
        with connect(cluster, identity="alice") as client:
            x = rng.uniform(-1, 1, size=(1, 6))  # the first batch of 1 row: drawn inline, asks for the bucket
            assert np.abs(client.predict(x) - plaintext(weights, x)).max() < ATOL
            for _ in range(3):
                _wait_level(nodes, {"1": 2})
                x = rng.uniform(-1, 1, size=(1, 6))
                assert np.abs(client.predict(x) - plaintext(weights, x)).max() < ATOL
            x = rng.uniform(-1, 1, size=(3, 6))  # another batch size: inline once, then its own bucket
            assert np.abs(client.predict(x) - plaintext(weights, x)).max() < ATOL
            _wait_level(nodes, {"1": 2, "3": 2})
        with connect(cluster, identity="owner") as operator:  # the counters are the operators' (the owner, here)
            status = operator.status("dealer")
        for party, node in nodes.items():
            pool = node._pool_snapshot()
            assert pool is not None
            assert (pool["precomputed"] + pool["waited"], pool["inline"]) == (3, 2), (party, pool)
            assert pool["made"] == 3 + 4 and pool["offline_s"] > 0, (party, pool)
            counts = node.stats.snapshot()["counts"]
            assert (counts["precomputed_batches"], counts["inline_batches"]) == (3, 2), (party, counts)
        assert status["pool"]["by_batch"] == {"1": 2, "3": 2} and status["pool"]["capacity"] == 16
        assert status["online_precomputed_s"]["p50"] is not None and status["online_inline_s"]["p50"] is not None
