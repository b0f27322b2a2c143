"""Active attackers on the party channels: a forged party, a stranger at the rendezvous, the listening addresses."""

from __future__ import annotations

import datetime
import socket
import ssl
from pathlib import Path

import grpc
import pytest

from bridge.cluster import ClusterConfig, split_address
from bridge.mpc.comm import PeerError
from bridge.mpc.distributed import ABORT, DATA, GOODBYE
from bridge.security.keys import keygen, load_credentials, san_name
from tests.distributed.conftest import engine, free_port, in_threads, loopback_cluster, transport_class  # noqa: F401

NAMES = ["server0", "server1", "dealer"]


def _forged(config: ClusterConfig, name: str, tmp_path: Path) -> ClusterConfig:
    """``config`` as an impostor of ``name`` sees it: its own new key, pinned (in its copy only) for ``name``."""
    keygen([name], tmp_path)
    return config.model_copy(update={"parties": tuple(
        p.model_copy(update={"key": str(tmp_path / f"{name}.key"), "certificate": str(tmp_path / f"{name}.crt")})
        if p.name == name else p for p in config.parties)})


def _open(config: ClusterConfig, engine: str, names: list[str]) -> dict:
    transports = in_threads(lambda n: transport_class(engine)(config, n), names)
    for name, t in transports.items():
        assert not isinstance(t, BaseException), f"{name}: {t!r}"
    return transports


def _close(transports: dict) -> None:
    in_threads(lambda n: transports[n].close(), list(transports))


def _grpc_call(config: ClusterConfig, target: str, key_pem: bytes, cert_pem: bytes):
    """A Deliver stub to ``target`` over TLS with the given client key (trusting ``target``'s pin)."""
    pinned = load_credentials(config, target).pinned_pem[target]
    channel = grpc.secure_channel(
        config.party(target).address, grpc.ssl_channel_credentials(pinned, key_pem, cert_pem),
        options=[("grpc.ssl_target_name_override", san_name(target))])
    return channel, channel.unary_unary("/privacy_bridge.Party/Deliver")


def test_a_forged_party_is_refused_at_the_handshake(engine, tmp_path):
    """Someone with a key of its own, claiming server1's name, can neither deliver nor abort nor say goodbye."""
    if engine == "grpc":
        config = loopback_cluster(NAMES, timeout_s=5.0)
        ts = _open(config, engine, NAMES)
        forged = load_credentials(_forged(config, "server1", tmp_path), "server1")
        channel, deliver = _grpc_call(config, "server0", forged.key_pem, forged.certificate_pem)
        for kind, body in ((DATA, b"planted dealer seed"), (ABORT, b"server1 gives up"), (GOODBYE, b"")):
            with pytest.raises(grpc.RpcError) as refused:
                deliver(body, metadata=(("pb-from", "server1"), ("pb-kind", str(kind))), timeout=3)
            assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
        channel.close()
        # a real member (the dealer, with its own pinned key) claiming to be server1
        dealer = load_credentials(config, "dealer")
        channel, deliver = _grpc_call(config, "server0", dealer.key_pem, dealer.certificate_pem)
        for kind in (DATA, ABORT, GOODBYE):
            with pytest.raises(grpc.RpcError) as denied:
                deliver(b"x", metadata=(("pb-from", "server1"), ("pb-kind", str(kind))), timeout=3)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "not the one the cluster pins for 'server1'" in denied.value.details()
        channel.close()
        # nothing was planted: server0 is not aborted, and server1's first real message is the first it gets
        ts["server1"].send("server0", b"the real server1")
        assert ts["server0"].recv("server1") == b"the real server1"
        _close(ts)
        return
    # gloo: with torchrun's (open) agent store the impostor reaches the pairwise handshake itself
    import torch.distributed as dist

    port = free_port()
    agent = dist.TCPStore("127.0.0.1", port, 2, True, timeout=datetime.timedelta(seconds=5), wait_for_workers=False)
    config = loopback_cluster(["server0", "server1"], timeout_s=3.0, rendezvous=f"127.0.0.1:{port}",
                              external_rendezvous=True)
    impostor = _forged(config, "server1", tmp_path)
    cls = transport_class(engine)
    results = in_threads(lambda n: cls(config if n == "server0" else impostor, n), ["server0", "server1"])
    assert isinstance(results["server0"], PeerError), results["server0"]
    assert "party 'server0' refused party 'server1' at the handshake" in str(results["server0"])
    assert "did not prove that it holds the key the cluster file pins for 'server1'" in str(results["server0"])
    for t in results.values():
        if not isinstance(t, BaseException):
            t.close()
    del agent


