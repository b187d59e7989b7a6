"""The fault suite: several real consumer processes on a 4-partition topic, real Redis,
PostgreSQL and broker; inject a fault mid-stream, heal, drain, audit (see harness.py).

FAULT_PROFILE=long runs bigger traffic and more kills; FAULT_REPORT=path collects the
figures that docs/reliability.md reports.
"""

from __future__ import annotations

import asyncio
import random
import signal

import pytest

from tests.faults.conftest import FaultEnv
from tests.faults.harness import Profile

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CRASH_POINTS = [
    "after_lease",
    "after_insert",
    "after_commit",
    "after_publish",
    "after_offset_commit",
]


async def test_concurrent_duplicates_same_and_other_partitions(fault_env: FaultEnv) -> None:
    """No fault but Meta's: copies of one webhook on the same and on other partitions,
    read by three members at once. Exactly one row and one event per message."""
    run = await fault_env.run("duplicates (same and other partitions)")
    run.start(3)
    run.group.wait_all_assigned()
    await run.send_all()
    figures = await run.audit(await run.drain())
    caught = (
        figures.lock_conflicts
        + figures.insert_conflicts
        + run.group.totals("dup_done_marker")
        + run.group.totals("dup_in_batch")
    )
    assert caught >= figures.duplicates_injected, "every duplicate was caught by some layer"


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_sigkill_at_each_step(fault_env: FaultEnv, point: str) -> None:
    """SIGKILL at a given step of the flow (test-only crash point), a replacement starts,
    and the promise holds."""
    run = await fault_env.run(f"SIGKILL {point}", crash=True)
    (victim,) = run.start(1, crash_point=f"{point}:3")
    run.start(2)
    run.group.wait_all_assigned()
    await run.send_all()
    assert victim.wait(60) == -signal.SIGKILL, victim.log_tail()
    assert victim.named("crashpoint.kill"), "the crash point was reached"
    run.start(1)  # the orchestrator's replacement
    run.healed()
    await run.audit(await run.drain())


async def test_sigkill_at_random(fault_env: FaultEnv, profile: Profile) -> None:
    """Members SIGKILLed at random moments while the stream flows, each replaced."""
    run = await fault_env.run("SIGKILL at random", crash=True)
    run.start(3)
    run.group.wait_all_assigned()
    rng = random.Random(11)  # noqa: S311 - reproducible choice of victims
    waves = len(run.traffic.waves)
    kills = 0
    for wave in range(waves):
        await run.send_wave(wave)
        if kills < profile.kills:
            run.wait_batches(2 + 3 * wave)
            alive = [p for p in run.group.procs if p.proc.poll() is None]
            victim = rng.choice(alive)
            await asyncio.sleep(rng.uniform(0.0, 0.5))  # a random moment, not a boundary
            victim.signal(signal.SIGKILL)
            victim.wait(10)
            kills += 1
            run.start(1)
    run.healed()
    figures = await run.audit(await run.drain(), kills=kills)
    assert figures.rebalances >= 1
