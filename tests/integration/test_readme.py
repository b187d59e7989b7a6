"""README's "Run it yourself" block, run as it is written: a local broker, the topics,
migrate, two members with their own ports, health, produce, tail, a clean stop. The
block uses the defaults (broker 127.0.0.1:9092, Redis 127.0.0.1:6379, a SQLite file in
the current folder, metrics ports 9108 and 9109); the test gives it a folder of its own,
the project's venv as `.venv`, and a Redis key prefix of its own (removed afterwards)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import orjson
import pytest

from consumer import intake
from consumer.records import InboundRecord, MessageKey, Webhook
from consumer.tools.produce import sample_bodies

pytestmark = pytest.mark.integration

README = Path(__file__).parents[2] / "README.md"


def run_it_yourself() -> str:
    """The first bash block after the "## Run it yourself" heading."""
    text = README.read_text()
    section = text.split("## Run it yourself", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```bash\n(.*?)```", section, re.S)
    assert found, "README has no bash block under 'Run it yourself'"
    return found.group(1)


async def _stop_group(pgid: int) -> None:
    """Whatever the block left running: SIGTERM first (the broker command then stops its
    Tansu, which runs in a session of its own), SIGKILL what is left after 10 s."""
    deadline = asyncio.get_running_loop().time() + 10
    try:
        os.killpg(pgid, signal.SIGTERM)
        while asyncio.get_running_loop().time() < deadline:
            os.killpg(pgid, 0)
            await asyncio.sleep(0.1)
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return


def expected_statuses() -> set[tuple[str, str]]:
    """The (wamid, status) of the bundled samples' statuses: each is its message's only
    status there, so each moves its state and is announced."""
    found = set()
    for _, body in sample_bodies():
        decoded = intake.decode(InboundRecord("t", 0, 0, None, body, (), 0), max_bytes=1 << 20)
        if isinstance(decoded, Webhook):
            found |= {(u.key.status_id, u.key.status) for u in decoded.statuses}
    return found


def expected_keys() -> set[MessageKey]:
    """The messages of the bundled samples (`produce` with no file sends them)."""
    keys = set()
    for _, body in sample_bodies():
        decoded = intake.decode(InboundRecord("t", 0, 0, None, body, (), 0), max_bytes=1 << 20)
        if isinstance(decoded, Webhook):
            keys |= {m.key for m in decoded.messages}
    return keys


async def test_the_run_it_yourself_block_works_as_written(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    """The block ends with exit 0; tail printed one event per sample message and one per
    sample status (no duplicate although each webhook was sent three times); both
    members stopped cleanly; the broker stopped."""
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    env = {**os.environ, "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": key_prefix}
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "METRICS_PORT", "LOG_LEVEL"):
        env.pop(name, None)
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with out_path.open("wb") as out_file, err_path.open("wb") as err_file:
        # Its own process group, and output to files: if the block fails half-way, what
        # it left running (the broker, members) is killed with it, and cannot keep the
        # test waiting on a pipe.
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-e",
            "-c",
            run_it_yourself(),
            cwd=tmp_path,
            env=env,
            stdout=out_file,
            stderr=err_file,
            start_new_session=True,
        )
        try:
            await asyncio.wait_for(proc.wait(), 100)
        finally:
            await _stop_group(proc.pid)
            if proc.returncode is None:
                await proc.wait()
    out, err = out_path.read_bytes(), err_path.read_bytes()
    said = f"stdout:\n{out.decode()}\nstderr:\n{err.decode()}"
    assert proc.returncode == 0, said
    printed = out.decode().splitlines()
    events = [x for x in printed if re.match(r"\d+:\d+ message_created ", x)]
    wamids = {line.rsplit("wamid=", 1)[1] for line in events}
    assert len(events) == len(wamids) == len(expected_keys()), said
    assert wamids == {k.wamid for k in expected_keys()}, said
    changed = [x for x in printed if re.match(r"\d+:\d+ message_status_changed ", x)]
    said_status = {
        (line.split("wamid=")[1].split()[0], line.split("status=")[1].split()[0])
        for line in changed
    }
    assert len(changed) == len(said_status) == len(expected_statuses()), said
    assert said_status == expected_statuses(), said
    # produce's report says what tail then shows, and tail counts it on exit.
    messages, statuses = len(expected_keys()), len(expected_statuses())
    assert (
        f"they hold {messages} unique messages and {statuses} unique status updates: expect "
        f"{messages} message_created and at most {statuses} message_status_changed"
    ) in out.decode(), said
    assert (
        f"tail: {messages + statuses} event(s) read from whatsapp.message_created: "
        f"message_created {messages}, message_status_changed {statuses}"
    ) in err.decode(), said
    for member in ("member-1.log", "member-2.log"):
        lines = (tmp_path / member).read_bytes().splitlines()
        stopped = [orjson.loads(x) for x in lines if b'"service.stopped"' in x]
        assert stopped, f"{member} did not stop cleanly:\n{lines[-5:]!r}"
    assert "broker stopped" in err.decode(), said
