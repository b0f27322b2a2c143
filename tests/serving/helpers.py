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
