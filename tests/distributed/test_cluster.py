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
