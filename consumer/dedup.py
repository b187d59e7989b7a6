"""The Redis lease that keeps concurrent duplicates from doing the work twice.

Each message has one key, ``{prefix}#{len(phone_number_id)}:{phone_number_id}:{wamid}``,
in one of two states:

    <token>        a processing lease, short TTL (LEASE_TTL_S), owned by one worker batch
    done:<token>   a done marker, long TTL (DONE_TTL_S), set after commit and publish

Taking a lease is one atomic ``SET key token NX PX ttl`` (inside a script that also
reports *why* it failed: held by someone else, or already done). Release and the
switch to done are compare-and-set scripts, so a worker never touches a key that
another worker owns now. Redis is the fast path only: the database's unique
constraint is the authority (docs/design.md, rule 1), and a done marker is a hint that
the pipeline has the database confirm before it skips a message (a Redis that outlived
its database, or another deployment's keys under the same prefix, cost a lookup, never
a message). A key under the prefix that is neither (no TTL, a longer TTL than a lease
has, another type) is reported as FOREIGN and never waited on.

The key cannot collide (rule 11): the length of the phone_number_id says where it ends,
so ``("1:2", "3")`` and ``("1", "2:3")`` are two keys. The ``#`` after the prefix (which
may hold neither ``#`` nor ``:``) keeps these keys apart from the ``{prefix}:{pnid}:{wamid}``
keys of versions before 0.2, whose done markers are so never misread; they run out after
DONE_TTL_S, and meanwhile the database fence catches a redelivery of their messages.

On Redis Cluster (REDIS_MODE=cluster) a script may only touch keys of one hash slot, and
the keys carry no hash tag (docs/design.md, "Keys"): each batch's keys are grouped by
slot and each group is one script call (EVALSHA), the calls in one cluster pipeline (a
round trip per node, the nodes concurrently), the answers put back in the batch's order.
A failover loses the leases its shard had not yet copied to the promoted replica; the
database fence keeps the promise, and the errors meanwhile are LeaseStoreErrors, retried
like any Redis outage.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from consumer.errors import LeaseStoreError
from consumer.ports import LeaseKey, LeaseState
from consumer.records import MessageKey, RecordKey, StatusKey

DONE_PREFIX = "done:"
# Between REDIS_KEY_PREFIX and the rest of a key; the prefix may not contain it.
KEY_SEPARATOR = "#"

# Each script handles a whole batch of keys in one call (one round trip, one command
# for redis-py to pack) and answers one number per key, in KEYS order. A script runs
# atomically, so every per-key step below is as atomic as a single command.

# ARGV[1] token, ARGV[2] lease ms. Per key: 1 acquired (SET NX PX), 0 held, 2 done,
# 3 foreign: a key this project did not write, so nothing says when it ends (no TTL, a
# TTL longer than any lease of ours has, or not a string). Redis calls on a key go
# through pcall: a key of another type must not fail the whole batch, and so its
# partition, for as long as it lives.
_ACQUIRE = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 1
  else
    local v = redis.pcall('GET', key)
    if type(v) == 'table' then
      out[i] = 3
    elseif v and string.sub(v, 1, 5) == 'done:' then
      out[i] = 2
    else
      local ttl = redis.call('PTTL', key)
      if ttl == -1 or ttl > tonumber(ARGV[2]) then out[i] = 3 else out[i] = 0 end
    end
  end
end
return out
"""
# Compare-and-delete: only the owner's token releases. Per key: 1 released, 0 not ours.
_RELEASE = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.pcall('GET', key) == ARGV[1] then out[i] = redis.call('DEL', key) else out[i] = 0 end
end
return out
"""
# Lease -> done marker, unless another worker owns the key now. Per key: 1 our lease
# became the marker; 2 our lease had run out (the marker is set all the same); 0 another
# worker holds the key now (left alone).
_FINISH = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.pcall('GET', key)
  if v == ARGV[1] or not v then
    redis.call('SET', key, 'done:' .. ARGV[1], 'PX', ARGV[2])
    if v then out[i] = 1 else out[i] = 2 end
  else
    out[i] = 0
  end
end
return out
"""
# Keys per script call: bounds how long one call holds Redis.
_CHUNK = 1000

RedisClient = aioredis.Redis | RedisCluster
"""The client of either REDIS_MODE: one Redis, or a Redis Cluster."""

# What a Redis call may raise when Redis (or the way to it) fails. redis-py's cluster
# client raises RedisClusterException (not a RedisError) when it cannot find a node for
# a slot: a failover under way, a cluster that lost a shard.
_REDIS_ERRORS = (RedisError, RedisClusterException, OSError)


