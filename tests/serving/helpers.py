"""A service on loopback for the tests: the cluster file, keys and admitted identities;
the parties in their own processes (``Parties``) or in threads (``wait_nodes_ready``);
the client session every service test runs (good, bad, good, each good answer checked)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bridge.mpc.fixedpoint import FixedPointError
from bridge.mpc.range_check import FixedPointOverflowError
from bridge.security.keys import keygen

ROOT = Path(__file__).resolve().parents[2]
PARTIES = {"server0": "compute", "server1": "compute", "dealer": "dealer"}
CLIENTS = ["alice", "bob", "carol", "dave"]
#: fixed point with 16 fractional bits, three layers: answers within a few 1e-4
ATOL = 2e-3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_service(root: Path, clients: list[str] = tuple(CLIENTS), timeout_s: float = 5.0,
                 max_batch: int = 64, max_delay_ms: float = 5.0, operators: list[str] | None = None) -> Path:
    """Write root/cluster.toml (keys in root/keys, admitted identities in root/clients,
    the model owner "owner" among them); returns the file's path. ``operators``: the
    [serving] operators list (absent: the service's default)."""
    root.mkdir(parents=True, exist_ok=True)
    keygen(list(PARTIES), root / "keys")
    keygen(["owner", *clients], root / "clients")
    lines = [f"timeout_s = {timeout_s}", 'keys = "keys"', ""]
    for name, role in PARTIES.items():
        lines += ["[[parties]]", f'name = "{name}"', f'roles = ["{role}"]', f'address = "127.0.0.1:{free_port()}"', ""]
    lines += ["[serving]", 'clients = "clients"', 'model_owner = "owner"', 'state = "state"',
              f"max_batch = {max_batch}", f"max_delay_ms = {max_delay_ms}"]
    if operators is not None:
        lines.append("operators = [" + ", ".join(f'"{o}"' for o in operators) + "]")
    lines += ["", "[serving.listen]"]
    lines += [f'{name} = "127.0.0.1:{free_port()}"' for name in PARTIES]
    path = root / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- what every client checks ------------------------------------------------------------------
def plaintext(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """tiny_mlp's answer in float64 (tests.distributed.models)."""
    h = np.maximum(x @ weights["d0/kernel"] + weights["d0/bias"], 0)
    return h @ weights["d1/kernel"] + weights["d1/bias"]


def client_session(cluster: Path, name: str, weights: dict[str, np.ndarray], seed: int, results: dict) -> None:
    """good, NaN, wrong shape, overflowing, good: the errors are the library's; the good
    answers' largest deviations from ``plaintext`` go to ``results[name]`` (an exception instead if any)."""
    from frontends.keras.client import connect

    rng = np.random.default_rng(seed)
    out = []
    try:
        with connect(cluster, identity=name) as client:
            x = rng.uniform(-1, 1, size=(1 + seed % 3, 6))
            out.append(("good", np.abs(client.predict(x) - plaintext(weights, x)).max()))
            bad = x.copy()
            bad[0, 2] = np.nan
            with pytest.raises(FixedPointError, match="NaN"):
                client.predict(bad)
            with pytest.raises(ValueError, match=r"shape \(batch, 6\)"):
                client.predict(np.zeros((2, 5)))
            with pytest.raises(FixedPointOverflowError, match="layer"):
                client.predict(np.full((1, 6), 1e9))
            x2 = rng.uniform(-1, 1, size=(2, 6))
            out.append(("good", np.abs(client.predict(x2) - plaintext(weights, x2)).max()))
        results[name] = out
    except BaseException as exc:  # noqa: BLE001 - the test reads it
        results[name] = exc


def check_sessions(results: dict, clients: list[str], context: Any = "") -> None:
    """Every client finished its session, with both good answers right."""
    for name in clients:
        got = results.get(name)
        assert got is not None and not isinstance(got, BaseException), f"{name}: {got!r}\n{context}"
        assert [kind for kind, _ in got] == ["good", "good"], got
        assert max(err for _, err in got) < ATOL, (name, got)


#: requests each client_session sends to each compute server (good, overflowing, good: the
#: NaN and the wrong shape are refused at the client) and how many of them end in an error
SESSION_REQUESTS, SESSION_ERRORS = 3, 1


# -- the parties in threads of this process -----------------------------------------------------
@contextlib.contextmanager
def nodes_in_threads(service: Any, secure: Any, log: Callable[[str], None] = lambda _: None) -> Iterator[dict]:
    """The parties' ServingNodes of ``service`` on backend ``secure``, started in threads of this
    process and stopped when the block is left, whatever happened in it."""
    from bridge.serving.node import ServingNode

    nodes = {p: ServingNode(service, p, secure, log=log) for p in PARTIES}
    for node in nodes.values():
        node.start()
    try:
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


def wait_nodes_ready(nodes: dict, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(n.ready for n in nodes.values()):
        assert time.monotonic() < deadline, {p: n.ready for p, n in nodes.items()}
        time.sleep(0.1)


# -- the parties in their own processes -----------------------------------------------------------
def serve_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="torch",
               PYTHONFAULTHANDLER="1")
    for key in ("PRIVACY_BRIDGE_CLUSTER", "PRIVACY_BRIDGE_PARTY", "RANK", "WORLD_SIZE"):
        env.pop(key, None)
    return env


class Parties:
    """``privacy-bridge serve`` for each party, in its own process; output in root/<party>.log."""

    def __init__(self, cluster: Path, backend: str) -> None:
        self.cluster, self.backend = cluster, backend
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, party: str) -> None:
        log = open(self.cluster.parent / f"{party}.log", "a")  # noqa: SIM115 - closed with the process
        self.procs[party] = subprocess.Popen(
            [sys.executable, "-m", "frontends.cli", "serve", "--cluster", str(self.cluster), "--name", party,
             "--backend", self.backend], cwd=ROOT, env=serve_env(), stdout=log, stderr=subprocess.STDOUT)

    def start_all(self) -> None:
        for party in PARTIES:
            self.start(party)

    def kill(self, party: str) -> None:
        proc = self.procs.pop(party)
        proc.kill()
        proc.wait(10)

    def pause(self, party: str) -> None:
        """SIGSTOP: the process stays, its sockets stay open, nothing answers (a stalled server)."""
        self.procs[party].send_signal(signal.SIGSTOP)

    def resume(self, party: str) -> None:
        self.procs[party].send_signal(signal.SIGCONT)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGCONT)  # a paused process would not see SIGTERM
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()

    def logs(self) -> str:
        return "\n".join(f"--- {p}\n{(self.cluster.parent / f'{p}.log').read_text()[-3000:]}"
                         for p in PARTIES if (self.cluster.parent / f"{p}.log").exists())

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Until every party says it is ready (cluster formed, model set up)."""
        from bridge.serving.client import ServingClient

        deadline = time.monotonic() + timeout_s
        while True:
            states = {}
            for party in PARTIES:
                try:
                    with ServingClient(self.cluster, "owner", parties=(party,), timeout_s=5) as c:
                        states[party] = bool(c.hello(party)["ready"])  # health: any admitted identity
                except Exception:  # noqa: BLE001 - not up yet
                    states[party] = False
            if all(states.values()):
                return
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready after {timeout_s} s: {states}\n{self.logs()}")
            time.sleep(0.5)

    def wait_listening(self, timeout_s: float = 300.0) -> None:
        """Until every party accepts clients (before any deployment)."""
        from bridge.serving.client import ServingClient

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ServingClient(self.cluster, "owner", parties=tuple(PARTIES), timeout_s=5).close()
                return
            except Exception as exc:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise AssertionError(f"the parties do not listen after {timeout_s} s ({exc})\n{self.logs()}") \
                        from exc
                self._check_alive()
                time.sleep(0.3)

    def _check_alive(self) -> None:
        for party, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{party} exited with {proc.returncode}\n{self.logs()}")
