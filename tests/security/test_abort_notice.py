"""Errors carry no secrets across parties: an abort notice names the failed party and its
error's kind, never the message, on both backends, embedded and one process per party.

The client's input is refused with a distinctive value, 9.87654e+14: the refusal quotes
it, as it should to the client; no other party's error may contain it or any run of
its digits.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest

from bridge.cluster import to_toml
from bridge.ir import save_program
from bridge.launch import launch_parties
from bridge.mpc.comm import PeerError
from bridge.mpc.distributed import DistributedParty, abort_notice, peer_fault, read_notice
from bridge.mpc.runtime import ThreadedParties
from bridge.registry import get_backend
from tests.conftest import SECURE_BACKENDS
from tests.distributed.conftest import in_threads, loopback_cluster, transport_class
from tests.distributed.models import CLIENT, PARTIES, tiny_mlp

SECRET = 9.87654e14
SECRET_TEXT = f"{SECRET:g}"  # 9.87654e+14, as the input check writes it
PARTY_NAMES = tuple(PARTIES)
OTHERS = tuple(p for p in PARTY_NAMES if p != CLIENT)


def leaks(text: str) -> list[str]:
    """What of the secret shows in ``text``: the number, or a run of four of its digits
    (addresses, whose port numbers could hold such a run by chance, are left out)."""
    text = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "ADDRESS", text)
    return [s for s in (SECRET_TEXT, "9.87654", "9876", "8765", "7654") if s in text]


def refuse(ctx) -> None:
    """What the client's input check raises: the message quotes the private value."""
    raise ValueError(f"input_layer has a value of magnitude {SECRET_TEXT}, outside the fixed-point range")


def test_leaks_sees_the_secret_and_nothing_else():
    assert leaks(f"party 'server1' failed: ValueError: input has a value of magnitude {SECRET_TEXT}")
    assert leaks("a share of 19876540 went by")
    assert not leaks("party 'server0' at 127.0.0.1:39876 stopped")
    assert not leaks("party 'server1' failed: ValueError (the error's message stays with party 'server1')")


def test_a_notice_keeps_the_kind_and_the_blamed_parties_only():
    assert abort_notice(ValueError(f"input has a value of magnitude {SECRET_TEXT}")) == "ValueError"
    assert abort_notice(f"ValueError: input has a value of magnitude {SECRET_TEXT}") == "ValueError"
    assert abort_notice(f"input has a value of magnitude {SECRET_TEXT}") == "Error"
    assert abort_notice(peer_fault("party 'b' stalled", ("b",))) == "PeerError|b"
    wrapped = RuntimeError("while serving")
    wrapped.__cause__ = peer_fault("x", ("b", "c"))
    assert abort_notice(wrapped) == "RuntimeError|b,c"
    # a receiver reads only a kind and known party names out of whatever a peer sends
    assert read_notice(b"ValueError|b,mallory", ("a", "b")) == ("ValueError", ("b",))
    assert read_notice(f"ValueError: magnitude {SECRET_TEXT}".encode(), ("a", "b")) == ("ValueError", ())
    assert read_notice(f"magnitude {SECRET_TEXT}\x1b[2J".encode(), ("a", "b")) == ("Error", ())


@pytest.mark.parametrize("backend", SECURE_BACKENDS)
def test_embedded_parties_learn_the_kind_not_the_message(backend):
    """One process, a thread per party: the other threads stop naming the client and the
    error's kind; the caller (who runs every party) gets the client's full error."""
    runner = ThreadedParties(PARTY_NAMES, get_backend(backend).make_kernels(), tiny_mlp()[0].numerics,
                             ("server0", "server1"), "dealer", timeout_s=10.0)
    seen: dict[str, str] = {}

    def body(ctx) -> None:
        if ctx.name == CLIENT:
            refuse(ctx)
        try:
            ctx.messenger.recv(CLIENT)
        except PeerError as exc:
            seen[ctx.name] = str(exc)
            raise

    with pytest.raises(ValueError, match=re.escape(SECRET_TEXT)):
        runner.run(body)
    assert set(seen) == set(OTHERS)
    for party, error in seen.items():
        assert f"party {CLIENT!r} failed: ValueError" in error, error
        assert not leaks(error), f"{party}: {error}"