_STATES = {1: LeaseState.ACQUIRED, 0: LeaseState.HELD, 2: LeaseState.DONE, 3: LeaseState.FOREIGN}


class Leases:
    """Batch operations on message leases.

    On one Redis (``standalone``): one script call per chunk of keys, the chunks in one
    pipelined round trip. On Redis Cluster a script may only touch keys of one hash slot,
    so the keys are grouped by slot (:func:`group_by_slot`, with the keys as they are: no
    hash tag) and each group is one script call; the calls go in one cluster pipeline
    (one round trip per node, the nodes concurrently) and the answers are put back in
    the keys' order.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str,
        lease_ttl_s: float,
        done_ttl_s: float,
        cluster: bool | None = None,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._lease_ms = int(lease_ttl_s * 1000)
        self._done_ms = int(done_ttl_s * 1000)
        self._cluster = isinstance(client, RedisCluster) if cluster is None else cluster
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._finish = client.register_script(_FINISH)

    @property
    def cluster(self) -> bool:
        """True when the keys are grouped by hash slot (Redis Cluster)."""
        return self._cluster

    def key(self, key: LeaseKey) -> str:
        if isinstance(key, RecordKey):
            return dead_letter_key(self._prefix, key)
        if isinstance(key, StatusKey):
            return status_key(self._prefix, key)
        return lease_key(self._prefix, key)

    async def acquire(self, keys: Sequence[LeaseKey], token: str) -> dict[LeaseKey, LeaseState]:
        """Try to take a lease on every key at once."""
        results = await self._run(self._acquire, keys, [token, self._lease_ms], "acquire")
        return {k: _STATES[int(r)] for k, r in zip(keys, results, strict=True)}

    async def release(self, keys: Sequence[LeaseKey], token: str) -> int:
        """Give back leases we own, so a retry is not swallowed. Returns how many."""
        results = await self._run(self._release, keys, [token], "release")
        return sum(int(r) for r in results)

    async def finish(self, keys: Sequence[LeaseKey], token: str) -> int:
        """Turn our leases into long-lived done markers. Returns how many of our leases
        were still ours: fewer than `keys` means some ran out while we worked."""
        results = await self._run(self._finish, keys, [token, self._done_ms], "finish")
        return sum(1 for r in results if int(r) == 1)

    async def _run(
        self, script: Any, keys: Sequence[LeaseKey], args: Iterable[object], what: str
    ) -> list[Any]:
        if not keys:
            return []
        argv = list(args)
        names = [self.key(k) for k in keys]
        if self._cluster:
            return await self._run_grouped(script, names, argv, what)
        try:
            if len(names) <= _CHUNK:
                return list(await script(keys=names, args=argv))
            async with self._redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(names), _CHUNK):
                    await script(keys=names[start : start + _CHUNK], args=argv, client=pipe)
                return [r for chunk in await pipe.execute() for r in chunk]
        except _REDIS_ERRORS as exc:
            raise LeaseStoreError(f"Redis {what} of {len(keys)} lease(s) failed: {exc}") from exc

    async def _run_grouped(
        self, script: Any, names: list[str], argv: list[object], what: str
    ) -> list[Any]:
        """One script call (EVALSHA) per slot group, the answers in the order of `names`.

        The calls go in one cluster pipeline: redis-py sends each node its groups in one
        round trip, the nodes concurrently, and after a connection error or a MOVED
        resends only the calls no node answered. A node that had not loaded the script
        (a promoted replica, a flushed script cache) answers NOSCRIPT for its groups:
        the script is loaded on every primary and only those groups are sent again. A
        group that still fails fails the call, after every other group has run (a
        release gives back what it can)."""
        groups = group_by_slot(names, chunk=_CHUNK)
        try:
            answers = await self._pipelined(script, names, groups, argv)
            missing = [n for n, a in enumerate(answers) if isinstance(a, NoScriptError)]
            if missing:
                await self._redis.script_load(script.script)
                again = await self._pipelined(script, names, [groups[n] for n in missing], argv)
                for n, answer in zip(missing, again, strict=True):
                    answers[n] = answer
        except _REDIS_ERRORS as exc:
            raise LeaseStoreError(
                f"Redis Cluster {what} of {len(names)} lease(s) in {len(groups)} slot "
                f"group(s) failed: {type(exc).__name__}: {exc}"
            ) from exc
        out: list[Any] = [None] * len(names)
        failures: list[BaseException] = []
        for indexes, answer in zip(groups, answers, strict=True):
            if isinstance(answer, BaseException):
                failures.append(answer)
            elif not isinstance(answer, list) or len(answer) != len(indexes):
                failures.append(
                    LeaseStoreError(f"the script answered {answer!r} for {len(indexes)} keys")
                )
            else:
                for i, value in zip(indexes, answer, strict=True):
                    out[i] = value
        if failures:
            first = failures[0]
            raise LeaseStoreError(
                f"Redis Cluster {what} of {len(names)} lease(s) failed in {len(failures)} of "
                f"{len(groups)} slot group(s): {type(first).__name__}: {first}"
            ) from first
        return out

    async def _pipelined(
        self, script: Any, names: list[str], groups: list[list[int]], argv: list[Any]
    ) -> list[Any]:
        """Each group's EVALSHA in one cluster pipeline; an answer or an error a group."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for indexes in groups:
                pipe.evalsha(script.sha, len(indexes), *(names[i] for i in indexes), *argv)
            return list(await pipe.execute(raise_on_error=False))


