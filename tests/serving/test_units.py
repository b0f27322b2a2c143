"""The service's parts without a backend: the cluster file's [serving] table, the stored
deployment (0600, atomic, no pickle, damage refused), the client's shares, the framing."""

from __future__ import annotations

import stat

import numpy as np
import pytest

from bridge.cluster import ClusterError
from bridge.ir import Numerics
from bridge.serving import store
from bridge.serving.channel import ConnectionLost, encode_message, read_message
from bridge.serving.config import load_service
from bridge.serving.model import service_program, share_input, share_parameters
from tests.distributed.models import tiny_mlp
from tests.serving.helpers import make_service


def test_service_file_and_its_errors(tmp_path):
    path = make_service(tmp_path / "ok", clients=["alice"])
    service = load_service(path)
    assert service.compute == ("server0", "server1") and service.dealer == "dealer"
    assert service.state_dir == (tmp_path / "ok" / "state").resolve()
    text = path.read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('dealer = "127.0.0.1', 'nobody = "127.0.0.1'))
    with pytest.raises(ClusterError, match=r"missing \['dealer'\]"):
        load_service(bad)
    bad.write_text(text.replace('keys = "keys"', "insecure = true"))
    with pytest.raises(ClusterError, match="never runs cleartext"):
        load_service(bad)


def test_deployment_store_round_trip_mode_and_damage(tmp_path):
    service = load_service(make_service(tmp_path / "svc", clients=["alice"]))
    program, weights = tiny_mlp()
    placed = service_program(program, service)
    first, second = share_parameters(placed, weights)
    # the two shares add up to the fixed-point weights; one alone is not them
    with np.errstate(over="ignore"):
        total = first["d0/kernel"] + second["d0/kernel"]
    assert np.abs(total / 2**16 - weights["d0/kernel"]).max() < 2**-16
    assert np.abs(first["d0/kernel"]).min() > 2**30  # uniform ring elements, not small encodings
    deployment = store.Deployment(placed, placed.model_dump_json().encode(), first)
    where = tmp_path / "state" / "server0"
    store.save(where, deployment)
    for name in (store.SHARE_FILE, store.PROGRAM_FILE, store.META_FILE):
        assert stat.S_IMODE((where / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    back = store.load(where)
    assert back is not None and back.digest == deployment.digest
    assert all(np.array_equal(back.share[n], first[n]) for n in first)
    assert store.load(tmp_path / "nothing") is None
    raw = bytearray((where / store.SHARE_FILE).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (where / store.SHARE_FILE).write_bytes(bytes(raw))
    with pytest.raises(store.StoreError, match="cannot be read"):
        store.load(where)
    (where / store.PROGRAM_FILE).write_bytes(b"{}")
    with pytest.raises(store.StoreError, match="digest"):
        store.load(where)


def test_client_shares_and_input_checks():
    numerics = Numerics()
    x = np.array([[0.5, -1.25, 3.0]])
    a, b = share_input(x, numerics, "x")
    with np.errstate(over="ignore"):
        assert np.array_equal((a + b), np.round(x * 2**16).astype(np.int64))
    a2, _ = share_input(x, numerics, "x")
    assert not np.array_equal(a, a2)  # fresh randomness per request
    from bridge.mpc.fixedpoint import FixedPointError

    with pytest.raises(FixedPointError, match="NaN"):
        share_input(np.array([[np.nan]]), numerics, "x")


def test_message_framing_refuses_malformed():
    import socket

    left, right = socket.socketpair()
    with left, right:
        left.sendall(encode_message({"op": "x", "id": "1"}, [b"abc", b""]))
        message = read_message(right, 1 << 20)
        assert message.header == {"op": "x", "id": "1"} and message.frames == [b"abc", b""]
        left.sendall(b"\x00\x00\x00\x08\x00\x00\xff\xff1234")  # a header longer than the message
        with pytest.raises(ConnectionLost, match="malformed"):
            read_message(right, 1 << 20)
        left.sendall(b"\x7f\xff\xff\xff")
        with pytest.raises(ConnectionLost, match="at most"):
            read_message(right, 1 << 20)


def test_operators_default_explicit_and_refused_names(tmp_path):
    default = load_service(make_service(tmp_path / "a", clients=["alice"]))
    assert default.operators == {"owner"}  # the model owner alone, unless the file says otherwise
    listed = load_service(make_service(tmp_path / "b", clients=["alice", "ops"], operators=["ops"]))
    assert listed.operators == {"ops"}
    nobody = load_service(make_service(tmp_path / "c", clients=["alice"], operators=[]))
    assert nobody.operators == frozenset()
    with pytest.raises(ClusterError, match=r"operators .* names \['server1'\].*not a party"):
        load_service(make_service(tmp_path / "d", clients=["alice"], operators=["server1"]))


def test_latency_percentiles_and_counters():
    from bridge.serving.stats import ServiceStats, percentiles

    p = percentiles([float(v) for v in range(1, 101)])
    assert p == pytest.approx({"p50": 50.5, "p95": 95.05, "p99": 99.01, "mean": 50.5})
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None, "mean": None}
    stats = ServiceStats()
    for ms in (30, 10, 20, 1000):
        stats.answered(ms / 1000)
    stats.count("requests", 5)
    stats.count("errors")
    snap = stats.snapshot()
    assert snap["counts"] == {"answered": 4, "requests": 5, "errors": 1}
    assert snap["latency_s"]["p50"] == pytest.approx(0.025) and snap["latency_s"]["p99"] == pytest.approx(0.9709)  # between 30 and 1000 ms, at 0.97 of the way


def test_leader_waits_for_the_clients_of_its_last_batches(tmp_path):
    """A steady stream of 8 clients used to split into two halves that alternate runs (each
    request queued while the other half ran, so no wait): the leader now waits, at most
    max_delay, for the connections of its last two batches, and stacks them into one run."""
    import threading
    import time
    from types import SimpleNamespace

    from bridge.registry import get_backend
    from bridge.serving.node import Request, ServingNode

    service = load_service(make_service(tmp_path, clients=["alice"], max_delay_ms=3000))
    node = ServingNode(service, "server0", get_backend("torch-spdz"), log=lambda m: None)
    a, b, idle = (SimpleNamespace(closed=False) for _ in range(3))
    long_ago = time.monotonic() - 60  # queued during the previous run: its own max_delay is long over
    node._pending[("a", "1")] = Request("a", "1", 1, {}, a, arrived=long_ago)
    node._recent.append([a, b])

    def b_sends_again() -> None:
        time.sleep(0.2)
        with node._cond:
            node._pending[("b", "2")] = Request("b", "2", 1, {}, b)
            node._cond.notify_all()

    threading.Thread(target=b_sends_again).start()
    assert [r.client for r in node._take_batch()] == ["a", "b"]  # the old leader ran "a" alone
    # both back at once: no wait at all; a client of the last batches that left is not waited for
    node._pending.clear()
    node._recent.clear()
    node._recent.append([a, idle])
    idle.closed = True
    node._pending[("a", "3")] = Request("a", "3", 1, {}, a, arrived=time.monotonic())
    t0 = time.monotonic()
    assert [r.client for r in node._take_batch()] == ["a"]
    assert time.monotonic() - t0 < 2.0  # not the 3 s max_delay: everyone expected is there
