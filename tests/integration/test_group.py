"""End to end with real consumer processes of one group, real Redis, PostgreSQL, broker."""

from __future__ import annotations

import collections
import signal
from typing import Any

import pytest

from consumer.settings import Settings
from tests.conftest import fixture_body
from tests.support import kafka
from tests.support.bodies import text_webhook
from tests.support.procs import ConsumerGroup, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.brokers]


def _assert_once_each(
    rows: list[tuple[str, str]], events: list[dict[str, Any]], expected: set[tuple[str, str]]
) -> None:
    assert collections.Counter(rows) == collections.Counter(expected), "one row per message"
    announced = collections.Counter(
        (e["phone_number_id"], e["message"]["source_id"]) for e in events
    )
    assert announced == collections.Counter(expected), "one event per message"


async def test_same_webhook_on_two_partitions_two_processes(group: ConsumerGroup) -> None:
    """Meta's redelivery landing on two partitions, read by two members at once,
    gives one row and one event."""
    settings = group.settings
    procs = group.start(2)
    group.wait_all_assigned(procs)
    body = fixture_body("text.json")
    ends = await kafka.send(settings, [(0, body), (1, body), (2, body), (3, body)])
    await kafka.wait_committed(settings, ends, explain=group.logs)
    rows = await kafka.rows(settings)
    events = await kafka.events(settings)
    _assert_once_each(
        rows,
        events,
        {("106540352242922", "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=")},
    )
    # Both members really took part, and the duplicates were caught by a dedup layer.
    assert all(p.named("batch.done") for p in procs), group.logs()
    caught = sum(group.totals(n) for n in ("dup_done_marker", "dup_database", "dup_in_batch"))
    assert caught + group.totals("held") >= 3


async def test_same_wamid_two_numbers_is_two_messages(group: ConsumerGroup) -> None:
    """The key is scoped by phone_number_id: one wamid under two numbers is two messages."""
    settings = group.settings
    group.start(1)
    group.wait_all_assigned()
    ends = await kafka.send(
        settings, [(0, text_webhook("111", "wamid.SAME")), (1, text_webhook("222", "wamid.SAME"))]
    )
    await kafka.wait_committed(settings, ends, explain=group.logs)
    _assert_once_each(
        await kafka.rows(settings),
        await kafka.events(settings),
        {("111", "wamid.SAME"), ("222", "wamid.SAME")},
    )


async def test_batch_then_resend_of_one(group: ConsumerGroup) -> None:
    """A batched webhook with several messages, then one of them re-sent alone:
    each stored and announced once."""
    settings = group.settings
    group.start(1)
    group.wait_all_assigned()
    ends = await kafka.send(
        settings,
        [
            (0, text_webhook("111", "wamid.A", "wamid.B", "wamid.C")),
            (2, text_webhook("111", "wamid.B")),
        ],
    )
    await kafka.wait_committed(settings, ends, explain=group.logs)
    _assert_once_each(
        await kafka.rows(settings),
        await kafka.events(settings),
        {("111", "wamid.A"), ("111", "wamid.B"), ("111", "wamid.C")},
    )


async def test_poison_goes_to_dlq_and_neighbours_are_processed(group: ConsumerGroup) -> None:
    """Bad records go to the dead-letter topic with reason and coordinates; the valid
    records before and after them in the same partition are stored."""
    settings = group.settings
    group.start(1)
    group.wait_all_assigned()
    ends = await kafka.send(
        settings,
        [
            (0, text_webhook("111", "wamid.BEFORE")),
            (0, b"not json at all"),
            (0, b"\xff\xfe\xfa"),
            (0, text_webhook("111", "wamid.AFTER")),
        ],
    )
    await kafka.wait_committed(settings, ends, explain=group.logs)
    _assert_once_each(
        await kafka.rows(settings),
        await kafka.events(settings),
        {("111", "wamid.BEFORE"), ("111", "wamid.AFTER")},
    )
    dead = await kafka.read_all(settings, settings.dlq_topic)
    got = sorted(
        (
            dict(r.headers)["dlq.reason"],
            dict(r.headers)["dlq.source.offset"],
            dict(r.headers)["dlq.source.partition"],
            dict(r.headers)["dlq.source.topic"],
        )
        for r in dead
    )
    topic = settings.inbound_topic.encode()
    assert got == [(b"not_json", b"1", b"0", topic), (b"not_utf8", b"2", b"0", topic)]
    assert group.procs[0].proc.poll() is None, "a bad record must not crash the process"


