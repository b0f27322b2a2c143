"""A service on loopback for the tests: cluster file, keys, admitted identities."""

from __future__ import annotations

import socket
from pathlib import Path

from bridge.security.keys import keygen

PARTIES = {"server0": "compute", "server1": "compute", "dealer": "dealer"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_service(root: Path, clients: list[str] = ("alice", "bob", "carol", "dave"), timeout_s: float = 5.0,
                 max_batch: int = 64, max_delay_ms: float = 5.0) -> Path:
    """Write root/cluster.toml (keys in root/keys, admitted identities in root/clients,
    the model owner "owner" among them); returns the file's path."""
    root.mkdir(parents=True, exist_ok=True)
    keygen(list(PARTIES), root / "keys")
    keygen(["owner", *clients], root / "clients")
    lines = [f"timeout_s = {timeout_s}", 'keys = "keys"', ""]
    for name, role in PARTIES.items():
        lines += ["[[parties]]", f'name = "{name}"', f'roles = ["{role}"]', f'address = "127.0.0.1:{free_port()}"', ""]
    lines += ["[serving]", 'clients = "clients"', 'model_owner = "owner"', 'state = "state"',
              f"max_batch = {max_batch}", f"max_delay_ms = {max_delay_ms}", "", "[serving.listen]"]
    lines += [f'{name} = "127.0.0.1:{free_port()}"' for name in PARTIES]
    path = root / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


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

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
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
                        states[party] = c.status(party)["ready"]
                except Exception:  # noqa: BLE001 - not up yet
                    states[party] = False
            if all(states.values()):
                return
            for party, proc in self.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{party} exited with {proc.returncode}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready after {timeout_s} s: {states}\n{self.logs()}")
            time.sleep(0.5)


def wait_listening(cluster: Path, parties: Parties, timeout_s: float = 300.0) -> None:
    from bridge.serving.client import ServingClient

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ServingClient(cluster, "owner", parties=tuple(PARTIES), timeout_s=5).close()
            return
        except Exception as exc:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise AssertionError(f"the parties do not listen after {timeout_s} s ({exc})\n{parties.logs()}") \
                    from exc
            for party, proc in parties.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{party} exited with {proc.returncode}\n{parties.logs()}") from exc
            time.sleep(0.3)
