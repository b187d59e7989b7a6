"""`topics create` for a real cluster (consumer/tools/topics.py,
consumer/commands/topics.py): the replication factor, min.insync.replicas and
max.message.bytes options, their defaults (a one-broker setup works untouched) and their
refusals, each naming its option; and what create_topics makes of the broker's answers
(a fake admin client)."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.admin import NewTopic

from consumer import cli, limits
from consumer.errors import BrokerError, ConfigError
from consumer.tools import topics


def test_defaults_work_on_one_broker_and_follow_the_replication() -> None:
    assert topics.DEFAULT_REPLICATION == 1
    assert topics.MAX_MESSAGE_BYTES == 1048588 == limits.MAX_REQUEST_BYTES + 12
    # MAX_RECORD_BYTES (3 MiB, Meta's 3 MB bodies) and 64 KiB of key and headers, + 12.
    assert topics.default_max_message_bytes() == 3 * 1024 * 1024 + 64 * 1024 + 12 == 3211276
    assert topics.topic_configs(1) == {
        "min.insync.replicas": "1",
        "max.message.bytes": "3211276",
    }
    # A smaller MAX_RECORD_BYTES never goes below Kafka's default.
    assert topics.topic_configs(1, max_record_bytes=256 * 1024)["max.message.bytes"] == "1048588"
    assert topics.default_max_message_bytes(5 << 20) == (5 << 20) + 65536 + 12
    assert topics.topic_configs(2)["min.insync.replicas"] == "1"
    assert topics.topic_configs(3)["min.insync.replicas"] == "2"
    assert topics.topic_configs(5, 3, 4 << 20) == {
        "min.insync.replicas": "3",
        "max.message.bytes": str(4 << 20),
    }


@pytest.mark.parametrize(
    ("replication", "isr", "max_bytes", "option", "words"),
    [
        (0, None, None, "--replication-factor", "1 or more"),
        (3, 0, None, "--min-insync-replicas", "1 or more"),
        (2, 3, None, "--min-insync-replicas", "more than --replication"),
        (1, 2, None, "--min-insync-replicas", "apply 1"),
        (1, None, topics.MAX_MESSAGE_BYTES, "--max-message-bytes", "less than 3211276"),
    ],
)
def test_a_bad_value_is_refused_naming_its_option(
    replication: int, isr: int | None, max_bytes: int | None, option: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        topics.topic_configs(replication, isr, max_bytes)
    assert caught.value.setting == option


def test_the_parser_reads_the_options() -> None:
    args = cli._parser().parse_args(["topics", "create"])
    # None: the default follows MAX_RECORD_BYTES, read when the command runs.
    assert (args.replication_factor, args.min_insync_replicas, args.max_message_bytes) == (
        1,
        None,
        None,
    )
    args = cli._parser().parse_args(
        [
            *("topics", "create", "--replication-factor", "3"),
            *("--min-insync-replicas", "2", "--max-message-bytes", "2000000"),
        ]
    )
    assert (args.replication_factor, args.min_insync_replicas, args.max_message_bytes) == (
        3,
        2,
        2000000,
    )


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--replication-factor", "0"], "--replication-factor"),
        (["--replication-factor", "2", "--min-insync-replicas", "3"], "--min-insync-replicas"),
        (["--max-message-bytes", "1000"], "--max-message-bytes"),
    ],
)
def test_the_command_refuses_before_asking_the_broker(
    argv: list[str],
    option: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 2 and one line naming the option; the broker is never asked (nothing listens
    at port 1, and a request would fail with exit 1 instead)."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert cli.main(["topics", "create", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"wamid-guard topics: {option}: "), err
    assert err.count("\n") == 1


class FakeAdmin:
    """Answers CreateTopics with scripted error codes and lists `brokers` brokers."""

    brokers = 1
    answers: dict[str, tuple[int, str | None]] = {}  # noqa: RUF012 - scripted per test
    created: list[NewTopic] = []  # noqa: RUF012

    def __init__(self, **config: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def describe_cluster(self) -> dict[str, Any]:
        return {"brokers": [{"node_id": i} for i in range(self.brokers)]}

    async def create_topics(self, new: list[NewTopic]) -> Any:
        FakeAdmin.created += new
        code, said = self.answers.get(new[0].name, (0, None))

        class Answer:
            @staticmethod
            def to_object() -> dict[str, Any]:
                return {"topic_errors": [{"error_code": code, "error_message": said}]}

        return Answer()


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> type[FakeAdmin]:
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", FakeAdmin)
    FakeAdmin.brokers, FakeAdmin.answers, FakeAdmin.created = 1, {}, []
    return FakeAdmin


async def test_the_topics_get_the_replication_and_configs(admin: type[FakeAdmin]) -> None:
    admin.brokers = 3
    admin.answers = {"b": (36, "Topic 'b' already exists.")}  # kept, no failure
    configs = topics.topic_configs(3)
    await topics.create_topics("k:9092", {"a": 4, "b": 4}, replication=3, configs=configs)
    assert [(t.name, t.num_partitions, t.replication_factor) for t in admin.created] == [
        ("a", 4, 3),
        ("b", 4, 3),
    ]
    assert admin.created[0].topic_configs == configs


async def test_the_signature_the_tests_use_still_creates_with_one_replica(
    admin: type[FakeAdmin],
) -> None:
    await topics.create_topics("k:9092", {"a": 2})
    (made,) = admin.created
    # Without configs a topic still takes a default member's records (Meta's 3 MB).
    assert (made.replication_factor, made.topic_configs) == (
        1,
        {"max.message.bytes": "3211276"},
    )


async def test_more_replicas_than_brokers_fails_before_creating(admin: type[FakeAdmin]) -> None:
    with pytest.raises(BrokerError, match=r"--replication-factor 3 needs 3 brokers.* has 1"):
        await topics.create_topics("k:9092", {"a": 1}, replication=3)
    assert admin.created == []


async def test_the_brokers_refusals_are_failures_naming_the_topic(admin: type[FakeAdmin]) -> None:
    """Kafka answers CreateTopics with an error code per topic and aiokafka raises none:
    every code but "created" and "already exists" fails."""
    admin.brokers = 3  # the metadata lists 3, the controller sees fewer registered
    admin.answers = {"a": (38, "only 2 broker(s) are registered.")}
    with pytest.raises(BrokerError, match=r"'a': the broker refuses --replication-factor 3: only"):
        await topics.create_topics("k:9092", {"a": 1}, replication=3)
    admin.answers = {"a": (40, "Invalid value 5 for configuration x")}
    with pytest.raises(BrokerError, match=r"'a' failed: InvalidConfigurationError: Invalid"):
        await topics.create_topics("k:9092", {"a": 1})