async def test_fresh_member_starts_uncommitted_partitions_at_offset_zero(
    group: ConsumerGroup,
) -> None:
    """A member joining a group that committed nothing for a partition positions it at
    offset 0 itself (not where the broker says the log starts, which the embedded broker
    can get wrong), so the records already there are all stored; a partition the group
    committed starts at its committed offset."""
    settings = group.settings
    records = [(p, text_webhook("111", f"wamid.Z{p}.{i}")) for p in range(4) for i in range(3)]
    ends = await kafka.send(settings, records)  # before any member exists
    await kafka.commit(settings, {0: 2})  # partition 0: offsets 0 and 1 count as done
    (member,) = group.start(1)
    await kafka.wait_committed(settings, ends, explain=group.logs)
    topic = settings.inbound_topic
    starts = [p for e in member.named("partitions.start_at_zero") for p in e["partitions"]]
    assert starts == [f"{topic}:1", f"{topic}:2", f"{topic}:3"], group.logs()
    expected = {("111", f"wamid.Z{p}.{i}") for p in range(4) for i in range(3)}
    expected -= {("111", "wamid.Z0.0"), ("111", "wamid.Z0.1")}
    assert collections.Counter(await kafka.rows(settings)) == collections.Counter(expected)


async def test_sigterm_exits_zero_with_offsets_committed(group: ConsumerGroup) -> None:
    """SIGTERM: the member finishes, commits and exits 0; nothing is left half done
    (no unpublished outbox row)."""
    settings = group.settings
    (proc,) = group.start(1)
    group.wait_all_assigned()
    ends = await kafka.send(
        settings, [(p % 4, text_webhook("111", f"wamid.T{p}")) for p in range(40)]
    )
    await kafka.wait_committed(settings, ends, explain=group.logs)
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0, proc.log_tail()
    assert proc.named("service.stopped"), proc.log_tail()
    assert await kafka.committed(settings, list(ends)) == ends
    assert await kafka.unpublished(settings) == 0
    assert len(await kafka.rows(settings)) == 40


def test_settings_fixture_is_isolated(settings: Settings) -> None:
    """Each test gets its own topics and group, so tests cannot see each other's data."""
    assert settings.inbound_topic.startswith("in-")
    assert settings.consumer_group.startswith("g-")


async def _assert_promise_after_crash(settings: Settings, expected: set[tuple[str, str]]) -> None:
    """P1-P3 after a crash: one row per message, at least one event per row, every copy
    of an event with one event_id, no event without a row, no outbox row left unsent."""
    rows = await kafka.rows(settings)
    assert collections.Counter(rows) == collections.Counter(expected), "exactly one row each"
    ids: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for e in await kafka.events(settings):
        ids[(e["phone_number_id"], e["message"]["source_id"])].add(e["event_id"])
    assert set(ids) == expected, "every row announced, no phantom event"
    assert all(len(v) == 1 for v in ids.values()), "re-publishes carry the same event_id"
    assert await kafka.unpublished(settings) == 0


