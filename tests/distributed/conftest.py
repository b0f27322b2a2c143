"""Helpers for the distributed tests: free loopback ports, loopback clusters, transports in threads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.cluster import ClusterConfig, PartyEntry
from bridge.ir import Role
from tests.distributed.models import PARTIES

#: a party that sends nothing for this long is declared dead (short, for tests)
TIMEOUT_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_keys_dir: Path | None = None
_keys_lock = threading.Lock()


def session_keys(names: list[str] | tuple[str, ...]) -> Path:
    """A directory (one per test process) holding a key pair for each of ``names``,
    made once per name: the clusters of the tests are secured, as users' are."""
    global _keys_dir
    import atexit
    import shutil
    import tempfile

    from bridge.security.keys import keygen

    with _keys_lock:
        if _keys_dir is None:
            _keys_dir = Path(tempfile.mkdtemp(prefix="privacy-bridge-test-keys-"))
            atexit.register(shutil.rmtree, _keys_dir, True)
        missing = [n for n in names if not (_keys_dir / f"{n}.key").exists()]
        if missing:
            keygen(missing, _keys_dir)
        return _keys_dir


def loopback_cluster(parties: dict[str, frozenset[Role]] | list[str] = PARTIES, timeout_s: float = TIMEOUT_S,
                     **settings: Any) -> ClusterConfig:
    """A cluster on free loopback ports, secured with this session's keys
    (``insecure=True`` for a cleartext one)."""
    roles = parties if isinstance(parties, dict) else {n: frozenset({Role.COMPUTE}) for n in parties}
    if not settings.get("insecure") and "keys" not in settings:
        settings["keys"] = str(session_keys(list(roles)))
    return ClusterConfig(
        parties=tuple(PartyEntry(name=n, roles=r, address=f"127.0.0.1:{free_port()}") for n, r in roles.items()),
        timeout_s=timeout_s,
        **settings,
    )


def in_threads(fn: Callable[[str], Any], names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """fn(name) for every name at once (transports of one cluster must start together);
    an exception is returned in place of the result."""
    results: dict[str, Any] = {}

    def body(name: str) -> None:
        try:
            results[name] = fn(name)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            results[name] = exc

    threads = [threading.Thread(target=body, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def transport_class(engine: str):
    if engine == "gloo":
        from backends.torch_spdz.transport import GlooTransport

        return GlooTransport
    from backends.tf_pond.transport import GrpcTransport

    return GrpcTransport


@pytest.fixture(params=["gloo", "grpc"])
def engine(request) -> str:
    return request.param


ROOT = Path(__file__).resolve().parents[2]


def script_env(backend: str) -> dict[str, str]:
    """The environment of a user script run in a subprocess: this checkout importable, Keras on
    torch, ``backend`` chosen by configuration, and no cluster: embedded unless launched."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="torch",
               PRIVACY_BRIDGE_BACKEND=backend)
    for key in ("PRIVACY_BRIDGE_CLUSTER", "PRIVACY_BRIDGE_PARTY", "RANK", "WORLD_SIZE"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory) -> Callable[[str, Callable[[Path], Any]], Any]:
    """``once(key, make)``: ``make(directory)`` (JSON-able) run once per test session, whichever
    worker asks first; the other xdist workers wait for it and read its result.  Tests that check
    different things of one launched run share it this way: every launch costs each process its
    Keras/torch/TensorFlow imports (seconds of CPU), and pytest-xdist's ``--dist loadgroup``
    cannot keep such tests on one worker under pytest 9 (it renames node ids, which pytest 9
    no longer allows)."""
    import fcntl
    import json

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-runs"
    root.mkdir(exist_ok=True)

    def once(key: str, make: Callable[[Path], Any]) -> Any:
        result = root / f"{key}.json"
        with open(root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not result.exists():
                where = root / key
                where.mkdir(exist_ok=True)
                value = make(where)  # a failure is not kept: the next test that asks runs it again
                result.write_text(json.dumps(value))
        return json.loads(result.read_text())

    return once


def run_embedded(script: Path, args: list[str], backend: str, cwd: Path) -> str:
    """Run a user script in one process (every party in threads); its stdout."""
    done = subprocess.run([sys.executable, str(script), *args], env=script_env(backend), cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
