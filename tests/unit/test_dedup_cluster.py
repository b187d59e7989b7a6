"""Leases on Redis Cluster (REDIS_MODE=cluster), with a fake client: the keys of a batch
are grouped by hash slot, one script call (EVALSHA) per group, all of them in one cluster
pipeline, the answers back in the batch's order; NOSCRIPT loads the script and sends
only the refused groups again; a group that fails is a LeaseStoreError with its cause,
after every other group has run. Standalone keeps one call per chunk."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import pytest
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    NoScriptError,
    RedisClusterException,
)

from consumer import dedup
from consumer.errors import ConfigError, LeaseStoreError
from consumer.records import MessageKey, RecordKey
from consumer.settings import Settings

PREFIX = "wamid"


def _code(name: str) -> int:
    """What the fake script answers for a key: a function of the key alone, so that an
    answer put back at the wrong index shows."""
    return sum(name.encode()) % 4


class FakeScript:
    """A registered script: called directly on one Redis (standalone)."""

    def __init__(self, owner: FakeClient, body: str) -> None:
        self.owner = owner
        self.script = body
        self.sha = f"sha-{len(owner.scripts)}"
        owner.scripts[self.sha] = body

    async def __call__(
        self, keys: Sequence[str], args: Sequence[object], client: object = None
    ) -> list[int]:
        self.owner.calls.append((self.script, list(keys), list(args)))
        return [_code(k) for k in keys]


class FakePipeline:
    """redis-py's cluster pipeline as Leases uses it: EVALSHAs queued, then one execute
    that answers each with its result or its error (raise_on_error=False)."""

    def __init__(self, owner: FakeClient) -> None:
        self.owner = owner
        self.queued: list[tuple[str, list[str], list[object]]] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def evalsha(self, sha: str, numkeys: int, *args: Any) -> FakePipeline:
        self.queued.append((sha, list(args[:numkeys]), list(args[numkeys:])))
        return self

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        o = self.owner
        assert raise_on_error is False
        o.executes.append(len(self.queued))
        if o.node_error is not None:
            raise o.node_error
        out: list[Any] = []
        for sha, keys, args in self.queued:
            slot = key_slot(keys[0].encode())
            assert {key_slot(k.encode()) for k in keys} == {slot}, "one slot per call"
            if slot in o.noscript_slots and sha not in o.loaded:
                out.append(NoScriptError("No matching script"))
                continue
            o.calls.append((o.scripts[sha], keys, args))
            if slot == o.fail_slot:
                out.append(o.failure)
            else:
                out.append([_code(k) for k in keys])
        return out


class FakeClient:
    def __init__(self) -> None:
        self.scripts: dict[str, str] = {}
        self.calls: list[tuple[str, list[str], list[object]]] = []
        self.executes: list[int] = []
        self.loaded: set[str] = set()
        self.loads: list[str] = []
        self.noscript_slots: set[int] = set()
        self.fail_slot: int | None = None
        self.failure: Exception = ConnectionError("node gone")
        self.node_error: Exception | None = None

    def register_script(self, body: str) -> FakeScript:
        return FakeScript(self, body)

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        assert transaction is False
        return FakePipeline(self)

    async def script_load(self, body: str) -> str:
        self.loads.append(body)
        sha = next(sha for sha, b in self.scripts.items() if b == body)
        self.loaded.add(sha)
        return sha


def _leases(client: FakeClient, *, cluster: bool = True) -> dedup.Leases:
    return dedup.Leases(
        client,  # type: ignore[arg-type]
        prefix=PREFIX,
        lease_ttl_s=30,
        done_ttl_s=3600,
        cluster=cluster,
    )


def _keys(n: int) -> list[MessageKey]:
    return [MessageKey(f"10654{i % 7}", f"wamid.{i:05d}") for i in range(n)]


def test_group_by_slot_covers_every_key_once_in_order() -> None:
    names = [dedup.lease_key(PREFIX, k) for k in _keys(3000)]
    groups = dedup.group_by_slot(names)
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(len(names))), "every key in exactly one group"
    for g in groups:
        assert g == sorted(g), "a group keeps the batch's order"
        assert len({key_slot(names[i].encode()) for i in g}) == 1, "one slot per group"
    assert len(groups) == len({key_slot(n.encode()) for n in names})
    firsts = [g[0] for g in groups]
    assert firsts == sorted(firsts), "groups in order of their first key"


def test_group_by_slot_cuts_a_large_group_into_chunks() -> None:
    """A hash tag in a wamid can put many keys in one slot: the group is still bounded."""
    names = [dedup.lease_key(PREFIX, MessageKey("1", f"x{{same}}{i}")) for i in range(25)]
    groups = dedup.group_by_slot(names, chunk=10)
    assert [len(g) for g in groups] == [10, 10, 5]
    assert [i for g in groups for i in g] == list(range(25))


def test_hash_tags_in_outside_strings_are_grouped_as_the_server_hashes_them() -> None:
    """The slot is redis-py's key_slot of the whole key, so a '{...}' in a wamid (data
    from outside) groups the key where the server will look for it."""
    a = dedup.lease_key(PREFIX, MessageKey("1", "a{tag}"))
    b = dedup.lease_key(PREFIX, MessageKey("2", "b{tag}"))
    assert key_slot(a.encode()) == key_slot(b.encode()) == key_slot(b"tag")
    assert dedup.group_by_slot([a, b]) == [[0, 1]]


async def test_acquire_one_call_per_slot_and_answers_in_batch_order() -> None:
    client = FakeClient()
    leases = _leases(client)
    keys: list[Any] = [*_keys(500), RecordKey("in", 3, 42, 1700000000000)]
    states = await leases.acquire(keys, "tok")
    names = [leases.key(k) for k in keys]
    slots = {key_slot(n.encode()) for n in names}
    assert len(client.calls) == len(slots), "one script call per slot group"
    for body, called, args in client.calls:
        assert body == dedup._ACQUIRE
        assert len({key_slot(n.encode()) for n in called}) == 1
        assert args == ["tok", 30000]
    assert collections.Counter(n for _, c, _ in client.calls for n in c) == collections.Counter(
        names
    )
    assert list(states) == keys
    for k, name in zip(keys, names, strict=True):
        assert states[k] is dedup._STATES[_code(name)], k


async def test_release_and_finish_are_grouped_too() -> None:
    client = FakeClient()
    leases = _leases(client)
    keys = _keys(200)
    names = [leases.key(k) for k in keys]
    released = await leases.release(keys, "tok")
    assert released == sum(_code(n) for n in names)
    finished = await leases.finish(keys, "tok")
    assert finished == sum(1 for n in names if _code(n) == 1)
    bodies = collections.Counter(body for body, _, _ in client.calls)
    slots = len({key_slot(n.encode()) for n in names})
    assert bodies == {dedup._RELEASE: slots, dedup._FINISH: slots}
    assert all(args == ["tok", 3600 * 1000] for b, _, args in client.calls if b == dedup._FINISH)


async def test_every_group_goes_in_one_pipeline() -> None:
    """3,000 keys in about 2,500 slot groups: one pipeline (redis-py sends each node its
    groups in one round trip, the nodes concurrently), not a round trip a group."""
    client = FakeClient()
    leases = _leases(client)
    keys = _keys(3000)
    await leases.acquire(keys, "tok")
    groups = dedup.group_by_slot([leases.key(k) for k in keys])
    assert client.executes == [len(groups)]
    assert len(groups) > 2000


async def test_a_node_without_the_script_gets_it_and_only_its_groups_run_again() -> None:
    """NOSCRIPT (a promoted replica, a flushed script cache): the script is loaded once
    and only the groups that were refused are sent again; no group runs twice."""
    client = FakeClient()
    leases = _leases(client)
    keys = _keys(300)
    names = [leases.key(k) for k in keys]
    refused = {key_slot(n.encode()) for n in names[:40]}
    client.noscript_slots = refused
    states = await leases.acquire(keys, "tok")
    assert client.loads == [dedup._ACQUIRE]
    groups = dedup.group_by_slot(names)
    again = [g for g in groups if key_slot(names[g[0]].encode()) in refused]
    assert client.executes == [len(groups), len(again)]
    assert collections.Counter(n for _, c, _ in client.calls for n in c) == collections.Counter(
        names
    ), "each key's script ran once"
    assert all(states[k] is dedup._STATES[_code(n)] for k, n in zip(keys, names, strict=True))


async def test_a_failed_pipeline_is_a_lease_store_error() -> None:
    """A node redis-py could not reach after its retries (a failover under way)."""
    client = FakeClient()
    client.node_error = RedisClusterException("no node for slot 42")
    leases = _leases(client)
    with pytest.raises(LeaseStoreError, match="Redis Cluster finish of 10 lease") as info:
        await leases.finish(_keys(10), "tok")
    assert info.value.__cause__ is client.node_error


@pytest.mark.parametrize(
    "failure",
    [ConnectionError("node gone"), ClusterDownError("CLUSTERDOWN"), RedisClusterException("x")],
    ids=["connection", "clusterdown", "cluster-exception"],
)
async def test_a_failed_group_is_a_lease_store_error_after_every_group_ran(
    failure: Exception,
) -> None:
    """A shard failing over fails its groups; the others still run (a release gives back
    what it can), and the caller gets a LeaseStoreError with the cause chained."""
    client = FakeClient()
    leases = _leases(client)
    keys = _keys(300)
    names = [leases.key(k) for k in keys]
    client.fail_slot = key_slot(names[7].encode())
    client.failure = failure
    with pytest.raises(LeaseStoreError, match="release of 300 lease") as info:
        await leases.release(keys, "tok")
    assert info.value.__cause__ is failure
    assert "1 of" in str(info.value)
    assert type(failure).__name__ in str(info.value)
    assert len(client.calls) == len({key_slot(n.encode()) for n in names})


async def test_standalone_keeps_one_call_per_chunk() -> None:
    client = FakeClient()
    leases = _leases(client, cluster=False)
    keys = _keys(1000)
    states = await leases.acquire(keys, "tok")
    assert len(client.calls) == 1
    assert client.calls[0][1] == [leases.key(k) for k in keys]
    assert all(states[k] is dedup._STATES[_code(leases.key(k))] for k in keys)


def test_mode_follows_the_client_unless_told() -> None:
    assert _leases(FakeClient()).cluster
    assert not _leases(FakeClient(), cluster=False).cluster
    standalone = dedup.connect("redis://127.0.0.1:1/0", timeout_s=1)
    assert not dedup.Leases(standalone, prefix="p", lease_ttl_s=1, done_ttl_s=2).cluster
    clustered = dedup.connect("redis://127.0.0.1:1", timeout_s=1, mode="cluster")
    assert dedup.Leases(clustered, prefix="p", lease_ttl_s=1, done_ttl_s=2).cluster


def test_redis_mode_setting() -> None:
    assert Settings().redis_mode == "standalone"
    s = Settings.from_env({"REDIS_MODE": "cluster", "REDIS_URL": "redis://node-1:7000"})
    assert s.redis_mode == "cluster"
    with pytest.raises(ConfigError, match=r"^REDIS_MODE: must be one of") as info:
        Settings.from_env({"REDIS_MODE": "sentinel"})
    assert info.value.setting == "REDIS_MODE"
    with pytest.raises(ConfigError, match=r"^REDIS_URL: REDIS_MODE=cluster needs"):
        Settings.from_env({"REDIS_MODE": "cluster", "REDIS_URL": "unix:///tmp/redis.sock"})
    with pytest.raises(ConfigError, match=r"^REDIS_URL: REDIS_MODE=cluster: .*database 0"):
        Settings.from_env({"REDIS_MODE": "cluster", "REDIS_URL": "redis://node-1:7000/3"})
