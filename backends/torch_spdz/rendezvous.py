"""gloo's rendezvous over the authenticated store of ``bridge.security.rendezvous``.

``ProcessGroupGloo`` accepts any ``torch.distributed.Store``, a Python subclass too:
``AuthenticatedStore`` forwards gloo's calls (set/get/wait/check/add...) to the
mutually authenticated TLS store that rank 0 serves, instead of an open ``TCPStore``.
"""

from __future__ import annotations

import datetime

import torch.distributed as dist

from bridge.security.rendezvous import (
    ADD,
    CHECK,
    COMPARE_SET,
    DELETE,
    GET,
    NUM_KEYS,
    SET,
    WAIT,
    RendezvousClient,
)


def _key(key: str) -> bytes:
    return key.encode("utf-8")


def _value(value: str | bytes | list[int]) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


class AuthenticatedStore(dist.Store):
    """A ``Store`` whose every call goes to the cluster's TLS rendezvous."""

    def __init__(self, client: RendezvousClient) -> None:
        super().__init__()
        self.client = client
        self._timeout_s = client.timeout_s

    # gloo and the transport use these
    def set(self, key: str, value: str | bytes) -> None:
        self.client.call(SET, _key(key), _value(value))

    def get(self, key: str) -> bytes:
        return self.client.call(GET, _key(key), repr(self._timeout_s).encode())[0]

    def wait(self, keys: list[str], timeout: datetime.timedelta | None = None) -> None:
        seconds = self._timeout_s if timeout is None else timeout.total_seconds()
        self.client.call(WAIT, repr(seconds).encode(), *(_key(k) for k in keys))

    def check(self, keys: list[str]) -> bool:
        return self.client.call(CHECK, *(_key(k) for k in keys))[0] == b"1"

    def add(self, key: str, amount: int) -> int:
        return int(self.client.call(ADD, _key(key), str(int(amount)).encode())[0])

    def compare_set(self, key: str, expected: str | bytes, desired: str | bytes) -> bytes:
        return self.client.call(COMPARE_SET, _key(key), _value(expected), _value(desired))[0]

    def delete_key(self, key: str) -> bool:
        return self.client.call(DELETE, _key(key))[0] == b"1"

    def num_keys(self) -> int:
        return int(self.client.call(NUM_KEYS)[0])

    def set_timeout(self, timeout: datetime.timedelta) -> None:
        self._timeout_s = timeout.total_seconds()
