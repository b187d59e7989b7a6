"""Subprocess entry point for the cross-process lease race (test_lease_race.py).

Run as ``python -m tests.integration.lease_worker REDIS_URL PREFIX TOKEN KEYS`` from the
project root. The worker connects to Redis, announces itself by pushing its token onto
``{PREFIX}:ready``, blocks on ``BLPOP {PREFIX}:gate`` until the parent opens the gate,
then takes leases on ``KEYS`` message keys in one pipelined acquire and prints one JSON
line: ``{"token": ..., "states": [state of key 0, state of key 1, ...]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import redis.asyncio as aioredis

from consumer.dedup import Leases
from consumer.records import MessageKey

LEASE_TTL_S = 60.0
DONE_TTL_S = 3600.0


def race_keys(count: int) -> list[MessageKey]:
    """The keys every worker races for, in the same order in every process."""
    return [MessageKey(f"pn{i % 4}", f"wamid.race.{i}") for i in range(count)]


def ready_list(prefix: str) -> str:
    return f"{prefix}:ready"


def gate_list(prefix: str) -> str:
    return f"{prefix}:gate"


async def run(redis_url: str, prefix: str, token: str, count: int, gate_timeout_s: float) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        leases = Leases(client, prefix=prefix, lease_ttl_s=LEASE_TTL_S, done_ttl_s=DONE_TTL_S)
        keys = race_keys(count)
        await client.ping()
        await client.rpush(ready_list(prefix), token)
        opened = await client.blpop([gate_list(prefix)], timeout=gate_timeout_s)
        if opened is None:
            print(f"gate never opened within {gate_timeout_s}s", file=sys.stderr)
            return 2
        states = await leases.acquire(keys, token)
        print(json.dumps({"token": token, "states": [states[k].value for k in keys]}))
        return 0
    finally:
        await client.aclose()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("redis_url")
    parser.add_argument("prefix")
    parser.add_argument("token")
    parser.add_argument("keys", type=int)
    parser.add_argument("--gate-timeout-s", type=float, default=60.0)
    args = parser.parse_args()
    return asyncio.run(run(args.redis_url, args.prefix, args.token, args.keys, args.gate_timeout_s))


if __name__ == "__main__":
    sys.exit(main())
