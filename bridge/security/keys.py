"""Party keys: one ECDSA P-256 key and a self-signed certificate naming the party.

The same key pair serves both transports: tf-pond's gRPC runs TLS 1.3 with mutual
authentication on these certificates, torch-spdz's gloo frames are keyed by an X25519
exchange that each party signs with this key.  The cluster file pins every party's
certificate (``keys = "DIR"`` means ``DIR/<party>.crt``; a party's ``certificate`` may
name another file or hold the PEM inline), and each process reads its own private key
(``DIR/<party>.key``, or the party's ``key`` path).  ``privacy-bridge keygen`` writes
them: private keys atomically with mode 0600.  A cluster that pins no keys refuses to
start unless it says ``insecure = true``, which runs cleartext with a warning.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.cluster import ClusterConfig, ClusterError

#: a party's name as the DNS name in its certificate (what gRPC checks against the target name)
SAN_SUFFIX = ".party.privacy-bridge"
CERT_YEARS = 10
KEYGEN_HINT = (
    "Run `privacy-bridge keygen --cluster CLUSTER.toml` to make every party's key and certificate "
    "(it adds keys = \"keys\" to the file), or set insecure = true in the cluster file to run "
    "cleartext and unauthenticated on a network you trust."
)


def san_name(party: str) -> str:
    """The DNS name a party's certificate carries, for gRPC's host name check.  Party
    names may hold '_', which is not a host name character: it becomes '--'.  Identity
    does not rest on this name: each channel trusts only the one certificate pinned for
    its peer, and each server matches the client's certificate against the pins."""
    return party.replace("_", "--").lower() + SAN_SUFFIX


def make_party_key(party: str) -> tuple[bytes, bytes]:
    """(private key PEM, self-signed certificate PEM) for ``party``, from the OS CSPRNG."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, party),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "privacy-bridge party")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365 * CERT_YEARS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(san_name(party))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                              x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file atomically, readable by its owner only (0600 from creation on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def keygen(parties: tuple[str, ...] | list[str], out_dir: str | Path, *, force: bool = False) -> list[Path]:
    """Write ``<party>.key`` (0600) and ``<party>.crt`` for each party into ``out_dir``;
    existing keys are kept unless ``force`` (a new key invalidates every copy of the old
    certificate)."""
    out = Path(out_dir)
    existing = [p for p in parties if (out / f"{p}.key").exists() or (out / f"{p}.crt").exists()]
    if existing and not force:
        raise ClusterError(
            f"{out} already holds keys for {existing}; pass --force to replace them (every host then "
            "needs the new certificates), or choose another --out directory"
        )
    written = []
    for party in parties:
        key_pem, cert_pem = make_party_key(party)
        write_private(out / f"{party}.key", key_pem)
        write_public(out / f"{party}.crt", cert_pem)
        written += [out / f"{party}.key", out / f"{party}.crt"]
    return written


# -- loading -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PartyCredentials:
    """This party's private key and certificate, and the certificate pinned for every party."""

    party: str
    key_pem: bytes
    certificate_pem: bytes
    #: party -> its pinned certificate (PEM), this party's own included
    pinned_pem: dict[str, bytes]

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        return _private_key(self.key_pem)

    def certificate(self, party: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.pinned_pem[party])

    def public_key(self, party: str) -> ec.EllipticCurvePublicKey:
        key = self.certificate(party).public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return key

    def fingerprint(self, party: str) -> str:
        return hashlib.sha256(self.certificate(party).public_bytes(serialization.Encoding.DER)).hexdigest()

    def party_of_certificate(self, der: bytes) -> str | None:
        """Which party's pinned certificate this is (DER), if any."""
        digest = hashlib.sha256(der).hexdigest()
        return next((p for p in self.pinned_pem if self.fingerprint(p) == digest), None)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))

    def verify(self, party: str, signature: bytes, data: bytes) -> bool:
        try:
            self.public_key(party).verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


def warn_insecure(cluster: ClusterConfig, party: str) -> None:
    """Say loudly that this party's channels are cleartext (each time it opens them)."""
    print(
        f"WARNING: privacy-bridge party {party!r}: the cluster file says insecure = true. Its channels "
        "are CLEARTEXT and UNAUTHENTICATED: anyone on the network can read every share and forge "
        "any party. Use it only on a network you trust; run `privacy-bridge keygen --cluster FILE` "
        "and remove insecure = true to secure it.",
        file=sys.stderr,
        flush=True,
    )


