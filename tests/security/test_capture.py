"""A passive observer on loopback: what the party channels show to someone who captures every TCP payload.

The capture is a raw ``AF_PACKET`` socket on ``lo`` (root only; skipped otherwise).
The same exchange runs twice: with the cluster's keys (the default), no secret value
may appear in the capture; with ``insecure = true`` they must (the positive control
that shows the capture sees the traffic at all).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections import defaultdict

import numpy as np
import pytest

from bridge.mpc.comm import CommStats, Messenger
from tests.distributed.conftest import engine, in_threads, loopback_cluster, transport_class  # noqa: F401 - the fixture

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
MAX_CAPTURE_BYTES = 256 << 20


class LoopbackCapture:
    """Every TCP payload on ``lo`` while it runs, reassembled per flow (by sequence number)."""

    def __init__(self) -> None:
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
            self._sock.bind(("lo", 0))
        except (PermissionError, OSError, AttributeError) as exc:
            pytest.skip(f"capturing on lo needs root (a raw AF_PACKET socket): {exc}")
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        self._sock.settimeout(0.05)
        self._segments: dict[tuple, list[tuple[int, bytes]]] = defaultdict(list)
        self._bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "LoopbackCapture":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set() and self._bytes < MAX_CAPTURE_BYTES:
            try:
                frame, address = self._sock.recvfrom(1 << 18)
            except TimeoutError:
                continue
            except OSError:
                return
            if address[2] == PACKET_OUTGOING:  # each loopback packet is seen leaving and arriving
                continue
            parsed = _tcp_payload(frame)
            if parsed is not None and parsed[2]:
                flow, seq, payload = parsed
                self._segments[flow].append((seq, payload))
                self._bytes += len(payload)

    def streams(self) -> dict[tuple, bytes]:
        """Each flow's payload bytes in sequence order (retransmissions dropped)."""
        out = {}
        for flow, segments in self._segments.items():
            data, end = bytearray(), None
            for seq, payload in sorted(segments, key=lambda s: s[0]):
                if end is not None and seq < end:
                    payload = payload[end - seq:]
                    seq = end
                data += payload
                end = seq + len(payload)
            out[flow] = bytes(data)
        return out


def _tcp_payload(frame: bytes) -> tuple[tuple, int, bytes] | None:
    ethertype = struct.unpack("!H", frame[12:14])[0]
    ip = frame[14:]
    if ethertype == 0x0800 and ip[9] == 6:
        header = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        tcp, src, dst = ip[header:total], ip[12:16], ip[16:20]
    elif ethertype == 0x86DD and ip[6] == 6:
        tcp, src, dst = ip[40:40 + struct.unpack("!H", ip[4:6])[0]], ip[8:24], ip[24:40]
    else:
        return None
    sport, dport, seq = struct.unpack("!HHI", tcp[:8])
    offset = (tcp[12] >> 4) * 4
    return (src, sport, dst, dport), seq, tcp[offset:]


def _exchange(engine: str, insecure: bool, secrets: dict[str, np.ndarray]) -> tuple[dict[tuple, bytes], dict]:
    """Open a three-party cluster and send each peer its secret array, under capture."""
    settings = {"insecure": True} if insecure else {}
    config = loopback_cluster(["server0", "server1", "dealer"], timeout_s=10.0, **settings)
    cls = transport_class(engine)
    with LoopbackCapture() as capture:
        transports = in_threads(lambda n: cls(config, n), config.names)
        assert all(not isinstance(t, BaseException) for t in transports.values()), transports

        def talk(name: str) -> dict[str, np.ndarray]:
            messenger = Messenger(transports[name], CommStats())
            for peer in transports[name].peers:
                messenger.send(peer, secrets[f"{name}>{peer}"])
            return {peer: messenger.recv(peer) for peer in transports[name].peers}

        received = in_threads(talk, config.names)
        in_threads(lambda n: transports[n].close(), config.names)
    return capture.streams(), received


@pytest.mark.parametrize("insecure", [False, True], ids=["secure", "insecure-control"])
def test_a_passive_observer_sees_no_secret_value_unless_the_cluster_is_insecure(engine, insecure):
    names = ("server0", "server1", "dealer")
    # distinctive values from the CSPRNG: a chance match in 64-bit ciphertext is ~2^-40
    secrets = {f"{a}>{b}": np.frombuffer(os.urandom(8 * 64), dtype=np.int64).copy()
               for a in names for b in names if a != b}
    streams, received = _exchange(engine, insecure, secrets)
    for name in names:
        assert not isinstance(received[name], BaseException), received[name]
        for peer, array in received[name].items():
            np.testing.assert_array_equal(array, secrets[f"{peer}>{name}"])
    captured = b"\x00".join(streams.values())
    assert len(captured) > sum(a.nbytes for a in secrets.values())  # the capture saw the exchange
    seen = sum(value.tobytes() in captured for array in secrets.values() for value in array)
    total = sum(a.size for a in secrets.values())
    if insecure:
        assert seen >= 0.95 * total, f"the capture found only {seen} of {total} cleartext values"
    else:
        assert seen == 0, f"{seen} of {total} secret values crossed the wire in clear"
