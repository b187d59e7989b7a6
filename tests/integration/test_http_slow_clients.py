"""A real member's /healthz and /readyz while slow clients hold its metrics port.

One `python -m consumer run` on a real broker, Redis and PostgreSQL, its own free
METRICS_PORT. 200 slowloris clients (nothing sent, a partial request line then a byte a
second, or 30 KB of an unfinished head; each connects again as soon as it is closed),
then a flood of idle connections: every probe meanwhile answers 200 within 1 s (an
orchestrator's probe would otherwise restart a healthy member), the member keeps
consuming, and it says in its log that it turned clients away.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from consumer.settings import Settings
from consumer.tools import embedded
from tests.support import kafka, slowclients
from tests.support.bodies import text_webhook
from tests.support.procs import ConsumerGroup, wait_until
from tests.support.slowclients import Slowloris, failures, open_files, probe

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.brokers]

PNID = "106540352242922"


async def test_a_member_answers_its_probes_under_slow_clients(
    topic_settings: Settings, tmp_path: Path
) -> None:
    port = embedded.free_port()
    settings = topic_settings.replace(metrics_port=port, log_level="INFO")
    group = ConsumerGroup(settings, tmp_path)
    try:
        (member,) = group.start(1)
        group.wait_all_assigned()
        wait_until(lambda: probe(port, "/readyz", 2).status == "200", 20, group.logs)

        async with Slowloris(port, 200, reconnect=True) as attack:
            await asyncio.wait_for(attack.connected(), 10)
            ends = await kafka.send(settings, [(0, text_webhook(PNID, "wamid.SLOW"))])
            results = await asyncio.to_thread(slowclients.probe_many, port, 15)
            await kafka.wait_committed(settings, ends, explain=group.logs)
        assert not failures(results), failures(results)
        assert attack.closed_by_server > 0, "the member closed the oldest to make room"

        with open_files(4000) as limit:
            held: list[asyncio.StreamWriter] = []
            try:
                for _ in range(min(2000, limit - 500)):
                    _, writer = await asyncio.open_connection(embedded.LOOPBACK, port)
                    held.append(writer)
                results = await asyncio.to_thread(slowclients.probe_many, port, 10)
            finally:
                for writer in held:
                    writer.close()
        assert not failures(results), failures(results)
        assert member.named("http.connections_evicted"), group.logs()
        assert member.proc.poll() is None, group.logs()
    finally:
        group.kill_all()
