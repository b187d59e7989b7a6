"""The producer's settings that the throughput and latency figures rest on."""

from __future__ import annotations

import pytest

from consumer.errors import ConfigError
from consumer.publish import MAX_REQUEST_BYTES, decide_idempotence, producer_config


def test_the_producer_does_not_linger() -> None:
    """A linger made every batch's publish wait it out (5 ms cost 5.6 ms of each batch
    at 9,000 records/s, docs/benchmarks.md round six) and bought no batching: a batch's
    sends are all appended before the producer's sender runs."""
    config = producer_config(
        "127.0.0.1:9092", client_id="t", request_timeout_s=30, max_request_bytes=MAX_REQUEST_BYTES
    )
    assert config["linger_ms"] == 0
    assert config["acks"] == "all"


def test_idempotence_is_what_start_decided_and_acks_stay_all() -> None:
    """Off unless told (the tools), on when start decided so; every replica acks in
    both modes, so aiokafka accepts the idempotent config."""

    def config_of(**idempotence: bool) -> dict[str, object]:
        return producer_config(
            "127.0.0.1:9092",
            client_id="t",
            request_timeout_s=30,
            max_request_bytes=MAX_REQUEST_BYTES,
            **idempotence,
        )

    assert config_of()["enable_idempotence"] is False
    for idempotence in (False, True):
        config = config_of(idempotence=idempotence)
        assert (config["enable_idempotence"], config["acks"]) == (idempotence, "all")


async def test_off_asks_no_broker() -> None:
    """KAFKA_IDEMPOTENCE=off decides without a connection (nothing listens there)."""
    decided = await decide_idempotence("off", "127.0.0.1:1", timeout_s=1)
    assert (decided.enabled, decided.reason) == (False, "KAFKA_IDEMPOTENCE=off")


async def test_on_refused_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """`on` and a broker that refuses a producer id: a ConfigError naming the setting;
    `auto` takes the refusal as "off", and says why."""

    async def refused(bootstrap: str, *, timeout_s: float) -> tuple[bool, str]:
        return False, "the broker answered InitProducerId with UnknownError"

    monkeypatch.setattr("consumer.publish.probe_producer_id", refused)
    with pytest.raises(ConfigError) as info:
        await decide_idempotence("on", "b:9092", timeout_s=1)
    assert info.value.setting == "KAFKA_IDEMPOTENCE"
    assert "UnknownError" in str(info.value)
    auto = await decide_idempotence("auto", "b:9092", timeout_s=1)
    assert not auto.enabled
    assert (
        auto.reason
        == "KAFKA_IDEMPOTENCE=auto: the broker answered InitProducerId with UnknownError"
    )
