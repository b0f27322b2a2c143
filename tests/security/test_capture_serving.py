"""The issue's attack on a serving run: capture loopback, add the client's two shares, read its input.

Four parties, each with its own transport (threads of this process, real loopback
TCP): two compute servers (server0 owns the model), the dealer, and a client that
owns the input and receives the predictions.  With ``insecure = true`` an observer
that adds a share sent to server0 and one sent to server1 recovers the client's
encoded input exactly (the positive control); with the cluster's keys, nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from bridge.ir import Party, Placement, Role
from bridge.mpc import distributed
from bridge.registry import get_backend
from tests.distributed.conftest import in_threads, loopback_cluster
from tests.distributed.models import tiny_mlp
from tests.security.test_capture import LoopbackCapture

ROLES = {
    "server0": frozenset({Role.COMPUTE, Role.MODEL_OWNER}),
    "server1": frozenset({Role.COMPUTE}),
    "dealer": frozenset({Role.DEALER}),
    "client": frozenset({Role.DATA_OWNER, Role.CLIENT}),
}
FRACTION_BITS = 16


def _program():
    program, weights = tiny_mlp()
    placement = Placement(parties=tuple(Party(name=n, roles=r) for n, r in ROLES.items()),
                          input_owners={"x": "client"}, param_owner="server0", output_receivers={"y": ("client",)})
    return program.model_copy(update={"placement": placement}), weights


def _words(stream: bytes) -> dict[int, list[tuple[int, int]]]:
    """Every little-endian 64-bit word of ``stream`` at every byte offset: value -> [(offset, alignment)]."""
    table: dict[int, list[tuple[int, int]]] = {}
    for shift in range(8):
        usable = (len(stream) - shift) // 8 * 8
        if usable <= 0:
            continue
        values = np.frombuffer(stream[shift:shift + usable], dtype="<u8")
        for i, v in enumerate(values.tolist()):
            table.setdefault(v, []).append((shift + 8 * i, shift))
    return table


def _recover(streams: list[bytes], encoded: np.ndarray) -> int:
    """How many (stream, stream) placements of two shares add up to the whole encoded input."""
    target = encoded.astype(np.uint64)
    n = target.size
    found = 0
    tables = [_words(s) for s in streams]
    for a, stream_a in enumerate(streams):
        view_a = {shift: np.frombuffer(stream_a[shift:shift + (len(stream_a) - shift) // 8 * 8], dtype="<u8")
                  for shift in range(8) if len(stream_a) - shift >= 8}
        for shift, words in view_a.items():
            for i, first in enumerate(words.tolist()):
                if i + n > words.size:
                    break
                need = (int(target[0]) - first) % (1 << 64)
                for b, table in enumerate(tables):
                    for offset, _ in table.get(need, ()):
                        if offset + 8 * n > len(streams[b]):
                            continue  # too close to the stream's end to hold the whole input
                        other = np.frombuffer(streams[b][offset:offset + 8 * n], dtype="<u8")
                        if other.size == n and np.array_equal(words[i:i + n] + other, target):
                            found += 1
    return found


@pytest.mark.parametrize("backend", ["torch-spdz", "tf-pond"])
@pytest.mark.parametrize("insecure", [False, True], ids=["secure", "insecure-control"])
def test_a_passive_observer_cannot_add_up_the_client_s_shares(backend, insecure):
    if backend == "tf-pond":
        pytest.importorskip("tensorflow")
    program, weights = _program()
    settings = {"insecure": True} if insecure else {}
    config = loopback_cluster(ROLES, timeout_s=20.0, **settings)
    engine = get_backend(backend)
    x = np.array([[0.8125, -0.4375, 0.3125, -0.9375, 0.6875, 0.1875]])  # exact in 16 fractional bits
    encoded = np.round(x[0] * (1 << FRACTION_BITS)).astype(np.int64).view(np.uint64)
    with LoopbackCapture() as capture:
        # every party's connections at once (``connect`` opens one process's party at a time)
        transports = in_threads(lambda n: engine.make_transport(config, n), list(ROLES))
        assert all(not isinstance(t, BaseException) for t in transports.values()), transports
        keys = {n: (engine.name, config.model_dump_json(), n) for n in ROLES}
        distributed._connections.update({keys[n]: transports[n] for n in ROLES})
        try:
            prepared = in_threads(lambda n: engine.prepare(program, weights if n == "server0" else None,
                                                           cluster=config, party=n), list(ROLES))
            assert all(not isinstance(e, BaseException) for e in prepared.values()), prepared
            results = in_threads(lambda n: prepared[n].run({"x": x if n == "client" else np.zeros_like(x)}),
                                 list(ROLES))
            assert all(not isinstance(r, BaseException) for r in results.values()), results
        finally:
            for key in keys.values():
                distributed._connections.pop(key, None)
            in_threads(lambda n: transports[n].close(), list(ROLES))
    hidden = np.maximum(x @ weights["d0/kernel"] + weights["d0/bias"], 0.0)
    np.testing.assert_allclose(results["client"].outputs["y"], hidden @ weights["d1/kernel"] + weights["d1/bias"],
                               atol=2e-3)  # the sealed run still computes the right answer
    streams = [s for s in capture.streams().values() if len(s) >= 8 * encoded.size]
    recovered = _recover(streams, encoded)
    if insecure:
        assert recovered >= 1, "the control failed: the capture did not show the client's two shares"
    else:
        assert recovered == 0, "an observer added two captured shares and read the client's input"
