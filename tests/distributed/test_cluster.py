"""The cluster file, its placement, and how a process finds its party in the environment."""

from __future__ import annotations

import pytest

from bridge.cluster import (
    ClusterError,
    cluster_from_dict,
    cluster_from_environment,
    load_cluster,
    split_address,
    to_toml,
)
from bridge.ir import Party, Placement, Role
from tests.distributed.models import PARTIES

TOML = """
timeout_s = 12.5

[[parties]]
name = "server0"
roles = ["compute", "model_owner"]
address = "10.0.0.1:7100"

[[parties]]
name = "server1"
roles = ["compute", "data_owner", "client"]
address = "[::1]:7101"
bind = "[::]:7101"

[[parties]]
name = "dealer"
roles = ["dealer"]
address = "dealer.example:7102"
"""


@pytest.fixture
def cluster_file(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text(TOML)
    return path


def test_file_parses_into_parties_in_rank_order(cluster_file):
    config = load_cluster(cluster_file)
    assert config.names == ("server0", "server1", "dealer")
    assert config.timeout_s == 12.5
    assert config.rank("dealer") == 2
    assert config.party("server1").host == "::1" and config.party("server1").port == 7101
    assert config.party("server1").listen_address == "[::]:7101"
    assert config.rendezvous_address == ("10.0.0.1", 7100)
    assert load_cluster(cluster_file) == cluster_from_dict(__import__("tomllib").loads(to_toml(config)))


def test_placement_maps_roles_and_checks_a_given_one(cluster_file):
    config = load_cluster(cluster_file)
    placement = config.placement(["x"], ["y"])
    assert placement.compute_parties == ("server0", "server1")
    assert placement.dealer == "dealer"
    assert placement.param_owner == "server0"
    assert placement.input_owners == {"x": "server1"}
    assert placement.output_receivers == {"y": ("server1",)}
    config.check_placement(placement)
    other = Placement.default(["x"], ["y"])
    with pytest.raises(ClusterError, match="'model_owner' of the placement has no entry in the cluster"):
        config.check_placement(other)
    wrong_roles = Placement(
        parties=tuple(Party(name=n, roles=frozenset({Role.DEALER}) if n == "server0" else r) for n, r in PARTIES.items()),
        input_owners={"x": "server1"}, param_owner="server0", output_receivers={"y": ("server1",)},
    )
    with pytest.raises(ClusterError, match=r"'server0' has roles \['dealer'\] in the placement"):
        config.check_placement(wrong_roles)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[parties]]\nname = "a"\nroles = ["compute"]\naddress = "nohost"\n', "must be host:port"),
        ('[[parties]]\nname = "a"\nroles = ["compute"]\naddress = "h:99999"\n', "port must be in 1..65535"),
        ('[[parties]]\nname = "a"\nroles = ["chef"]\naddress = "h:1"\n', "roles"),
        ('[[parties]]\nname = "a"\nroles = []\naddress = "h:1"\n[[parties]]\nname = "a"\nroles = []\naddress = "h:2"\n',
         "listed twice"),
        ('[[parties]]\nname = "a"\nroles = []\naddress = "h:1"\n[[parties]]\nname = "b"\nroles = []\naddress = "h:1"\n',
         "both have address h:1"),
        ('timeout_s = 0\n[[parties]]\nname = "a"\nroles = []\naddress = "h:1"\n', "timeout_s"),
        ('[[parties]]\nname = "a"\nroles = []\naddress = "h:1"\ncolour = "red"\n', "colour"),
        ("parties = [", "not valid TOML"),
    ],
)
def test_bad_files_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ClusterError, match=message):
        load_cluster(path)


def test_missing_file_and_unknown_party_are_named(tmp_path, cluster_file):
    with pytest.raises(ClusterError, match="does not exist"):
        load_cluster(tmp_path / "nope.toml")
    with pytest.raises(ClusterError, match=r"party 'carol' is not in the cluster; it has parties \['server0'"):
        load_cluster(cluster_file).party("carol")
    assert split_address("[fe80::1]:80") == ("fe80::1", 80)
    with pytest.raises(ValueError, match="brackets"):
        split_address("fe80::1:80")