def test_a_forged_party_cannot_join_and_is_named_as_missing(engine, tmp_path):
    config = loopback_cluster(NAMES, timeout_s=2.0)
    impostor = _forged(config, "server1", tmp_path)
    cls = transport_class(engine)
    results = in_threads(lambda n: cls(impostor if n == "server1" else config, n), NAMES)
    for real in ("server0", "dealer"):
        assert isinstance(results[real], PeerError), results[real]
        assert "'server1' at" in str(results[real]) and "did not show up" in str(results[real])
    assert isinstance(results["server1"], PeerError), results["server1"]
    if engine == "gloo":  # the rendezvous itself refused the impostor's TLS handshake
        assert "could not join the rendezvous" in str(results["server1"])
        assert "TLS handshake failed" in str(results["server1"])


def _listening(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on ``port`` (from /proc/net/tcp, tcp6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    text = socket.inet_ntop(socket.AF_INET6, words)
                    found.add(text.removeprefix("::ffff:") if text.startswith("::ffff:") and "." in text else text)
    return found


@pytest.mark.parametrize("insecure", [False, True], ids=["secure", "insecure"])
def test_every_party_listens_on_its_configured_address_only(engine, insecure):
    settings = {"insecure": True} if insecure else {}
    config = loopback_cluster(["a", "b"], timeout_s=3.0, **settings)
    ts = _open(config, engine, ["a", "b"])
    try:
        ports = {split_address(p.address)[1] for p in config.parties}
        if engine == "gloo":
            ports = {config.rendezvous_address[1]}  # rank 0's rendezvous; gloo's pairs bind the party's host
        for port in ports:
            assert _listening(port) == {"127.0.0.1"}, (port, _listening(port))
    finally:
        _close(ts)


def test_an_outsider_can_neither_read_nor_write_the_gloo_rendezvous(tmp_path):
    import torch.distributed as dist

    config = loopback_cluster(["a", "b"], timeout_s=3.0)
    ts = _open(config, "gloo", ["a", "b"])
    host, port = config.rendezvous_address
    server = ts["a"]._rendezvous_server
    keys_before = ts["b"]._rendezvous_client.call(6)[0]  # NUM_KEYS
    try:
        # torch's own TCPStore client (what an attacker would use on today's store)
        with pytest.raises(Exception):  # noqa: B017 - torch raises RuntimeError or DistStoreError
            store = dist.TCPStore(host, port, 2, False, timeout=datetime.timedelta(seconds=2))
            store.set("privacy-bridge/passed/b", "1")
            store.get("0")
        # a raw socket writing a store command: no TLS handshake, no answer
        with socket.create_connection((host, port), timeout=3) as raw:
            raw.sendall(b"\x00\x00\x01\x00\x00\x00\x04evil\x00\x00\x00\x01x" * 4)
            raw.settimeout(3)
            try:
                answer = raw.recv(4096)
            except (ConnectionError, TimeoutError):
                answer = b""
            assert b"evil" not in answer and not answer[:1] == b"\x00"  # nothing but a TLS alert, or a close
        # TLS without a pinned certificate: with none, and with a self-signed one of its own
        keygen(["stranger"], tmp_path)
        for cert in (None, tmp_path / "stranger.crt"):
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            if cert is not None:
                context.load_cert_chain(cert, tmp_path / "stranger.key")
            with socket.create_connection((host, port), timeout=3) as raw:
                with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                    tls = context.wrap_socket(raw)
                    tls.sendall(b"\x01\x00\x02\x00\x00\x00\x01a\x00\x00\x00\x011")  # GET "a"
                    if not tls.recv(64):
                        raise ConnectionError("closed")
        assert len(server.refused) >= 3, server.refused
        assert ts["b"]._rendezvous_client.call(6)[0] == keys_before  # nothing was written
    finally:
        _close(ts)


def test_the_insecure_rendezvous_is_torch_s_open_store_the_positive_control():
    """With insecure = true an outsider's TCPStore client does get in (what the secure store prevents)."""
    import torch.distributed as dist

    config = loopback_cluster(["a", "b"], timeout_s=3.0, insecure=True)
    ts = _open(config, "gloo", ["a", "b"])
    host, port = config.rendezvous_address
    try:
        outsider = dist.TCPStore(host, port, 2, False, timeout=datetime.timedelta(seconds=3))
        outsider.set("privacy-bridge//failed/a", "forged")  # under the parties' PrefixStore
        assert ts["a"]._store.get("failed/a") == b"forged"  # rank 0 reads what the outsider wrote
        del outsider
    finally:
        _close(ts)
