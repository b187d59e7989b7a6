"""`topics create` on Apache Kafka: the topics get the replication factor and the configs
asked for (read back with DescribeConfigs), a replication factor above the brokers fails
in one line saying how many there are, and on three nodes replication 3 with
min.insync.replicas 2 is what the topics get."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from consumer import cli
from consumer.tools import services, topics
from tests.support.config import unavailable

pytestmark = pytest.mark.integration
CONFIGS = ("min.insync.replicas", "max.message.bytes")


def _names(monkeypatch: pytest.MonkeyPatch, bootstrap: str) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    names = {
        "INBOUND_TOPIC": f"in-{tag}",
        "OUTBOUND_TOPIC": f"out-{tag}",
        "DLQ_TOPIC": f"dlq-{tag}",
    }
    for key, value in {**names, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}.items():
        monkeypatch.setenv(key, value)
    return list(names.values())


async def _described(bootstrap: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each topic's replication factor and the configs `topics create` sets.

    CreateTopics answers once the controller has the topics; the broker that answers
    DescribeConfigs may learn of them a moment later and answers without entries until
    then, and the broker that answers Metadata may list a topic with no partitions yet
    (both seen on three nodes in CI), so this asks again until every topic has its
    configs and its partitions, for up to 30 seconds."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        out = await _describe_once(bootstrap, names)
        complete = all(
            set(CONFIGS) <= set(out.get(n, ())) and out[n]["replicas"] - {0} for n in names
        )
        if complete or asyncio.get_running_loop().time() > deadline:
            return out
        await asyncio.sleep(0.5)


async def _describe_once(bootstrap: str, names: list[str]) -> dict[str, dict[str, Any]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        layout = await admin.describe_topics(names)
        answers = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n, dict.fromkeys(CONFIGS)) for n in names]
        )
    finally:
        await admin.close()
    out = {d["topic"]: {"replicas": {len(p["replicas"]) for p in d["partitions"]}} for d in layout}
    for answer in answers:
        for resource in answer.to_object()["resources"]:
            for entry in resource["config_entries"]:
                out[resource["resource_name"]][entry["config_names"]] = entry["config_value"]
    return out


def test_the_topics_get_their_configs_and_too_many_replicas_fail(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    names = _names(monkeypatch, kafka_bootstrap)
    assert cli.main(["topics", "create", "--replication-factor", "3"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "wamid-guard topics: --replication-factor 3 needs 3 brokers, and the cluster at "
        f"KAFKA_BOOTSTRAP_SERVERS={kafka_bootstrap} has 1: ask for at most 1, or add brokers\n"
    )
    assert not set(names) & set(asyncio.run(topics.list_topics(kafka_bootstrap))), "none made"

    assert cli.main(["topics", "create", "--max-message-bytes", "4000000"]) == 0
    out = capsys.readouterr().out
    assert f"{names[0]}: 4 partition(s), replication 1, created" in out
    expected = {"replicas": {1}, "min.insync.replicas": "1", "max.message.bytes": "4000000"}
    assert asyncio.run(_described(kafka_bootstrap, names)) == dict.fromkeys(names, expected)


def test_three_nodes_take_replication_3_and_min_insync_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        cluster = services.KafkaCluster(3)
    except services.ServiceUnavailable as exc:
        unavailable("Apache Kafka", str(exc))
    try:
        cluster.start()
        names = _names(monkeypatch, cluster.bootstrap)
        assert cli.main(["topics", "create", "--replication-factor", "3"]) == 0
        assert f"{names[2]}: 1 partition(s), replication 3, created" in capsys.readouterr().out
        expected = {"replicas": {3}, "min.insync.replicas": "2", "max.message.bytes": "3211276"}
        assert asyncio.run(_described(cluster.bootstrap, names)) == dict.fromkeys(names, expected)
    finally:
        cluster.close()