def test_environment_picks_the_party_by_name_or_torchrun_rank(cluster_file):
    assert cluster_from_environment({}) is None
    env = {"PRIVACY_BRIDGE_CLUSTER": str(cluster_file)}
    config, party = cluster_from_environment({**env, "PRIVACY_BRIDGE_PARTY": "server1"})
    assert party == "server1" and config.rendezvous is None
    config, party = cluster_from_environment(
        {**env, "RANK": "2", "WORLD_SIZE": "3", "MASTER_ADDR": "10.0.0.9", "MASTER_PORT": "29500",
         "TORCHELASTIC_USE_AGENT_STORE": "True"}
    )
    assert party == "dealer"
    assert config.rendezvous_address == ("10.0.0.9", 29500) and config.external_rendezvous
    _, party = cluster_from_environment({**env, "RANK": "0", "PRIVACY_BRIDGE_PARTY": "server0"})
    assert party == "server0"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "neither PRIVACY_BRIDGE_PARTY nor RANK"),
        ({"RANK": "3"}, "RANK='3' does not pick a party"),
        ({"RANK": "1", "PRIVACY_BRIDGE_PARTY": "dealer"}, "RANK=1 is party 'server1'"),
        ({"RANK": "0", "WORLD_SIZE": "4"}, "WORLD_SIZE=4 but the cluster"),
        ({"PRIVACY_BRIDGE_PARTY": "carol"}, "'carol' is not in the cluster"),
    ],
)
def test_inconsistent_environments_are_refused(cluster_file, extra, message):
    with pytest.raises(ClusterError, match=message):
        cluster_from_environment({"PRIVACY_BRIDGE_CLUSTER": str(cluster_file), **extra})


def test_default_placement_needs_one_owner_of_each_kind(cluster_file):
    config = cluster_from_dict(
        {"parties": [{"name": n, "roles": ["compute"], "address": f"h:{i + 1}"} for i, n in enumerate("ab")]}
    )
    with pytest.raises(ClusterError, match="exactly one data_owner and one model_owner"):
        config.placement(["x"], ["y"])


# -- keys: keygen, pinning, insecure --------------------------------------------------------------

def test_keygen_makes_private_keys_0600_and_pins_the_certificates_in_the_file(cluster_file, capsys):
    import stat

    from bridge.security.keys import load_credentials
    from frontends.cli import main

    assert main(["keygen", "--cluster", str(cluster_file)]) == 0
    keys = cluster_file.parent / "keys"
    for name in ("server0", "server1", "dealer"):
        assert stat.S_IMODE((keys / f"{name}.key").stat().st_mode) == 0o600
        assert (keys / f"{name}.crt").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    text = cluster_file.read_text()
    assert text.lstrip().startswith("keys = 'keys'") and TOML.strip() in text  # the rest of the file is kept
    config = load_cluster(cluster_file)
    assert config.keys == str(keys)  # relative to the cluster file, stored absolute
    creds = load_credentials(config, "server1")
    assert sorted(creds.pinned_pem) == ["dealer", "server0", "server1"]
    assert creds.party_of_certificate(creds.certificate("dealer").public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER)) == "dealer"
    assert len({creds.fingerprint(n) for n in config.names}) == 3  # a fresh key per party
    assert "keys = 'keys'" in capsys.readouterr().out
    # a second run keeps the keys unless told otherwise
    before = (keys / "dealer.key").read_bytes()
    assert main(["keygen", "--cluster", str(cluster_file)]) == 2
    assert "already holds keys" in capsys.readouterr().err
    assert main(["keygen", "--cluster", str(cluster_file), "--force", "--party", "dealer"]) == 0
    assert (keys / "dealer.key").read_bytes() != before
    assert load_cluster(cluster_file).keys == str(keys)  # the keys line is written once


