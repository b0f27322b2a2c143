"""Slow is not silent: ``timeout_s`` measures a peer's silence, not a wait's length.

A forward pass in which server0 spends longer than ``timeout_s`` in one kernel (a test hook
sleeps in its first matmul) succeeds on both backends, embedded (threads) and with one
transport per party (gloo / gRPC): the parties that wait for it hear its heartbeats say
"working".  A peer that stops (its heartbeats stop) after working past ``timeout_s`` is
still named as stalled, by a party that waits for it, within ``timeout_s`` of its
silence; and parties that all wait for one another still stop at ``timeout_s``.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from bridge.mpc.comm import PeerError
from bridge.mpc.distributed import DistributedParty
from bridge.mpc.runtime import ThreadedParties
from bridge.registry import get_backend
from tests.distributed.conftest import in_threads, loopback_cluster, transport_class
from tests.distributed.models import CLIENT, PARTIES, tiny_mlp
from tests.serving.helpers import plaintext

TIMEOUT_S = 2.0
#: server0's first matmul takes this long: more than timeout_s for everyone waiting on it
SLOW_S = 2.5 * TIMEOUT_S
BACKENDS = {"torch-spdz": "gloo", "tf-pond": "grpc"}


@pytest.fixture
def slow_server0(monkeypatch):
    """server0's first matmul sleeps SLOW_S (its thread is named server0 or party-server0)."""
    calls: list[float] = []

    def install(kernels_class: type) -> list[float]:
        matmul = kernels_class.matmul

        def slow(self, a, b):
            if threading.current_thread().name in ("server0", "party-server0") and not calls:
                calls.append(time.monotonic())
                time.sleep(SLOW_S)
            return matmul(self, a, b)

        monkeypatch.setattr(kernels_class, "matmul", slow)
        return calls

    return install


def _x() -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, size=(3, 6))


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_a_forward_longer_than_timeout_succeeds_embedded(backend, slow_server0):
    program, weights = tiny_mlp()
    secure = get_backend(backend)
    calls = slow_server0(type(secure.make_kernels()))
    executable = secure.prepare(program, weights, timeout_s=TIMEOUT_S)
    start = time.monotonic()
    (got,) = executable.run({"x": _x()}).outputs.values()
    assert calls and time.monotonic() - start >= SLOW_S
    assert np.abs(got - plaintext(weights, _x())).max() < 2e-3


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_a_forward_longer_than_timeout_succeeds_one_transport_per_party(backend, slow_server0):
    program, weights = tiny_mlp()
    config = loopback_cluster(PARTIES, timeout_s=TIMEOUT_S)
    secure = get_backend(backend)
    calls = slow_server0(type(secure.make_kernels()))

    def party(name: str):
        threading.current_thread().name = name
        executable = secure.prepare(program, weights if name == program.placement.param_owner else None,
                                    cluster=config, party=name)
        try:
            return executable.run({"x": _x() if name == CLIENT else np.zeros((3, 6))}).outputs
        finally:
            executable.parties.transport.close()

    outcome = in_threads(party, tuple(PARTIES))
    for name, result in outcome.items():
        assert not isinstance(result, BaseException), f"{name}: {result!r}"
    assert calls
    assert np.abs(outcome[CLIENT]["y"] - plaintext(weights, _x())).max() < 2e-3


@pytest.mark.parametrize("engine", list(BACKENDS.values()))
def test_a_peer_that_stops_after_working_past_timeout_is_named_within_timeout(engine):
    config = loopback_cluster(["a", "b", "c"], timeout_s=TIMEOUT_S)
    ts = in_threads(lambda n: transport_class(engine)(config, n), ["a", "b", "c"])
    assert not any(isinstance(t, BaseException) for t in ts.values()), ts
    work_s = 1.5 * TIMEOUT_S
    stopped: list[float] = []

    def c_works_then_stops() -> None:
        with ts["c"].working():
            time.sleep(work_s)  # a kernel longer than timeout_s: its heartbeats say "working"
            ts["c"]._beating.set()  # then it stalls, as a paused process does: no more heartbeats
            stopped.append(time.monotonic())
            time.sleep(2 * TIMEOUT_S)

    def waits(name: str):
        with ts[name].working():
            start = time.monotonic()
            try:
                ts[name].recv("c")
            except PeerError as exc:
                return time.monotonic() - start, str(exc)
            return time.monotonic() - start, "received"

    worker = threading.Thread(target=c_works_then_stops)
    worker.start()
    try:
        outcome = in_threads(waits, ["a", "b"])
    finally:
        worker.join()
        in_threads(lambda n: ts[n].close(), ["a", "b", "c"])
    for name, (waited, error) in outcome.items():
        assert "party 'c' stalled" in error and "party 'a' stalled" not in error \
            and "party 'b' stalled" not in error, f"{name}: {error}"
        assert waited >= work_s, f"{name} gave up after {waited:.1f} s while c worked: {error}"
        assert waited <= work_s + TIMEOUT_S + 0.5, f"{name} waited {waited:.1f} s for a silent c"


