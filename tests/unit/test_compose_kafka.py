"""compose.yaml's Kafka runs with the settings the tests' Apache Kafka runs with
(consumer/tools/services.py writes its server.properties), listeners aside: a setting
changed on one side only fails here until the other side follows or the difference is
listed below with its reason.

No YAML parser is installed, so the broker's KAFKA_* keys are read from compose.yaml's
lines (the image turns KAFKA_FOO_BAR into foo.bar)."""

from __future__ import annotations

import re
from pathlib import Path

from consumer import cli
from consumer.tools import services

COMPOSE = Path(__file__).resolve().parents[2] / "compose.yaml"

# Where each runs, not how: addresses, ports, node ids, folders.
PLACE = {
    "node.id",
    "controller.quorum.voters",
    "listeners",
    "advertised.listeners",
    "listener.security.protocol.map",  # compose adds its EXTERNAL listener
    "log.dirs",
}
# Left out on one side, and there at Kafka's default, which the other side writes out.
KAFKA_DEFAULTS = {
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
}
# Only the tests set these, and why.
TESTS_ONLY = {
    # A fresh broker per test session creates __consumer_offsets at the first group
    # join: 10 partitions took 0.5 s, Kafka's 50 up to 3.6 s. compose keeps the default
    # (it cannot be changed once the topic exists).
    "offsets.topic.num.partitions",
    # Unknown to 3.9.0 (ignored); set for TEST_KAFKA_VERSION=4.x, whose share-group
    # state topic would ask for 3 replicas.
    "share.coordinator.state.topic.replication.factor",
    "share.coordinator.state.topic.min.isr",
}


def compose_kafka() -> dict[str, str]:
    """The kafka service's KAFKA_* environment, as broker properties."""
    text = COMPOSE.read_text(encoding="utf-8")
    block = re.search(r"^  kafka:\n(.*?)^  \w[\w-]*:\n", text, re.S | re.M)
    assert block, "compose.yaml has a kafka service"
    out = {}
    for key, value in re.findall(r"^      KAFKA_([A-Z_]+): (.+)$", block.group(1), re.M):
        out[key.lower().replace("_", ".")] = value.strip().strip("\"'")
    return out


def started_kafka() -> dict[str, str]:
    node = services.KafkaNode(1, 19092, 19093, Path("/d"), Path("/c"), Path("/l"))
    text = services._server_properties(node, "1@127.0.0.1:19093", 1)
    return dict(line.split("=", 1) for line in text.splitlines())


def test_the_parser_reads_compose() -> None:
    compose = compose_kafka()
    assert compose["process.roles"] == "broker,controller"
    assert compose["auto.create.topics.enable"] == "false"
    assert "image" not in compose
    assert len(compose) >= 10


def test_compose_runs_kafka_as_the_tests_do() -> None:
    compose, tests = compose_kafka(), started_kafka()
    assert compose.keys() >= PLACE
    assert tests.keys() >= PLACE
    assert not TESTS_ONLY & compose.keys(), "set in compose too: take it off TESTS_ONLY"
    assert tests.keys() >= TESTS_ONLY, "no longer set by the tests: take it off TESTS_ONLY"
    compared = (compose.keys() | tests.keys()) - PLACE - TESTS_ONLY
    differ = {
        k: (compose.get(k, KAFKA_DEFAULTS.get(k)), tests.get(k, KAFKA_DEFAULTS.get(k)))
        for k in sorted(compared)
        if compose.get(k, KAFKA_DEFAULTS.get(k)) != tests.get(k, KAFKA_DEFAULTS.get(k))
    }
    assert differ == {}, "compose.yaml vs consumer/tools/services.py (compose, tests)"
    assert compose["group.initial.rebalance.delay.ms"] == "0"
    assert compose["offsets.topic.replication.factor"] == "1"


def test_the_topics_service_creates_them_with_the_service_s_own_command() -> None:
    """compose's one-shot `topics` runs `python -m consumer topics create` from the app
    image (the names from the shared environment, max.message.bytes set on each topic),
    not kafka-topics.sh with its own copy of the names; its arguments parse."""
    text = COMPOSE.read_text(encoding="utf-8")
    block = text[text.index("\n  topics:\n") : text.index("\n  migrate:\n")]
    assert "<<: *app" in block
    assert "kafka-topics.sh --bootstrap-server" not in text
    (command,) = re.findall(r"command: \[(.*)\]", block)
    argv = [a.strip().strip('"') for a in command.split(",")]
    argv = [re.sub(r"\$\{INBOUND_PARTITIONS:-(\d+)\}", r"\1", a) for a in argv]
    assert argv == ["topics", "create", "--wait", "60", "--partitions", "6"]
    parsed = cli._parser().parse_args(argv)
    assert (parsed.partitions, parsed.wait) == (6, 60.0)