def group_by_slot(names: Sequence[str], *, chunk: int = _CHUNK) -> list[list[int]]:
    """The indexes of `names` grouped by Redis Cluster hash slot (``redis.crc.key_slot``,
    which honours a ``{...}`` hash tag exactly as the server does), each group in the
    order of `names` and cut into lists of at most `chunk`; groups in order of their
    first key."""
    by_slot: dict[int, list[int]] = {}
    for i, name in enumerate(names):
        by_slot.setdefault(key_slot(name.encode()), []).append(i)
    return [
        indexes[start : start + chunk]
        for indexes in by_slot.values()
        for start in range(0, len(indexes), chunk)
    ]


def lease_key(prefix: str, message: MessageKey) -> str:
    """The Redis key of one message (see the module docstring)."""
    pnid = message.phone_number_id
    return f"{prefix}{KEY_SEPARATOR}{len(pnid)}:{pnid}:{message.wamid}"


def status_key(prefix: str, status: StatusKey) -> str:
    """The Redis key of one status update:
    ``{prefix}#s:{len(phone_number_id)}:{phone_number_id}:{len(id)}:{id}:{status}``. The
    lengths say where each part ends (the word is the rest), and the ``s`` after the
    ``#`` keeps it apart from a message's key (a digit there) and a dead letter's
    (``dlq``)."""
    pnid, status_id = status.phone_number_id, status.status_id
    return (
        f"{prefix}{KEY_SEPARATOR}s:{len(pnid)}:{pnid}:{len(status_id)}:{status_id}:{status.status}"
    )


def dead_letter_key(prefix: str, record: RecordKey) -> str:
    """The Redis key of an inbound record's dead letter: ``{prefix}#dlq:{topic}:...``.
    Topic names hold neither ``:`` nor ``#``, and a message key has digits after the
    ``#``, so no two records and no record and message share a key."""
    r = record
    return f"{prefix}{KEY_SEPARATOR}dlq:{r.topic}:{r.partition}:{r.offset}:{r.timestamp_ms}"


def connect(url: str, *, timeout_s: float, mode: str = "standalone") -> RedisClient:
    """A Redis client with bounded timeouts (a hung Redis must not hang a batch):
    REDIS_MODE ``standalone`` (one Redis) or ``cluster`` (Redis Cluster; `url` names any
    node, the others are discovered). Connects lazily: :func:`ping` checks."""
    if mode == "cluster":
        return RedisCluster.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
            decode_responses=False,
        )
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
        decode_responses=False,
    )


async def ping(client: RedisClient) -> None:
    """One round trip, for readiness (on a cluster: every primary answers, so every
    slot has a Redis that takes leases)."""
    try:
        if isinstance(client, RedisCluster):
            await client.ping(target_nodes=RedisCluster.PRIMARIES)
        else:
            await client.ping()
    except _REDIS_ERRORS as exc:
        raise LeaseStoreError(f"Redis does not answer: {exc}") from exc


async def cluster_enabled(client: aioredis.Redis) -> bool | None:
    """Whether the Redis a standalone client talks to is a Redis Cluster node (its
    scripts would fail with CROSSSLOT or MOVED at the first batch): True or False, None
    when it does not say (INFO refused, as some managed services do)."""
    try:
        info = await client.info("cluster")
    except _REDIS_ERRORS:
        return None
    value = info.get("cluster_enabled")
    return None if value is None else bool(int(value))
