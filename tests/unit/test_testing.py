"""consumer.testing ships in the wheel: it imports no test framework, and its fakes
stand in for the real adapters wherever a port is asked for (mypy checks the
assignments below; the run checks the imports)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

from consumer.ports import EventSink, LeaseState, LeaseStore, MessageStore, OutboxClaim
from consumer.testing import FakeLeases, FakePublisher, FakeStore, key


async def test_the_fakes_are_the_ports() -> None:
    leases: LeaseStore = FakeLeases()
    store: MessageStore = FakeStore()
    sink: EventSink = FakePublisher()
    assert await leases.acquire([key("wamid.A")], "w1:1") == {key("wamid.A"): LeaseState.ACQUIRED}
    assert await store.outbox_stats() == (0, 0.0)
    claim = await store.claim_unpublished(claimant="w1", claim_for=dt.timedelta(0), limit=5)
    assert claim == OutboxClaim((), ())
    await sink.publish([])


def test_importing_it_pulls_in_no_test_framework() -> None:
    probe = (
        "import sys, consumer.testing; "
        "print(sorted(m for m in ('pytest', 'hypothesis', '_pytest') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