def load_credentials(cluster: ClusterConfig, party: str) -> PartyCredentials | None:
    """``party``'s credentials in ``cluster``, or None (after a warning) if it is insecure.

    Every party must have a pinned certificate and ``party`` its private key, which must
    match its own pinned certificate; otherwise a ``ClusterError`` says what is missing.
    """
    cluster.party(party)
    if cluster.insecure:
        warn_insecure(cluster, party)
        return None
    pinned: dict[str, bytes] = {}
    missing = []
    for name in cluster.names:
        source = cluster.certificate_source(name)
        if source is None:
            missing.append(f"{name!r} (no certificate)")
            continue
        pem = _read_certificate(name, source)
        if pem is None:
            missing.append(f"{name!r} ({source} does not exist)")
            continue
        pinned[name] = pem
    if missing:
        raise ClusterError(f"the cluster pins no certificate for part{'y' if len(missing) == 1 else 'ies'} "
                           f"{', '.join(missing)}. {KEYGEN_HINT}")
    key_path = cluster.key_path(party)
    if key_path is None or not Path(key_path).is_file():
        raise ClusterError(
            f"party {party!r} has no private key{'' if key_path is None else f' at {key_path}'}: a party "
            "needs its own key (made by privacy-bridge keygen) on its host, next to the certificates "
            f"of the others. {KEYGEN_HINT}"
        )
    key_pem = Path(key_path).read_bytes()
    try:
        key = _private_key(key_pem)
    except ValueError as exc:
        raise ClusterError(f"party {party!r}'s private key {key_path} is not a PEM EC P-256 key: {exc}") from exc
    own = x509.load_pem_x509_certificate(pinned[party])
    if own.public_key().public_numbers() != key.public_key().public_numbers():
        raise ClusterError(
            f"party {party!r}'s private key {key_path} does not match the certificate the cluster pins for "
            f"{party!r} ({cluster.certificate_source(party)}): they come from different keygen runs. Copy "
            "the matching pair, or rerun keygen and distribute the new certificates."
        )
    return PartyCredentials(party=party, key_pem=key_pem, certificate_pem=pinned[party], pinned_pem=pinned)


def _read_certificate(party: str, source: str) -> bytes | None:
    if source.lstrip().startswith("-----BEGIN"):
        pem = source.strip().encode() + b"\n"
        where = "inline"
    else:
        path = Path(source)
        if not path.is_file():
            return None
        pem, where = path.read_bytes(), source
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ClusterError(f"the certificate pinned for party {party!r} ({where}) is not a PEM certificate: {exc}") \
            from exc
    if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
        raise ClusterError(f"the certificate pinned for party {party!r} ({where}) does not hold an EC key; "
                           "make it with privacy-bridge keygen")
    return cert.public_bytes(serialization.Encoding.PEM)


def _private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("expected an unencrypted EC P-256 private key")
    return key


# -- keygen for a cluster file ---------------------------------------------------------------------

def default_keys_dir(cluster_path: str | Path, config: ClusterConfig) -> Path:
    """Where a cluster's keys go: its ``keys`` directory, or ``keys/`` beside the file."""
    return Path(config.keys) if config.keys is not None else Path(cluster_path).resolve().parent / "keys"


def pin_keys_dir(cluster_path: str | Path, keys_dir: Path) -> str:
    """Add ``keys = "..."`` (relative to the file when possible) to a cluster file that has
    none, keeping the rest of its text (comments included); returns the value written."""
    path = Path(cluster_path)
    base = path.resolve().parent
    try:
        value = str(keys_dir.resolve().relative_to(base))
    except ValueError:
        value = str(keys_dir.resolve())
    lines = path.read_text().splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")), len(lines))
    quoted = "'" + value + "'" if "'" not in value else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    lines.insert(at, f"keys = {quoted}    # <party>.crt pinned for every party; <party>.key private\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, path)
    return value


def make_missing_keys(config: ClusterConfig) -> list[str]:
    """For a run of every party on this host (``privacy-bridge launch``): make the key pair
    of each party whose certificate and key are both absent from the ``keys`` directory
    (a fresh checkout of the examples).  Nothing else is touched: a half-present pair or
    an explicit per-party path is left for ``load_credentials`` to report."""
    if config.insecure or config.keys is None:
        return []
    import fcntl

    Path(config.keys).mkdir(parents=True, exist_ok=True)
    with open(Path(config.keys) / ".keygen.lock", "a") as lock:  # launches at once make each key once
        fcntl.flock(lock, fcntl.LOCK_EX)
        fresh = [
            p.name for p in config.parties
            if p.certificate is None and p.key is None
            and not Path(config.keys, f"{p.name}.crt").exists() and not Path(config.keys, f"{p.name}.key").exists()
        ]
        if fresh:
            keygen(fresh, config.keys)
    return fresh
