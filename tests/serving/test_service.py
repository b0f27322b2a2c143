"""The service end to end, one process per party, on both backends: deploy once; four
clients at once sending good, bad and good requests (every good answer checked, every
bad one refused with the library's error, at the client or by the servers); an unknown
client refused at the handshake; a server killed and restarted serves from its stored
share without the model owner."""

from __future__ import annotations

import stat
import threading

import numpy as np
import pytest

from bridge.mpc.fixedpoint import FixedPointError
from bridge.mpc.range_check import FixedPointOverflowError
from bridge.security.keys import keygen
from bridge.serving.channel import ServingError
from bridge.serving.client import ServiceUnavailableError, deploy
from frontends.keras.client import connect
from tests.distributed.models import tiny_mlp
from tests.serving.helpers import Parties, make_service, wait_listening

CLIENTS = ["alice", "bob", "carol", "dave"]
#: fixed point with 16 fractional bits, three layers: answers within a few 1e-4
ATOL = 2e-3


def plaintext(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = np.maximum(x @ weights["d0/kernel"] + weights["d0/bias"], 0)
    return h @ weights["d1/kernel"] + weights["d1/bias"]


def client_session(cluster, name: str, weights, seed: int, results: dict) -> None:
    """good, NaN, wrong shape, overflowing, good: the errors are the library's; the good answers right."""
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


@pytest.mark.slow  # one process per party: minutes on a loaded 2-core host; test_service_threads.py is the short one
@pytest.mark.parametrize("backend", ["torch-spdz", "tf-pond"])
def test_service_clients_restart_and_refusal(tmp_path, backend):
    cluster = make_service(tmp_path, clients=CLIENTS, timeout_s=20.0)
    parties = Parties(cluster, backend)
    parties.start_all()
    try:
        wait_listening(cluster, parties)
        program, weights = tiny_mlp()
        deploy(cluster, program, weights, "owner")
        parties.wait_ready()
        share = tmp_path / "state" / "server0" / "share.npz"
        assert stat.S_IMODE(share.stat().st_mode) == 0o600

        # four clients at once: good, bad (three ways), good
        results: dict = {}
        threads = [threading.Thread(target=client_session, args=(cluster, n, weights, i, results))
                   for i, n in enumerate(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        for name in CLIENTS:
            assert not isinstance(results.get(name), BaseException), f"{name}: {results.get(name)!r}\n{results.get(name)}\n{parties.logs()}"
            assert [kind for kind, _ in results[name]] == ["good", "good"]
            assert max(err for _, err in results[name]) < ATOL, results[name]

        # an identity the deployment does not admit is refused at the handshake
        keygen(["mallory"], tmp_path / "outsider")
        with pytest.raises(ServingError, match="refused identity 'mallory'"):
            connect(cluster, identity=tmp_path / "outsider" / "mallory.key")

        # a server dies: a waiting client gets a clear error; restarted, it serves from its stored share
        with connect(cluster, identity="alice", timeout_s=25) as client:
            parties.kill("server1")
            with pytest.raises(ServiceUnavailableError):
                client.predict(np.zeros((1, 6)))
        parties.start("server1")
        parties.wait_ready()
        x = np.random.default_rng(9).uniform(-1, 1, size=(3, 6))
        with connect(cluster, identity="bob") as client:
            assert np.abs(client.predict(x) - plaintext(weights, x)).max() < ATOL
    finally:
        parties.stop_all()
