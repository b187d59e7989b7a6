"""The Redis lease under real contention (docs/design.md, rules 2-3, 6), against the real Redis.

Concurrent acquirers are released together (an asyncio.Barrier for tasks, a Redis
BLPOP gate for OS processes) so that they really race for the same keys.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from consumer.dedup import DONE_PREFIX, Leases
from consumer.ports import LeaseState
from consumer.records import MessageKey
from tests.integration import lease_worker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LEASE_TTL_S = 30.0
DONE_TTL_S = 3600.0
KEY = MessageKey(
    "106540352242922", "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="
)


def _leases(client: aioredis.Redis, prefix: str, *, lease_ttl_s: float = LEASE_TTL_S) -> Leases:
    return Leases(client, prefix=prefix, lease_ttl_s=lease_ttl_s, done_ttl_s=DONE_TTL_S)


@pytest.fixture
def leases(redis_client: aioredis.Redis, key_prefix: str) -> Leases:
    return _leases(redis_client, key_prefix)


async def _wait_until_gone(client: aioredis.Redis, key: str, deadline_s: float) -> None:
    """Condition wait: return once `key` no longer exists, fail after the deadline."""
    deadline = time.monotonic() + deadline_s
    while await client.exists(key):
        if time.monotonic() > deadline:
            pytest.fail(f"{key} still exists after {deadline_s}s (pttl={await client.pttl(key)})")
        await asyncio.sleep(0.05)


async def test_fifty_tasks_one_key_exactly_one_acquires(
    redis_url: str, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """50 tasks on 50 connections, released by a barrier, race for one key: one ACQUIRED."""
    n = 50
    barrier = asyncio.Barrier(n)
    results: dict[str, LeaseState] = {}

    async def contender(i: int) -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await client.ping()  # connected before the start, so the race is the acquire
            leases = _leases(client, key_prefix)
            token = f"task-{i}"
            await barrier.wait()
            results[token] = (await leases.acquire([KEY], token))[KEY]
        finally:
            await client.aclose()

    async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
        for i in range(n):
            tg.create_task(contender(i))

    counts = collections.Counter(results.values())
    assert counts == {LeaseState.ACQUIRED: 1, LeaseState.HELD: n - 1}, counts
    (winner,) = [t for t, s in results.items() if s is LeaseState.ACQUIRED]
    key = _leases(redis_client, key_prefix).key(KEY)
    assert await redis_client.get(key) == winner.encode()
    assert 0 < await redis_client.pttl(key) <= LEASE_TTL_S * 1000


async def _race_in_processes(
    redis_url: str, client: aioredis.Redis, prefix: str, procs: int, keys: int
) -> list[dict[str, Any]]:
    """Start `procs` workers, open the gate once all are ready, return their reports."""
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration.lease_worker",
            redis_url,
            prefix,
            f"proc-{i}",
            str(keys),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for i in range(procs)
    ]
    try:
        async with asyncio.timeout(60):
            ready = set()
            for _ in range(procs):
                popped = await client.blpop([lease_worker.ready_list(prefix)])
                assert popped is not None, "blpop without a timeout waits"
                _, token = popped
                assert isinstance(token, bytes)
                ready.add(token.decode())
            assert ready == {f"proc-{i}" for i in range(procs)}
            await client.rpush(lease_worker.gate_list(prefix), *(["go"] * procs))
            outputs = [await child.communicate() for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    reports = []
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err.decode()
        reports.append(json.loads(out))
    return reports


@pytest.mark.parametrize("keys", [1, 200], ids=["one-key", "200-keys"])
async def test_processes_race_every_key_has_one_winner(
    redis_url: str, redis_client: aioredis.Redis, key_prefix: str, keys: int
) -> None:
    """8 OS processes released by a Redis gate acquire the same keys: one winner per key."""
    procs = 8
    reports = await _race_in_processes(redis_url, redis_client, key_prefix, procs, keys)
    leases = _leases(redis_client, key_prefix)
    race_keys = lease_worker.race_keys(keys)
    for index, key in enumerate(race_keys):
        states = {str(r["token"]): r["states"][index] for r in reports}
        winners = [t for t, s in states.items() if s == LeaseState.ACQUIRED.value]
        assert len(winners) == 1, (key, states)
        assert collections.Counter(states.values())[LeaseState.HELD.value] == procs - 1, states
        assert await redis_client.get(leases.key(key)) == winners[0].encode(), key


async def test_release_by_non_owner_does_nothing_and_owner_deletes(
    leases: Leases, redis_client: aioredis.Redis
) -> None:
    """release() is compare-and-delete: a foreign token leaves the lease, the owner's frees it."""
    assert await leases.acquire([KEY], "owner") == {KEY: LeaseState.ACQUIRED}
    assert await leases.release([KEY], "intruder") == 0
    assert await redis_client.get(leases.key(KEY)) == b"owner"
    assert await leases.acquire([KEY], "intruder") == {KEY: LeaseState.HELD}
    assert await leases.release([KEY], "owner") == 1
    assert await redis_client.exists(leases.key(KEY)) == 0
    assert await leases.acquire([KEY], "next") == {KEY: LeaseState.ACQUIRED}


