"""/metrics, /healthz and /readyz of a real consumer process, against what really happened.

Real traffic whose every outcome is known in advance (new messages, duplicates caught by
each layer, poison records, status updates) goes through one `python -m consumer run`
on a real broker, Redis and PostgreSQL; the scraped numbers must match it exactly. Then
Redis is cut: readiness must say so and the error counters must move; healed, all of it
comes back by itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumer.settings import Settings
from consumer.tools import embedded
from consumer.tools.members import settings_env
from tests.conftest import fixture_body
from tests.support import kafka
from tests.support.bodies import text_webhook
from tests.support.procs import ConsumerGroup, wait_until
from tests.support.proxy import ThreadedProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.brokers]

PNID = "106540352242922"


class Scrape:
    """One scrape of /metrics: samples by (name, labels)."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback URL
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[ThreadedProxy]:
    r = urlsplit(redis_url)
    proxy = ThreadedProxy(r.hostname or embedded.LOOPBACK, r.port or 6379)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


async def test_scraped_metrics_match_the_traffic(
    topic_settings: Settings, redis_proxy: ThreadedProxy, redis_url: str, tmp_path: Path
) -> None:
    port = embedded.free_port()
    settings = topic_settings.replace(
        redis_url=f"redis://{redis_proxy.address}{urlsplit(redis_url).path or '/0'}",
        metrics_port=port,
        relay_interval_s=0.5,
        redis_timeout_s=1.0,
        log_level="INFO",
    )
    base = f"http://{embedded.LOOPBACK}:{port}"
    group = ConsumerGroup(settings, tmp_path)
    try:
        group.start(1)
        group.wait_all_assigned()
        await _check_counts(settings, group, base)
        _check_health_cli(settings, live=True, ready=True)
        await _check_redis_outage(settings, group, base, redis_proxy)
    finally:
        group.kill_all()


async def _check_counts(settings: Settings, group: ConsumerGroup, base: str) -> None:
    status_body = fixture_body("status_sent.json")  # one status: "sent"
    first = [(i % 4, text_webhook(PNID, f"wamid.M{i}")) for i in range(30)]
    first += [
        (
            1,
            text_webhook(PNID, "wamid.X", "wamid.X"),
        ),  # the same key twice in one webhook: in_batch
        (2, b"not json"),
        (3, b"\xff\xfe"),
        (0, status_body),
    ]
    ends = await kafka.send(settings, first)
    await kafka.wait_committed(settings, ends, explain=group.logs)
    # Redeliveries after the fact: 10 found by their done marker; one whose done marker
    # is gone (as after a Redis restart) found by the database's unique constraint.
    await _forget_done_marker(settings, "wamid.M0")
    again = [((i + 1) % 4, text_webhook(PNID, f"wamid.M{i}")) for i in range(10)]
    again.append((1, status_body))  # Meta's copy of the status: a duplicate
    ends = await kafka.send(settings, again)
    await kafka.wait_committed(settings, ends, explain=group.logs)

    def drained() -> bool:
        s = _scrape(base)
        lag = s.series("wamid_guard_consumer_lag")
        return len(lag) == 4 and not any(lag.values()) and s.get("wamid_guard_outbox_backlog") == 0

    wait_until(drained, 20, lambda: "lag or outbox backlog stayed above zero:\n" + _page(base))
    s = _scrape(base)
    records = len(first) + len(again)
    assert s.get("wamid_guard_records_consumed_total") == records
    assert s.get("wamid_guard_messages_stored_total") == 31
    assert s.get("wamid_guard_duplicates_total", layer="in_batch") == 1
    # M0 was deleted from Redis before its redelivery: the database caught it instead.
    assert s.get("wamid_guard_duplicates_total", layer="done_marker") == 9
    assert s.get("wamid_guard_duplicates_total", layer="database") == 1
    assert s.get("wamid_guard_duplicates_total", layer="lease_held") == 0
    assert s.get("wamid_guard_dead_lettered_total", reason="not_json") == 1
    assert s.get("wamid_guard_dead_lettered_total", reason="not_utf8") == 1
    assert s.get("wamid_guard_events_published_total", path="pipeline") == 32  # + 1 status
    assert s.get("wamid_guard_events_published_total", path="relay") == 0
    assert s.get("wamid_guard_statuses_total", status="sent", outcome="announced") == 1
    assert s.get("wamid_guard_statuses_total", status="sent", outcome="duplicate") == 1
    assert s.get("wamid_guard_records_retried_total", reason="failure") == 0
    assert s.get("wamid_guard_event_latency_seconds_count", since="inbound_record") == 31
    assert s.get("wamid_guard_event_latency_seconds_count", since="meta_timestamp") == 31
    # Meta's timestamp is from 2025, so those latencies land in the +Inf bucket only.
    assert (
        s.get("wamid_guard_event_latency_seconds_bucket", since="meta_timestamp", le="86400.0") == 0
    )
    batches = s.get("wamid_guard_batches_total", outcome="ok")
    assert batches >= 2
    assert s.get("wamid_guard_batch_duration_seconds_count") == batches
    assert s.get("wamid_guard_assigned_partitions") == 4
    assert s.get("wamid_guard_outbox_oldest_age_seconds") == 0
    assert s.get("wamid_guard_offset_commits_total", outcome="ok") >= 2
    assert not s.series("wamid_guard_dependency_errors_total")
    # And the events really are on the topic: the scrape is not counting wishes.
    assert len(await kafka.events(settings)) == 32  # 31 message_created, 1 status


