"""`topics grow` (consumer/tools/topics.py, consumer/commands/topics.py) over a fake admin
client: only growth (a smaller or equal count is refused naming --partitions, before the
broker is asked to change anything), what it says it did, and a broker's refusal in one
line with its reason; and KAFKA_METADATA_MAX_AGE_S, the bound on finding new partitions,
reaching the consumer and the producers."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.admin import NewPartitions
from aiokafka.errors import IncompatibleBrokerVersion, InvalidPartitionsError, KafkaError

from consumer import cli
from consumer.errors import BrokerError, ConfigError
from consumer.publish import MAX_REQUEST_BYTES, producer_config
from consumer.settings import Settings
from consumer.source import consumer_config
from consumer.tools import topics


class FakeAdmin:
    """A broker with `counts` partitions per topic; CreatePartitions grows them, or
    raises `refusal`."""

    counts: dict[str, int] = {}  # noqa: RUF012 - scripted per test
    asked: list[dict[str, NewPartitions]] = []  # noqa: RUF012
    refusal: KafkaError | None = None

    def __init__(self, **config: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        return list(self.counts)

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [
            {
                "topic": n,
                "error_code": 0,
                "partitions": [{"partition": p, "replicas": [1]} for p in range(self.counts[n])],
            }
            for n in names
            if n in self.counts
        ]

    async def create_partitions(self, wanted: dict[str, NewPartitions]) -> None:
        FakeAdmin.asked.append(wanted)
        if self.refusal is not None:
            raise self.refusal
        for name, new in wanted.items():
            FakeAdmin.counts[name] = new.total_count


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> type[FakeAdmin]:
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", FakeAdmin)
    FakeAdmin.counts, FakeAdmin.asked, FakeAdmin.refusal = {"in": 4, "out": 4}, [], None
    return FakeAdmin


async def test_growing_asks_for_the_new_total_and_says_before_and_after(
    admin: type[FakeAdmin],
) -> None:
    assert await topics.grow_partitions("k:9092", "in", 8) == (4, 8)
    ((name, new),) = admin.asked[0].items()
    assert (name, new.total_count) == ("in", 8)


@pytest.mark.parametrize(("count", "words"), [(2, "fewer than the 4"), (4, "already has")])
async def test_shrinking_or_the_same_count_is_refused_naming_the_option(
    admin: type[FakeAdmin], count: int, words: str
) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        await topics.grow_partitions("k:9092", "in", count)
    assert caught.value.setting == "--partitions"
    assert admin.asked == [], "nothing asked of the broker"


async def test_a_missing_topic_is_named(admin: type[FakeAdmin]) -> None:
    with pytest.raises(BrokerError, match=r"'nope': no such topic.*topics create"):
        await topics.grow_partitions("k:9092", "nope", 8)


async def test_a_broker_without_create_partitions_is_explained(admin: type[FakeAdmin]) -> None:
    """Tansu 0.6 lists no CreatePartitions: aiokafka refuses to send it."""
    admin.refusal = IncompatibleBrokerVersion("CreatePartitionsRequest cannot be used")
    with pytest.raises(BrokerError) as caught:
        await topics.grow_partitions("k:9092", "in", 8)
    said = str(caught.value)
    assert said.startswith("'in': the broker refused to grow it from 4 to 8 partitions: ")
    assert "does not support adding partitions" in said
    assert "Tansu" in said
    assert caught.value.__cause__ is admin.refusal


async def test_another_refusal_says_the_brokers_words(admin: type[FakeAdmin]) -> None:
    admin.refusal = InvalidPartitionsError("Could not create partitions for in: too many")
    with pytest.raises(BrokerError, match=r"InvalidPartitionsError: .*too many"):
        await topics.grow_partitions("k:9092", "in", 8)


def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
        "INBOUND_TOPIC": "in",
        "OUTBOUND_TOPIC": "out",
        "DLQ_TOPIC": "dlq",
    }.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("topic", ["inbound", "outbound"])
def test_the_command_says_what_it_did(
    admin: type[FakeAdmin],
    topic: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _env(monkeypatch)
    assert cli.main(["topics", "grow", "--partitions", "8", "--topic", topic]) == 0
    name = "in" if topic == "inbound" else "out"
    assert capsys.readouterr().out == f"{name}: 4 -> 8 partitions\n"
    assert admin.counts[name] == 8


def test_the_inbound_topic_is_the_default(
    admin: type[FakeAdmin], monkeypatch: pytest.MonkeyPatch
) -> None:
    _env(monkeypatch)
    assert cli.main(["topics", "grow", "--partitions", "6"]) == 0
    assert admin.counts == {"in": 6, "out": 4}


@pytest.mark.parametrize("count", ["3", "4", "0"])
def test_the_command_refuses_a_count_that_does_not_grow(
    admin: type[FakeAdmin],
    count: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _env(monkeypatch)
    assert cli.main(["topics", "grow", "--partitions", count]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wamid-guard topics: --partitions: "), err
    assert err.count("\n") == 1
    assert admin.asked == []


def test_a_refusal_is_one_line_and_exit_1(
    admin: type[FakeAdmin], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _env(monkeypatch)
    admin.refusal = IncompatibleBrokerVersion("CreatePartitionsRequest cannot be used")
    assert cli.main(["topics", "grow", "--partitions", "8"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("wamid-guard topics: 'in': the broker refused to grow it"), err
    assert err.count("\n") == 1


def test_the_partitions_option_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli._parser().parse_args(["topics", "grow"])
    assert exited.value.code == 2
    assert "--partitions" in capsys.readouterr().err


def test_the_metadata_age_reaches_every_client() -> None:
    """New partitions are found within KAFKA_METADATA_MAX_AGE_S (30 s by default, not
    aiokafka's 5 minutes): by the group leader's consumer, which then rebalances the
    group onto them, and by the producers, which then write to them."""
    s = Settings()
    assert s.kafka_metadata_max_age_s == 30.0
    assert consumer_config(s, client_id="c")["metadata_max_age_ms"] == 30_000
    quick = Settings.from_env({"KAFKA_METADATA_MAX_AGE_S": "3"})
    assert consumer_config(quick, client_id="c")["metadata_max_age_ms"] == 3000
    config = producer_config(
        "k:9092",
        client_id="p",
        request_timeout_s=30,
        max_request_bytes=MAX_REQUEST_BYTES,
        metadata_max_age_s=quick.kafka_metadata_max_age_s,
    )
    assert config["metadata_max_age_ms"] == 3000
    default = producer_config(
        "k:9092", client_id="p", request_timeout_s=30, max_request_bytes=MAX_REQUEST_BYTES
    )
    assert default["metadata_max_age_ms"] == 30_000


@pytest.mark.parametrize("raw", ["0", "-1", "nan", "inf", "0.0001", "0.999"])
def test_the_metadata_age_must_be_a_second_or_more(raw: str) -> None:
    """0.0001 s would become metadata_max_age_ms=0: clients asking without pause."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"KAFKA_METADATA_MAX_AGE_S": raw})
    assert caught.value.setting == "KAFKA_METADATA_MAX_AGE_S"


def test_the_smallest_metadata_age_is_one_second() -> None:
    settings = Settings.from_env({"KAFKA_METADATA_MAX_AGE_S": "1"})
    assert consumer_config(settings, client_id="c")["metadata_max_age_ms"] == 1000
