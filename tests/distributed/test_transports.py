"""The process transports, in one test process: framing, startup, faults, malformed messages.

Several transports of one cluster live in threads of this process (neither engine
keeps global state); every one of them talks over real loopback TCP.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
import torch

from bridge.mpc.comm import CommStats, Messenger, PeerError
from tests.distributed.conftest import in_threads, loopback_cluster, transport_class


def open_all(engine: str, config, names=None):
    cls = transport_class(engine)
    transports = in_threads(lambda n: cls(config, n), names or config.names)
    for name, t in transports.items():
        assert not isinstance(t, BaseException), f"{name}: {t!r}"
    return transports


def close_all(transports) -> None:
    in_threads(lambda n: transports[n].close(), list(transports))


def test_frames_arrive_exactly_in_order_between_every_pair(engine):
    config = loopback_cluster(["a", "b", "c"])
    ts = open_all(engine, config)
    big = np.random.default_rng(0).integers(0, 256, size=3_000_000, dtype=np.uint8).tobytes()

    def talk(name: str) -> None:
        t = ts[name]
        for i in range(30):
            for peer in t.peers:
                t.send(peer, f"{name}>{peer}#{i}".encode() * i)
        for peer in t.peers:
            t.send(peer, big)
        got = [t.recv(peer) for i in range(30) for peer in t.peers]
        assert got == [f"{peer}>{name}#{i}".encode() * i for i in range(30) for peer in t.peers]
        assert all(t.recv(peer) == big for peer in t.peers)

    results = in_threads(talk, config.names)
    close_all(ts)
    assert results == {name: None for name in config.names}


def test_a_party_that_never_shows_up_is_named(engine):
    config = loopback_cluster(["a", "b", "c"], timeout_s=1.0)
    start = time.monotonic()
    results = in_threads(lambda n: transport_class(engine)(config, n), ["a", "b"])
    assert time.monotonic() - start < 1.0 + 3.0
    for name in ("a", "b"):
        assert isinstance(results[name], PeerError), results[name]
        assert "'c' at 127.0.0.1:" in str(results[name]) and "did not show up" in str(results[name])


def test_gloo_rendezvous_without_rank_zero_names_it():
    config = loopback_cluster(["a", "b"], timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(PeerError, match=r"could not reach the rendezvous .* party 'a' \(rank 0\), which serves it, did not show up"):
        transport_class("gloo")(config, "b")
    assert time.monotonic() - start < 1.0 + 3.0


def test_dead_peer_is_named_and_silence_times_out(engine):
    config = loopback_cluster(["a", "b", "c"], timeout_s=1.5)
    ts = open_all(engine, config)
    # silence: b waits for c, which is alive but sends nothing
    start = time.monotonic()
    with pytest.raises(PeerError, match=r"party 'b' waited 1.5 s for party 'c' .* which sent nothing"):
        ts["b"].recv("c")
    assert 1.5 <= time.monotonic() - start < 1.5 + 2.0
    # abort: c fails and says its error's kind, never its message; everyone stops with its name, at once
    ts["c"].abort("ValueError: bad input")
    start = time.monotonic()
    with pytest.raises(PeerError, match=r"party 'a' stopped: party 'c' failed: ValueError \(") as stopped:
        ts["a"].recv("b")
    assert time.monotonic() - start < 1.5
    assert "bad input" not in str(stopped.value)
    close_all(ts)


def test_goodbye_then_receive_names_the_finished_peer(engine):
    config = loopback_cluster(["a", "b"], timeout_s=3.0)
    ts = open_all(engine, config)
    ts["a"].send("b", b"last words")
    closing = threading.Thread(target=ts["a"].close)  # a waits for b's goodbye (gloo) before it returns
    closing.start()
    assert ts["b"].recv("a") == b"last words"
    start = time.monotonic()
    with pytest.raises(PeerError, match="expected a message from party 'a', but party 'a' has finished"):
        ts["b"].recv("a")
    assert time.monotonic() - start < 1.5
    with pytest.raises(PeerError, match="cannot send to 'a'"):
        ts["b"].send("a", b"anyone?")
    ts["b"].close()
    closing.join()


def test_malformed_frames_are_rejected_and_the_link_survives(engine):
    config = loopback_cluster(["rogue", "victim"], timeout_s=3.0)
    ts = open_all(engine, config)
    victim = Messenger(ts["victim"], CommStats())
    for garbage in (b"", b"hello", b"PB1\x00\x01" + b"\x05" + b"\x00" * 7 + b"\x01\x02"):
        ts["rogue"].send("victim", garbage)
        with pytest.raises(PeerError, match="party 'victim' rejected a message from 'rogue'"):
            victim.recv("rogue")
    Messenger(ts["rogue"], CommStats()).send("victim", np.arange(4))
    assert victim.recv("rogue").tolist() == [0, 1, 2, 3]
    close_all(ts)


def test_gloo_malformed_header_drops_the_peer_without_allocating():
    config = loopback_cluster(["rogue", "victim"], timeout_s=3.0, max_message_bytes=1 << 20)
    ts = open_all("gloo", config)
    rogue = ts["rogue"]
    rogue._group.send([torch.tensor([0, 1 << 40], dtype=torch.int64)], config.rank("victim"), 0).wait()
    with pytest.raises(PeerError, match=r"'rogue' sent a malformed frame header \(kind 0, length 1099511627776; "
                                        r"at most 1048576 bytes accepted\); its connection was dropped"):
        ts["victim"].recv("rogue")
    close_all(ts)


def test_grpc_refuses_strangers_unknown_kinds_and_oversized_messages():
    from bridge.security.keys import load_credentials, san_name

    config = loopback_cluster(["rogue", "victim"], timeout_s=3.0, max_message_bytes=4096)
    ts = open_all("grpc", config)
    outsider = grpc.insecure_channel(config.party("victim").address)
    with pytest.raises(grpc.RpcError) as cleartext:  # no TLS, no key: refused at the handshake
        outsider.unary_unary("/privacy_bridge.Party/Deliver")(
            b"x", metadata=(("pb-from", "rogue"), ("pb-kind", "0")), timeout=3)
    assert cleartext.value.code() == grpc.StatusCode.UNAVAILABLE
    outsider.close()
    rogue = load_credentials(config, "rogue")  # a member of the cluster that misbehaves
    channel = grpc.secure_channel(
        config.party("victim").address,
        grpc.ssl_channel_credentials(rogue.pinned_pem["victim"], rogue.key_pem, rogue.certificate_pem),
        options=[("grpc.ssl_target_name_override", san_name("victim"))])
    deliver = channel.unary_unary("/privacy_bridge.Party/Deliver")
    with pytest.raises(grpc.RpcError) as stranger:
        deliver(b"x", metadata=(("pb-from", "mallory"), ("pb-kind", "0")), timeout=3)
    assert stranger.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as big:
        deliver(b"x" * 10_000, metadata=(("pb-from", "rogue"), ("pb-kind", "0")), timeout=3)
    assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(PeerError, match="at most 4096"):
        ts["rogue"].send("victim", b"x" * 10_000)
    with pytest.raises(grpc.RpcError) as kind:
        deliver(b"x", metadata=(("pb-from", "rogue"), ("pb-kind", "9")), timeout=3)
    assert kind.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(PeerError, match="'rogue' sent a message of unknown kind '9'; its connection was dropped"):
        ts["victim"].recv("rogue")
    channel.close()
    close_all(ts)


def test_gloo_joins_a_rendezvous_served_by_torchrun_agent():
    """Under torchrun the agent serves MASTER_ADDR:MASTER_PORT; every party, rank 0 too, is a client."""
    import datetime

    import torch.distributed as dist

    from tests.distributed.conftest import free_port

    port = free_port()
    agent = dist.TCPStore("127.0.0.1", port, 2, True, timeout=datetime.timedelta(seconds=5), wait_for_workers=False)
    config = loopback_cluster(["a", "b"], timeout_s=3.0, rendezvous=f"127.0.0.1:{port}", external_rendezvous=True)
    ts = open_all("gloo", config)
    ts["a"].send("b", b"over the agent's store")
    assert ts["b"].recv("a") == b"over the agent's store"
    close_all(ts)
    del agent


#: a script that opens both parties of a cluster (``connect``, as a user script does outside
#: ``launch``), leaves them open, and ends; its atexit hook, which runs after the transports'
#: own exit hooks would have, reports whether they were closed and a goodbye got through
LEFT_OPEN_SCRIPT = """
import atexit, sys
from bridge.mpc.distributed import connect
from bridge.registry import get_backend
from tests.distributed.conftest import in_threads, loopback_cluster