async def _forget_done_marker(settings: Settings, wamid: str) -> None:
    from consumer import dedup
    from consumer.records import MessageKey

    client = dedup.connect(settings.redis_url, timeout_s=5)
    try:
        key = dedup.lease_key(settings.redis_key_prefix, MessageKey(PNID, wamid))
        assert await client.delete(key) == 1
    finally:
        await client.aclose()


async def _check_redis_outage(
    settings: Settings, group: ConsumerGroup, base: str, proxy: ThreadedProxy
) -> None:
    code, body = _get(f"{base}/readyz")
    assert code == 200, body
    assert json.loads(body)["checks"]["redis"] == {"ok": True}

    proxy.refuse(True)
    proxy.cut()
    wait_until(lambda: _get(f"{base}/readyz")[0] == 503, 15, lambda: _get(f"{base}/readyz")[1])
    state = json.loads(_get(f"{base}/readyz")[1])
    assert state["checks"]["redis"]["ok"] is False
    assert state["checks"]["database"] == {"ok": True}
    assert state["checks"]["kafka"]["ok"] is True
    assert _get(f"{base}/healthz")[0] == 200, "an outage is not death: the loop goes on"
    _check_health_cli(settings, live=True, ready=False)

    ends = await kafka.send(settings, [(0, text_webhook(PNID, "wamid.DURING"))])

    def failing() -> bool:
        s = _scrape(base)
        errors = s.series("wamid_guard_dependency_errors_total")
        return (
            any(dict(labels)["dependency"] == "redis" for labels in errors)
            and s.get("wamid_guard_batches_total", outcome="failed") >= 1
            and s.get("wamid_guard_records_retried_total", reason="failure") >= 1
        )

    wait_until(failing, 20, lambda: "no Redis failure counted:\n" + _page(base))
    s = _scrape(base)
    assert s.get("wamid_guard_paused_partitions") == 4, "paused while degraded"
    lag = s.get("wamid_guard_consumer_lag", topic=settings.inbound_topic, partition="0")
    assert lag == 1, "the record stuck behind Redis is counted as lag"
    # A paused partition is not fetched; its lag still grows with what arrives meanwhile.
    # (One produce each: Tansu's end offset is the last batch's base + 1, see docs/design.md.)
    late = [
        (await kafka.send_each(settings, [(1, text_webhook(PNID, f"wamid.LATE{i}"))]))[0]
        for i in range(3)
    ]

    def lag_grew() -> bool:
        p1 = _scrape(base).get(
            "wamid_guard_consumer_lag", topic=settings.inbound_topic, partition="1"
        )
        return p1 == 3

    wait_until(lag_grew, 20, lambda: "partition 1's lag did not grow:\n" + _page(base))
    ends = {**ends, 1: max(late) + 1}

    proxy.refuse(False)
    await kafka.wait_committed(settings, ends, explain=group.logs)
    wait_until(lambda: _get(f"{base}/readyz")[0] == 200, 15, lambda: _get(f"{base}/readyz")[1])
    s = _scrape(base)
    assert s.get("wamid_guard_messages_stored_total") == 35
    # 35 message_created and the status's message_status_changed
    assert s.get("wamid_guard_events_published_total", path="pipeline") == 36
    assert s.get("process_resident_memory_bytes") > 0


def _check_health_cli(settings: Settings, *, live: bool, ready: bool) -> None:
    """`python -m consumer health` exits 0 when healthy, 1 when not (container checks)."""
    env = settings_env(settings)
    for args, healthy in ((["--live"], live), ([], ready)):
        done = subprocess.run(
            [sys.executable, "-m", "consumer", "health", *args],
            env={"PATH": "/usr/bin:/bin", **env},
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == (0 if healthy else 1), (args, done.stdout, done.stderr)


def _page(base: str) -> str:
    return _get(f"{base}/metrics")[1]


def _scrape(base: str) -> Scrape:
    code, text = _get(f"{base}/metrics")
    assert code == 200
    return Scrape(text)