async def test_finish_by_non_owner_leaves_lease_owner_sets_done_marker(
    leases: Leases, redis_client: aioredis.Redis
) -> None:
    """finish() by another token never overwrites a lease; the owner's makes a long done marker."""
    key = leases.key(KEY)
    assert await leases.acquire([KEY], "owner") == {KEY: LeaseState.ACQUIRED}
    assert await leases.finish([KEY], "intruder") == 0
    assert await redis_client.get(key) == b"owner"
    assert 0 < await redis_client.pttl(key) <= LEASE_TTL_S * 1000

    assert await leases.finish([KEY], "owner") == 1
    assert await redis_client.get(key) == f"{DONE_PREFIX}owner".encode()
    assert await redis_client.pttl(key) > LEASE_TTL_S * 1000
    assert await leases.acquire([KEY], "redelivery") == {KEY: LeaseState.DONE}
    assert await leases.release([KEY], "owner") == 0, "a done marker is not a lease to release"
    assert await leases.finish([KEY], "redelivery") == 0, "nobody else overwrites a done marker"
    assert await redis_client.get(key) == f"{DONE_PREFIX}owner".encode()


async def test_lease_of_dead_worker_expires_and_is_taken_over(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """A lease blocks redelivery only until its TTL runs out; then another token acquires."""
    leases = _leases(redis_client, key_prefix, lease_ttl_s=1)
    key = leases.key(KEY)
    assert await leases.acquire([KEY], "dead-worker") == {KEY: LeaseState.ACQUIRED}
    assert 0 < await redis_client.pttl(key) <= 1000
    assert await leases.acquire([KEY], "redelivery") == {KEY: LeaseState.HELD}
    await _wait_until_gone(redis_client, key, deadline_s=10)
    assert await leases.acquire([KEY], "redelivery") == {KEY: LeaseState.ACQUIRED}
    assert await redis_client.get(key) == b"redelivery"


async def test_same_wamid_two_numbers_two_keys_both_acquired(
    leases: Leases, redis_client: aioredis.Redis
) -> None:
    """Keys are tenant-scoped: one wamid under two phone_number_ids is two leases."""
    a = MessageKey("111", "wamid.SAME")
    b = MessageKey("222", "wamid.SAME")
    assert leases.key(a) != leases.key(b)
    assert await leases.acquire([a, b], "tok") == {a: LeaseState.ACQUIRED, b: LeaseState.ACQUIRED}
    assert await redis_client.get(leases.key(a)) == b"tok"
    assert await redis_client.get(leases.key(b)) == b"tok"


async def test_a_key_we_did_not_write_is_foreign_and_left_alone(
    leases: Leases, redis_client: aioredis.Redis
) -> None:
    """A key under the prefix that no lease of ours could be (no TTL, a TTL longer than
    LEASE_TTL_S, another type) is FOREIGN, never HELD: held, it would defer its record,
    and so its partition's commits, for as long as the key lives. No script touches it,
    and a key of another type fails no script (the whole batch would fail with it)."""
    no_ttl, long_ttl, a_hash, a_lease = (
        MessageKey("106540352242922", f"wamid.{n}") for n in "ABCD"
    )
    await redis_client.set(leases.key(no_ttl), b"someone-else")
    await redis_client.set(leases.key(long_ttl), b"w9:1", px=int(LEASE_TTL_S * 1000) + 60_000)
    await redis_client.hset(leases.key(a_hash), "field", "value")
    await redis_client.set(leases.key(a_lease), b"w9:1", px=int(LEASE_TTL_S * 1000))
    keys = [no_ttl, long_ttl, a_hash, a_lease]

    assert await leases.acquire(keys, "tok") == {
        no_ttl: LeaseState.FOREIGN,
        long_ttl: LeaseState.FOREIGN,
        a_hash: LeaseState.FOREIGN,
        a_lease: LeaseState.HELD,  # a lease's TTL: someone's lease, over within LEASE_TTL_S
    }
    assert await leases.release(keys, "tok") == 0
    assert await leases.finish(keys, "tok") == 0
    assert await redis_client.get(leases.key(no_ttl)) == b"someone-else"
    assert await redis_client.pttl(leases.key(no_ttl)) == -1
    assert await redis_client.hget(leases.key(a_hash), "field") == b"value"
    assert await redis_client.get(leases.key(a_lease)) == b"w9:1"


async def test_a_done_marker_without_ttl_is_still_a_done_marker(
    leases: Leases, redis_client: aioredis.Redis
) -> None:
    """Whatever its TTL, a value in the marker's format reads DONE: the pipeline has the
    database confirm it before anything is skipped."""
    await redis_client.set(leases.key(KEY), f"{DONE_PREFIX}restored".encode())
    assert await leases.acquire([KEY], "tok") == {KEY: LeaseState.DONE}