def test_a_cluster_without_keys_or_insecure_is_refused_with_the_fix(cluster_file, capsys):
    from bridge.security.keys import load_credentials

    config = load_cluster(cluster_file)
    with pytest.raises(ClusterError, match=r"pins no certificate for parties 'server0' \(no certificate\).*"
                                           r"privacy-bridge keygen --cluster .*insecure = true"):
        load_credentials(config, "server0")
    insecure = cluster_from_dict({**__import__("tomllib").loads(TOML), "insecure": True})
    assert load_credentials(insecure, "server0") is None
    err = capsys.readouterr().err
    assert "insecure = true" in err and "CLEARTEXT and UNAUTHENTICATED" in err
    assert "insecure = true" in to_toml(insecure)


def test_a_key_that_does_not_match_its_pinned_certificate_is_refused(cluster_file, tmp_path):
    from bridge.security.keys import keygen, load_credentials

    keygen(["server0", "server1", "dealer"], tmp_path / "a")
    keygen(["server1"], tmp_path / "b")
    raw = __import__("tomllib").loads(TOML)
    raw["keys"] = "a"
    raw["parties"][1]["key"] = "b/server1.key"  # relative to the cluster file's directory
    config = cluster_from_dict(raw, base=tmp_path)
    assert config.key_path("server1") == str(tmp_path / "b" / "server1.key")
    load_credentials(config, "server0")  # the others are fine
    with pytest.raises(ClusterError, match=r"party 'server1''s private key .*b/server1.key does not match the "
                                           r"certificate the cluster pins for 'server1'"):
        load_credentials(config, "server1")
    raw["parties"][1].pop("key")
    (tmp_path / "a" / "dealer.crt").unlink()
    with pytest.raises(ClusterError, match=r"'dealer' \(.*dealer.crt does not exist\)"):
        load_credentials(cluster_from_dict(raw, base=tmp_path), "server0")


def test_an_inline_certificate_round_trips_through_to_toml(cluster_file, tmp_path):
    import tomllib

    from bridge.security.keys import keygen, load_credentials

    keygen(["server0", "server1", "dealer"], tmp_path / "k")
    raw = tomllib.loads(TOML)
    raw["keys"] = str(tmp_path / "k")
    raw["parties"][2]["certificate"] = (tmp_path / "k" / "dealer.crt").read_text()  # the PEM itself
    config = cluster_from_dict(raw, base=tmp_path)
    again = cluster_from_dict(tomllib.loads(to_toml(config)), base=tmp_path)
    assert again == config
    assert load_credentials(again, "dealer").pinned_pem["dealer"] == (tmp_path / "k" / "dealer.crt").read_bytes()


def test_launch_makes_only_the_keys_that_are_wholly_missing(tmp_path):
    import tomllib

    from bridge.security.keys import keygen, load_credentials, make_missing_keys

    raw = tomllib.loads(TOML)
    raw["keys"] = "keys"
    config = cluster_from_dict(raw, base=tmp_path)
    assert make_missing_keys(config) == ["server0", "server1", "dealer"]  # a fresh checkout
    assert all(load_credentials(config, n) for n in config.names)
    kept = (tmp_path / "keys" / "server0.key").read_bytes()
    assert make_missing_keys(config) == []  # nothing replaced
    assert (tmp_path / "keys" / "server0.key").read_bytes() == kept
    (tmp_path / "keys" / "dealer.key").unlink()  # a half-present pair (another host's key) is not remade
    assert make_missing_keys(config) == []
    with pytest.raises(ClusterError, match="party 'dealer' has no private key"):
        load_credentials(config, "dealer")
    assert make_missing_keys(cluster_from_dict({**raw, "insecure": True}, base=tmp_path)) == []
    keygen(["x"], tmp_path / "other")
    assert not (tmp_path / "keys" / "x.key").exists()