@pytest.mark.parametrize("how", ["sigkill", "crash_point_after_commit"])
async def test_sigkill_mid_stream(group: ConsumerGroup, how: str) -> None:
    """A member killed mid-stream (SIGKILL from outside, or at the step between the
    commit and the publish): after the group rebalances, every message is stored once
    and announced, and the lag returns to zero."""
    settings = group.settings
    # A dead member's outbox claims hold LEASE_TTL_S + KAFKA_REQUEST_TIMEOUT_S (a claim
    # must outlast a publish in progress): short ones here, or the survivor waits 33 s.
    quick: dict[str, object] = {"lease_ttl_s": 3.0, "kafka_request_timeout_s": 5.0}
    overrides: dict[str, object] = {"batch_max_records": 5, **quick}
    if how == "crash_point_after_commit":
        overrides["crash_point"] = "after_commit:4"
    victim = group.start(1, **overrides)[0]
    survivor = group.start(1, **quick)[0]
    group.wait_all_assigned()
    expected = {("111", f"wamid.K{i}") for i in range(240)}
    records = [
        (i % 4, text_webhook("111", f"wamid.K{i}", f"wamid.K{(i + 1) % 240}"))
        for i in range(0, 240, 2)
    ]
    records += [
        (i % 4 + 1 if i % 4 < 3 else 0, text_webhook("111", f"wamid.K{i}"))
        for i in range(0, 240, 3)
    ]  # redeliveries on other partitions
    ends = await kafka.send(settings, records)
    if how == "sigkill":
        wait_until(lambda: len(victim.named("batch.done")) >= 3, 45, group.logs)
        victim.signal(signal.SIGKILL)
    assert victim.wait(60) == -signal.SIGKILL, victim.log_tail()
    await kafka.wait_committed(settings, ends, timeout_s=90, explain=group.logs)
    assert survivor.proc.poll() is None
    await _assert_promise_after_crash(settings, expected)


async def test_scale_out_mid_stream_keeps_exactly_once(group: ConsumerGroup) -> None:
    """A member joining mid-stream makes the group rebalance: the old owner commits its
    revoked partitions, nothing stalls, and with no crash every message has exactly one
    row and exactly one event."""
    settings = group.settings
    (first,) = group.start(1, batch_max_records=5)
    group.wait_all_assigned()
    expected = {("111", f"wamid.S{i}") for i in range(300)}
    records = [(i % 4, text_webhook("111", f"wamid.S{i}")) for i in range(300)]
    records += [((i + 1) % 4, text_webhook("111", f"wamid.S{i}")) for i in range(0, 300, 4)]
    ends = await kafka.send(settings, records)
    wait_until(lambda: len(first.named("batch.done")) >= 2, 45, group.logs)
    (second,) = group.start(1, batch_max_records=5)
    await kafka.wait_committed(settings, ends, timeout_s=90, explain=group.logs)
    assert first.named("partitions.revoked"), "the join really caused a revocation"
    assert [first.proc.poll(), second.proc.poll()] == [None, None], group.logs()
    _assert_once_each(await kafka.rows(settings), await kafka.events(settings), expected)


async def test_one_member_with_a_key_in_several_batches_at_once(group: ConsumerGroup) -> None:
    """Batches of one member overlap (a backlog: one batch per partition, up to
    MAX_INFLIGHT_BATCHES=4; BATCH_MAX_RECORDS=80 makes 40 records a partition a batch of its
    own): each webhook sent to all four partitions puts its key in several batches in
    flight at once.
    Every key is stored and announced once; the member's own other batches found the
    lease held (so the keys really were in two batches at the same time)."""
    settings = group.settings
    bodies = [text_webhook("555", f"wamid.OVERLAP.{i:03d}") for i in range(40)]
    # A backlog first, so that the member's first fetch finds all four partitions full.
    ends = await kafka.send(settings, [(p, b) for b in bodies for p in range(4)])
    (member,) = group.start(1, max_inflight_batches=4, batch_max_records=80)
    await kafka.wait_committed(settings, ends, explain=group.logs)
    _assert_once_each(
        await kafka.rows(settings),
        await kafka.events(settings),
        {("555", f"wamid.OVERLAP.{i:03d}") for i in range(40)},
    )
    assert group.totals("held") > 0, group.logs()
    assert group.totals("stored") == 40
    assert member.proc.poll() is None, group.logs()
