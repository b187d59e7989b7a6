"""An idle standby stays in the group (docs/design.md, "Fetching"): a member with no
partition (more members than partitions) still polls, so aiokafka does not leave the
group after KAFKA_MAX_POLL_INTERVAL_S; it stays ready, and when the member that holds
the partition goes away, it takes the partition over and consumes."""

from __future__ import annotations

import asyncio
import signal
import urllib.request
from pathlib import Path

import pytest

from consumer.settings import Settings
from consumer.tools import embedded, topics
from tests.support import kafka
from tests.support.bodies import text_webhook
from tests.support.procs import ConsumerGroup, ConsumerProc, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.brokers]

MAX_POLL_INTERVAL_S = 5.0


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


async def test_an_idle_standby_stays_ready_and_takes_over(
    settings: Settings, tmp_path: Path
) -> None:
    s = settings.replace(kafka_max_poll_interval_s=MAX_POLL_INTERVAL_S)
    await topics.create_topics(
        s.kafka_bootstrap_servers, {s.inbound_topic: 1, s.outbound_topic: 1, s.dlq_topic: 1}
    )
    group = ConsumerGroup(s, tmp_path)
    try:
        ports = [embedded.free_port(), embedded.free_port()]
        (owner,) = group.start(1, metrics_port=ports[0])
        group.wait_all_assigned([owner])
        (standby,) = group.start(1, metrics_port=ports[1])
        wait_until(lambda: _ready(ports[1]), 45, group.logs)
        assert not standby.assigned(), "one partition, and the owner holds it"

        # Three max poll intervals with nothing to fetch.
        await asyncio.sleep(3 * MAX_POLL_INTERVAL_S)
        assert _ready(ports[1]), "the standby is still in the group:\n" + group.logs()

        owner.signal(signal.SIGTERM)
        assert owner.wait(30) == 0, owner.log_tail()
        ends = await kafka.send(s, [(0, text_webhook("111", f"wamid.SB{i}")) for i in range(5)])
        await kafka.wait_committed(s, ends, timeout_s=45, explain=group.logs)
        assert standby.assigned(), group.logs()
        assert len(await kafka.rows(s)) == 5
        assert _alive(standby), group.logs()
        assert _ready(ports[1]), group.logs()
    finally:
        group.kill_all()


def _alive(member: ConsumerProc) -> bool:
    return member.proc.poll() is None
