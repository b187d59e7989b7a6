"""KAFKA_GROUP_INSTANCE_ID: static group membership (KIP-345), opt-in.

aiokafka sends the id with JoinGroup (v5) and SyncGroup (v3) and sends no LeaveGroup
on close when it is set (aiokafka/consumer/group_coordinator.py); here: the setting is
validated as the broker would, and reaches the consumer's configuration.
"""

from __future__ import annotations

import pytest

from consumer.errors import ConfigError
from consumer.settings import Settings
from consumer.source import consumer_config


def test_default_is_dynamic_membership() -> None:
    s = Settings.from_env({})
    assert s.kafka_group_instance_id == ""
    assert consumer_config(s, client_id="t")["group_instance_id"] is None


def test_the_id_reaches_the_consumer() -> None:
    s = Settings.from_env({"KAFKA_GROUP_INSTANCE_ID": "wamid-guard-0"})
    assert consumer_config(s, client_id="t")["group_instance_id"] == "wamid-guard-0"
    assert s.public()["kafka_group_instance_id"] == "wamid-guard-0"


@pytest.mark.parametrize("ok", ["a", "wamid-guard-11", "host_1.zone-b", "x" * 249])
def test_ids_the_broker_accepts(ok: str) -> None:
    assert Settings(kafka_group_instance_id=ok).kafka_group_instance_id == ok


@pytest.mark.parametrize("bad", [".", "..", "has space", "a/b", "pod:0", "é", "x" * 250])
def test_ids_the_broker_refuses_name_the_setting(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"KAFKA_GROUP_INSTANCE_ID": bad})
    assert info.value.setting == "KAFKA_GROUP_INSTANCE_ID"
    assert "KAFKA_GROUP_INSTANCE_ID" in str(info.value)
