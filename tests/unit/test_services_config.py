"""The services module's configuration and its refusals (consumer/tools/services.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.errors import ConfigError
from consumer.tools import services
from consumer.tools.services import Addresses


def test_defaults_and_the_environment() -> None:
    assert Addresses.from_env({}) == Addresses()
    assert Addresses().kafka_version == "3.9.0"  # the version compose.yaml deploys
    given = Addresses.from_env(
        {
            "TEST_POSTGRES_URL": "postgresql+asyncpg://u@127.0.0.1:6543/db",
            "TEST_KAFKA_BOOTSTRAP": "127.0.0.1:19094",
            "TEST_KAFKA_VERSION": "4.1.1",
            "TEST_KAFKA_NODES": "3",
        }
    )
    assert given.postgres.endswith(":6543/db")
    assert (given.kafka, given.kafka_version, given.kafka_nodes) == ("127.0.0.1:19094", "4.1.1", 3)


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"TEST_KAFKA_NODES": "2"}, "TEST_KAFKA_NODES"),
        ({"TEST_KAFKA_BOOTSTRAP": "127.0.0.1"}, "TEST_KAFKA_BOOTSTRAP"),
        ({"TEST_TANSU_BOOTSTRAP": "127.0.0.1:x"}, "TEST_TANSU_BOOTSTRAP"),
    ],
)
def test_a_bad_address_names_its_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        Addresses.from_env(env)


def test_kafka_without_java_or_maven_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The tests that need Apache Kafka are skipped (or fail under CI) with this line."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("WAMID_GUARD_CACHE", str(tmp_path / "cache"))
    with pytest.raises(services.ServiceUnavailable, match=r"needs `java` on PATH"):
        services.kafka_runtime()
    assert not (tmp_path / "cache").exists(), "nothing fetched, nothing written"


def test_server_properties_of_one_node_and_of_three() -> None:
    node = services.KafkaNode(2, 19092, 19093, Path("/d"), Path("/c"), Path("/l"))
    one = services._server_properties(node, "2@127.0.0.1:19093", 1)
    assert "listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093\n" in one
    assert "auto.create.topics.enable=false\n" in one
    assert "offsets.topic.replication.factor=1\n" in one
    three = services._server_properties(node, "...", 3)
    assert "min.insync.replicas=2\n" in three
    assert "default.replication.factor=3\n" in three
    for text in (one, three):  # nothing binds beyond loopback
        listeners = next(line for line in text.splitlines() if line.startswith("listeners="))
        assert listeners.count("127.0.0.1") == 2
    assert "advertised.listeners=PLAINTEXT://127.0.0.1:19092\n" in one


def test_one_node_can_advertise_a_proxy_port() -> None:
    """A fault scenario's own node binds its port and sends clients to the proxy's;
    three nodes cannot share one proxy port (they replicate through it)."""
    node = services.KafkaNode(1, 19092, 19093, Path("/d"), Path("/c"), Path("/l"))
    text = services._server_properties(node, "1@127.0.0.1:19093", 1, advertised_port=29092)
    assert "listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093\n" in text
    assert "advertised.listeners=PLAINTEXT://127.0.0.1:29092\n" in text
    with pytest.raises(ConfigError, match="advertised_port: one node only"):
        services.KafkaCluster(3, advertised_port=29092)