@pytest.mark.parametrize("engine", ["gloo", "grpc"])
def test_distributed_peers_learn_the_kind_not_the_message(engine):
    """One transport per party (in threads of this process, over loopback TCP): the
    failing party raises its full error; every peer's error names it and its kind only."""
    config = loopback_cluster(PARTIES, timeout_s=10.0)
    program = tiny_mlp()[0]
    kernels = get_backend("torch-spdz" if engine == "gloo" else "tf-pond").make_kernels()

    def party(name: str) -> str:
        transport = transport_class(engine)(config, name)
        runner = DistributedParty(transport, kernels, program.numerics, ("server0", "server1"), "dealer")
        try:
            runner.run(lambda ctx: refuse(ctx) if ctx.name == CLIENT else ctx.messenger.recv(CLIENT))
        except Exception as exc:  # noqa: BLE001 - the test reads it
            return f"{type(exc).__name__}: {exc}"
        finally:
            transport.close()
        return "finished"

    errors = in_threads(party, PARTY_NAMES)
    assert SECRET_TEXT in errors[CLIENT], errors[CLIENT]
    for name in OTHERS:
        assert f"party {CLIENT!r} failed: ValueError" in errors[name], errors[name]
        assert not leaks(errors[name]), f"{name}: {errors[name]}"


@pytest.mark.parametrize("backend", SECURE_BACKENDS)
def test_a_refused_input_reaches_no_other_party(backend):
    """The full serving path, one party per transport: the client's input of 9.87654e+14
    is refused at the client; the model owner's and the dealer's errors do not quote it."""
    program, weights = tiny_mlp()
    config = loopback_cluster(PARTIES, timeout_s=10.0)
    secure = get_backend(backend)
    x = np.zeros((2, 6))
    x[1, 3] = SECRET

    def party(name: str) -> str:
        executable = secure.prepare(program, weights if name == program.placement.param_owner else None,
                                    cluster=config, party=name)
        try:
            executable.run({"x": x if name == CLIENT else np.zeros_like(x)})
        except Exception as exc:  # noqa: BLE001 - the test reads it
            return f"{type(exc).__name__}: {exc}"
        finally:
            executable.parties.transport.close()
        return "finished"

    outcome = in_threads(party, PARTY_NAMES)
    assert SECRET_TEXT in str(outcome[CLIENT]), outcome
    assert any(str(outcome[n]) != "finished" for n in OTHERS), outcome  # the model owner waits for the input
    for name in OTHERS:
        assert not leaks(str(outcome[name])), f"{name}: {outcome[name]}"
        if outcome[name] != "finished":  # it names the client (failed, or gone before it could go on)
            assert f"party {CLIENT!r}" in str(outcome[name]), outcome[name]


@pytest.mark.slow
@pytest.mark.parametrize("backend", SECURE_BACKENDS)
def test_launched_parties_print_no_other_partys_secret(tmp_path, backend):
    """``privacy-bridge launch``: every party in its own process, its output prefixed with
    its name.  The client's own output shows the refused value; no other party's does."""
    program, weights = tiny_mlp()
    save_program(tmp_path / "program", program, weights)
    (tmp_path / "cluster.toml").write_text(to_toml(loopback_cluster(PARTIES, timeout_s=10.0)))
    log = io.StringIO()
    script = Path(__file__).with_name("refused_input_script.py")
    report = launch_parties(tmp_path / "cluster.toml", [str(script), str(tmp_path / "program"), backend],
                            timeout_s=300, grace_s=30, stream=log, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = log.getvalue().splitlines()
    own = "\n".join(line for line in lines if line.startswith(f"[{CLIENT}]"))
    assert report.returncodes[CLIENT] == 1 and SECRET_TEXT in own, log.getvalue()[-3000:]
    for name in OTHERS:
        output = "\n".join(line for line in lines if line.startswith(f"[{name}]"))
        assert not leaks(output), f"{name}:\n{output}"
    assert report.killed == [], log.getvalue()[-3000:]
