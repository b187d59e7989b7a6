"""A Redis that outlived its database, through real members (docs/design.md, rule 1).

The database is restored from a backup taken before some messages were stored, Redis
keeps its done markers, and the inbound topic is replayed from the start (as the
restore runbook in docs/operations.md says). A marker believed without the database
would skip every message the restore lost; confirmed by the database, each is stored
again and announced, and every message the database still holds costs one lookup and
no event. Keys under the prefix that another program wrote (no TTL, another type) and
done markers of another deployment sharing the prefix never stall a partition.
"""

from __future__ import annotations

import collections
import signal

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from consumer.dedup import DONE_PREFIX, lease_key
from consumer.engine import create_engine
from consumer.records import MessageKey
from consumer.schema import messages, outbox
from consumer.settings import Settings
from tests.support import kafka
from tests.support.bodies import text_webhook
from tests.support.procs import ConsumerGroup

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.brokers]

PNID = "106540352242922"
FIRST = 40  # stored by the first member, then half of them lost to the "restore"
FOREIGN = 6  # new messages whose Redis key another program wrote first


def _key(settings: Settings, wamid: str) -> str:
    return lease_key(settings.redis_key_prefix, MessageKey(PNID, wamid))


async def _restore_backup_without(settings: Settings, wamids: set[str]) -> None:
    """The database as a backup taken before these messages were stored had it."""
    engine = create_engine(settings.database_url, pool_size=1, timeout_s=10)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.delete(messages).where(messages.c.source_id.in_(sorted(wamids))))
            await conn.execute(sa.delete(outbox))
    finally:
        await engine.dispose()


async def test_a_restored_database_gets_back_what_redis_remembers(
    group: ConsumerGroup, redis_url: str
) -> None:
    settings = group.settings
    first = [f"wamid.first.{i}" for i in range(FIRST)]
    offsets = await kafka.send_each(
        settings, [(i % 4, text_webhook(PNID, w)) for i, w in enumerate(first)]
    )
    ends = {p: 1 + max(o for i, o in enumerate(offsets) if i % 4 == p) for p in range(4)}
    (member,) = group.start(1)
    await kafka.wait_committed(settings, ends, timeout_s=60, explain=group.logs)
    member.signal(signal.SIGTERM)
    assert member.wait(30) == 0, group.logs()

    lost = set(first[::2])
    await _restore_backup_without(settings, lost)
    # Another program's keys under the prefix, and a staging deployment's done markers.
    foreign = [f"wamid.foreign.{i}" for i in range(FOREIGN)]
    poisoned = [f"wamid.staging.{i}" for i in range(FOREIGN)]
    client = aioredis.Redis.from_url(redis_url)
    try:
        for i, w in enumerate(foreign):
            if i % 2:
                await client.set(_key(settings, w), b"not-ours")  # no TTL
            else:
                await client.hset(_key(settings, w), "not", "ours")  # another type
        for w in poisoned:
            await client.set(_key(settings, w), f"{DONE_PREFIX}staging:1".encode(), ex=3600)
        assert all([await client.exists(_key(settings, w)) for w in first])  # markers kept
    finally:
        await client.aclose()

    # The runbook: replay the inbound topic from before the backup; here from its start,
    # as a consumer group that never committed reads it.
    replay = settings.replace(consumer_group=settings.consumer_group + "-replay")
    later = await kafka.send_each(
        settings, [(i % 4, text_webhook(PNID, w)) for i, w in enumerate(foreign + poisoned)]
    )
    for i, o in enumerate(later):
        ends[i % 4] = max(ends[i % 4], o + 1)
    (again,) = group.start(1, consumer_group=replay.consumer_group)
    await kafka.wait_committed(replay, ends, timeout_s=60, explain=group.logs)

    rows = await kafka.rows(settings)
    expected = {(PNID, w) for w in first + foreign + poisoned}
    assert collections.Counter(rows) == collections.Counter(expected), "one row per message"
    assert await kafka.unpublished(settings) == 0
    announced = collections.Counter(e["message"]["source_id"] for e in await kafka.events(settings))
    # A lost message is announced again (same event_id); one the database still held,
    # and whose marker it confirmed, is not.
    assert {w for w in first if announced[w] != 1} == lost
    assert all(announced[w] == 2 for w in lost)
    assert all(announced[w] == 1 for w in foreign + poisoned)
    totals = {
        name: sum(int(e.get(name, 0)) for e in again.named("batch.done"))
        for name in ("markers_unconfirmed", "foreign_keys", "dup_done_marker", "stored")
    }
    assert totals == {
        "markers_unconfirmed": len(lost) + len(poisoned),
        "foreign_keys": len(foreign),
        "dup_done_marker": FIRST - len(lost),
        "stored": len(lost) + len(foreign) + len(poisoned),
    }, group.logs()
    assert again.named("lease.redis_overruled"), "the operator is told"
    assert again.proc.poll() is None, group.logs()