@pytest.mark.parametrize("engine", list(BACKENDS.values()))
def test_parties_that_all_wait_still_stop_at_timeout(engine):
    """Nobody works (b and c wait for each other, a is idle): alive is not enough."""
    config = loopback_cluster(["a", "b", "c"], timeout_s=TIMEOUT_S)
    ts = in_threads(lambda n: transport_class(engine)(config, n), ["a", "b", "c"])
    assert not any(isinstance(t, BaseException) for t in ts.values()), ts

    def waits(name: str):
        with ts[name].working():
            start = time.monotonic()
            with pytest.raises(PeerError, match="which sent nothing"):
                ts[name].recv("c" if name == "b" else "b")
            return time.monotonic() - start

    try:
        waited = in_threads(waits, ["b", "c"])
    finally:
        in_threads(lambda n: ts[n].close(), ["a", "b", "c"])
    for name, w in waited.items():
        assert not isinstance(w, BaseException), f"{name}: {w!r}"
        assert TIMEOUT_S <= w < TIMEOUT_S + 1.5, (name, w)


def test_embedded_parties_that_all_wait_still_stop_at_timeout():
    from bridge.ir import Numerics
    from bridge.mpc.numpy_kernels import NumpyKernels

    names = ("server0", "server1", "dealer")
    parties = ThreadedParties(names, NumpyKernels(), Numerics(), ("server0", "server1"), "dealer", TIMEOUT_S)
    start = time.monotonic()
    with pytest.raises(Exception, match="which sent nothing"):
        parties.run(lambda ctx: ctx.messenger.recv_bytes("server1" if ctx.name == "server0" else "server0"))
    assert TIMEOUT_S <= time.monotonic() - start < TIMEOUT_S + 1.5


def test_embedded_a_wait_lasts_while_the_others_still_exchange_messages():
    """In memory, a party handed its message still counts as receiving until its recv returns,
    so two parties passing messages back and forth look, at most instants, as if both were
    waiting.  A third party waiting longer than timeout_s for one of them must keep waiting
    while messages move (it failed under load once, mid forward pass), and parties that all
    wait for one another must still stop about timeout_s after the last message moved."""
    from bridge.mpc.comm import InMemoryNetwork

    timeout_s = 0.3
    network = InMemoryNetwork(["a", "b", "c"], timeout_s=timeout_s)
    ts = {n: network.transport(n) for n in ("a", "b", "c")}
    chat_s = 8 * timeout_s

    def b() -> str:
        network.bind("b")
        end = time.monotonic() + chat_s
        while time.monotonic() < end:  # b and c pass one message back and forth, both mostly in recv
            ts["b"].send("c", b"ping")
            ts["b"].recv("c")
        ts["b"].send("c", b"done")
        ts["b"].send("a", b"at last")
        return "ok"

    def c() -> str:
        network.bind("c")
        while ts["c"].recv("b") != b"done":
            ts["c"].send("b", b"pong")
        return "ok"

    def a() -> str:
        network.bind("a")
        start = time.monotonic()
        got = ts["a"].recv("b")
        assert time.monotonic() - start >= chat_s
        return got.decode()

    outcome = in_threads(lambda n: {"a": a, "b": b, "c": c}[n](), ["a", "b", "c"])
    assert outcome == {"a": "at last", "b": "ok", "c": "ok"}, outcome

    # a wait for one another: both stop, a timeout_s after the last message moved
    network.reset()

    def deadlocked(name: str) -> float:
        network.bind(name)
        start = time.monotonic()
        with pytest.raises(PeerError, match="dead or stuck"):
            ts[name].recv("b" if name == "a" else "a")
        return time.monotonic() - start

    waited = in_threads(deadlocked, ["a", "b"])
    assert all(timeout_s <= w < timeout_s + 1.0 for w in waited.values()), waited