backend = get_backend(sys.argv[1])
cluster = loopback_cluster(["a", "b"])
t = in_threads(lambda n: connect(backend, cluster, n), ["a", "b"])
t["a"].send("b", b"ping")
assert t["b"].recv("a") == b"ping"

def report():
    goodbye = t["a"]._inbox["b"].finished or t["b"]._inbox["a"].finished
    print(f"closed {t['a']._closed and t['b']._closed} goodbye {goodbye}", flush=True)

atexit.register(report)
"""


def test_grpc_transports_left_open_close_before_the_executors_stop(tmp_path):
    """Issue 16: a tf-pond transport still open at exit used to be closed by a plain atexit hook,
    after concurrent.futures had stopped every executor: the servers could not run a handler for
    a peer's goodbye (their serving threads died with 'cannot schedule new futures after
    shutdown'), never finished stopping, and the interpreter finalized with them live."""
    import os
    import subprocess
    import sys

    from tests.distributed.conftest import ROOT

    script = tmp_path / "left_open.py"
    script.write_text(LEFT_OPEN_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(script), "tf-pond"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "closed True goodbye True" in done.stdout, done.stdout + done.stderr[-3000:]
    assert "cannot schedule new futures" not in done.stderr and "Exception in thread" not in done.stderr, done.stderr
