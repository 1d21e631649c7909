"""The cluster's settings and the credential nodes present to each other."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from golive.cluster.identity import WorkerIdentity, node_name, tag_of
from golive.config import Config, ConfigError
from golive.http.auth import CLUSTER, from_cluster, room_principal

CLUSTERED = {
    "REDIS_URL": "redis://:hunter2@10.0.0.9:6379/0",
    "NODE_URL": "http://10.0.0.5:8080",
    "AUTH_TOKEN": "client-token",
    "CLUSTER_SECRET": "between-nodes",
}


def test_workers_need_redis() -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_env({"WORKERS": "2"})
    assert raised.value.variable == "WORKERS"
    assert "REDIS_URL" in raised.value.problem


def test_a_node_needs_an_address_others_reach() -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_env({"REDIS_URL": "redis://10.0.0.9"})  # HTTP_ADDR ":8080": a wildcard
    assert raised.value.variable == "NODE_URL"
    with pytest.raises(ConfigError) as raised:  # port 0: known only once listening
        Config.from_env({"REDIS_URL": "redis://10.0.0.9", "HTTP_ADDR": "10.0.0.5:0"})
    assert raised.value.variable == "NODE_URL"
    derived = Config.from_env({"REDIS_URL": "redis://10.0.0.9", "HTTP_ADDR": "10.0.0.5:9000"})
    assert derived.effective_node_url == "http://10.0.0.5:9000"
    given = Config.from_env({"REDIS_URL": "redis://10.0.0.9", "NODE_URL": "https://a.example/"})
    assert given.effective_node_url == "https://a.example"


def test_nodes_need_a_secret_when_clients_need_credentials() -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_env({**CLUSTERED, "CLUSTER_SECRET": ""})
    assert raised.value.variable == "CLUSTER_SECRET"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REDIS_URL", "http://10.0.0.9"),
        ("REDIS_URL", "redis://"),
        ("NODE_URL", "10.0.0.5:8080"),
        ("NODE_URL", "http://10.0.0.5:8080/golive"),
        ("NODE_URL", "http://user:pw@10.0.0.5"),
        ("WORKERS", "0"),
        ("CLUSTER_PORT", "70000"),
    ],
)
def test_malformed_cluster_settings(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_env({**CLUSTERED, variable: value})
    assert raised.value.variable == variable


def test_the_redis_password_is_a_secret() -> None:
    config = Config.from_env(CLUSTERED)
    assert "hunter2" not in str(config.describe())
    assert config.describe()["REDIS_URL"] == "redis://:<set>@10.0.0.9:6379/0"
    assert "hunter2" in config.secrets()
    assert "between-nodes" in config.secrets()
    assert "between-nodes" not in repr(config)


def test_session_ids_name_their_worker() -> None:
    identity = WorkerIdentity.create("http://10.0.0.5:8080", 1, "http://10.0.0.5:41234")
    session = identity.new_session_id()
    assert len(session) == 32
    assert tag_of(session) == identity.tag
    assert identity.new_session_id() != session
    assert identity.name == "10.0.0.5:8080/1"
    assert node_name("https://live.example") == "live.example:443"
    assert tag_of("not-a-session") is None


def test_only_the_cluster_secret_makes_a_request_the_clusters() -> None:
    config = Config.from_env(CLUSTERED)
    via = {"Golive-Via": "10.0.0.6:8080/0"}
    genuine = make_mocked_request("POST", "/", headers={**via, "Golive-Cluster": "between-nodes"})
    forged = make_mocked_request("POST", "/", headers={**via, "Golive-Cluster": "guess"})
    bare = make_mocked_request("POST", "/", headers=via)
    assert from_cluster(config, genuine)
    assert room_principal(config, genuine, "stage") == CLUSTER
    for request in (forged, bare):
        assert not from_cluster(config, request)
        assert room_principal(config, request, "stage") is None
    alone = Config.from_env({"AUTH_TOKEN": "client-token"})  # not clustered: no such thing
    assert not from_cluster(alone, genuine)
