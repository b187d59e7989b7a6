"""Settings of a test run: its own topics, group, key prefix and database."""

from __future__ import annotations

import os
import uuid
from typing import NoReturn

import pytest

from consumer.settings import Settings


def unavailable(what: str, why: str) -> NoReturn:
    """A service a test needs cannot be had on this machine: the test is skipped saying
    why, and under CI (CI=true) fails instead: never a silent skip there."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and {what} cannot be had here: {why}", pytrace=False)
    pytest.skip(f"{what} cannot be had on this machine: {why}")


def run_settings(
    bootstrap: str, redis_url: str, key_prefix: str, database_url: str, **overrides: object
) -> Settings:
    """Settings for one test run: its own topics, group, key prefix and database, and
    timings short enough for tests; `overrides` on top."""
    run = uuid.uuid4().hex[:10]
    base = Settings(
        kafka_bootstrap_servers=bootstrap,
        redis_url=redis_url,
        database_url=database_url,
        inbound_topic=f"in-{run}",
        outbound_topic=f"out-{run}",
        dlq_topic=f"dlq-{run}",
        consumer_group=f"g-{run}",
        redis_key_prefix=key_prefix,
        kafka_session_timeout_s=6.0,
        kafka_heartbeat_interval_s=1.0,
        poll_timeout_s=0.2,
        retry_backoff_s=0.1,
        retry_backoff_max_s=1.0,
        shutdown_grace_s=10.0,
        log_format="json",
        metrics_port=0,
        log_level="DEBUG",
    )
    return base.replace(**overrides) if overrides else base
