"""Every command fails in one line (docs: README "Commands"): run through the real CLI as
a subprocess, each failure an operator met exits 1 (2 for a bad setting or argument)
with one line on stderr that says what failed and what to do, and no traceback (unless
LOG_LEVEL=DEBUG). `run` logs as a service does (its JSON lines go to stderr too): its
last line is the plain one."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from consumer.settings import Settings
from consumer.tools import embedded, topics
from consumer.tools.members import settings_env

pytestmark = [pytest.mark.integration, pytest.mark.brokers]


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def member_env(settings: Settings) -> dict[str, str]:
    """The environment of `settings` (a test's, which log at DEBUG) at INFO."""
    return {**settings_env(settings), "LOG_LEVEL": "INFO"}


async def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Ran:
    """`python -m consumer ARGS` with only `env` (and PATH) as its environment."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        *args,
        env={"PATH": os.environ["PATH"], "LOG_FORMAT": "json", **(env or {})},
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def one_line(ran: Ran, code: int, *words: str) -> str:
    """Exit `code`, exactly one line on stderr, no traceback, holding `words`."""
    assert ran.code == code, ran
    assert len(ran.lines) == 1, ran.err
    assert "Traceback" not in ran.err, ran.err
    line = ran.lines[0]
    for word in words:
        assert word in line, (word, line)
    return line


UNREACHABLE_PG = "postgresql+asyncpg://postgres@127.0.0.1:1/none"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (UNREACHABLE_PG, ["DATABASE_URL", "unreachable", "Connect call failed"]),
        ("sqlite+aiosqlite:////no/such/folder/w.db", ["cannot open the SQLite file", "folder"]),
    ],
    ids=["postgres-unreachable", "sqlite-no-folder"],
)
async def test_migrate_of_a_database_it_cannot_reach(url: str, words: list[str]) -> None:
    """migrate against a database that is not there: one line, exit 1."""
    one_line(await cli("migrate", env={"DATABASE_URL": url}), 1, "wamid-guard migrate:", *words)


async def test_a_database_that_does_not_exist_is_told_apart(pg_admin_url: str) -> None:
    """PostgreSQL answers but the database does not exist: migrate and run both say
    so (not "unreachable or not migrated"), and what to do."""
    from sqlalchemy.engine import make_url

    url = make_url(pg_admin_url).set(database="wg_no_such_db").render_as_string(False)
    one_line(await cli("migrate", env={"DATABASE_URL": url}), 1, "does not exist", "create")
    ran = await cli("run", env={"DATABASE_URL": url, "METRICS_PORT": "0"})
    assert ran.code == 1, ran
    assert "Traceback" not in ran.err
    assert "does not exist" in ran.lines[-1], ran.err
    assert ran.lines[-1].startswith("wamid-guard run:")


async def test_run_as_a_role_that_may_not_write_fails_at_start(postgres_url: str) -> None:
    """The member prepares a batch's writes on its pool at start (rolled back): a role
    that may read the tables but not write them is told at start, naming the setting
    and in the database's words, instead of failing every batch later."""
    import uuid

    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from consumer.engine import create_engine

    role = f"wg_ro_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_url, pool_size=1, timeout_s=10)
    async with admin.begin() as conn:
        await conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        await conn.execute(sa.text(f"GRANT SELECT ON messages, outbox TO {role}"))
    try:
        url = make_url(postgres_url).set(username=role, password=None)
        env = {"DATABASE_URL": url.render_as_string(False), "METRICS_PORT": "0"}
        ran = await cli("run", env=env)
        assert ran.code == 1, ran
        assert "Traceback" not in ran.err
        last = ran.lines[-1]
        assert last.startswith(f"wamid-guard run: database at DATABASE_URL={env['DATABASE_URL']}:")
        assert "permission denied" in last, ran.err
        assert '"service.start_failed"' in ran.err
    finally:
        async with admin.begin() as conn:
            await conn.execute(sa.text(f"REVOKE ALL ON messages, outbox FROM {role}"))
            await conn.execute(sa.text(f"DROP ROLE {role}"))
        await admin.dispose()


async def test_run_on_a_database_not_migrated_says_migrate(tmp_path: Path) -> None:
    """A database that is there but has no tables: run says to migrate, exit 1, and the
    clean-stop line (service.stopped) is not logged for a start that failed."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'w.db'}", "METRICS_PORT": "0"}
    ran = await cli("run", env=env)
    assert ran.code == 1, ran
    assert "Traceback" not in ran.err
    assert ran.lines[-1] == (
        f"wamid-guard run: database at DATABASE_URL={env['DATABASE_URL']}: not migrated: "
        "run `python -m consumer migrate`"
    )
    assert '"service.stopped"' not in ran.err
    assert '"service.start_failed"' in ran.err


async def test_run_on_a_database_of_an_older_revision_says_migrate(tmp_path: Path) -> None:
    """A database migrated by an older release (revision 0003: the outbox of one row per
    message) is not migrated for this one: run says to migrate, exit 1, instead of
    failing every batch."""
    from consumer import migrate

    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'w.db'}", "METRICS_PORT": "0"}
    await asyncio.to_thread(migrate.upgrade, env["DATABASE_URL"], "0003")
    ran = await cli("run", env=env)
    assert ran.code == 1, ran
    assert ran.lines[-1].endswith("not migrated: run `python -m consumer migrate`"), ran.err


async def test_migrate_says_which_revision_it_reached(tmp_path: Path) -> None:
    """migrate names the revision it reached, and that it was already there the second
    time."""
    from consumer import migrate

    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"}
    first = await cli("migrate", env=env)
    assert first.code == 0, first
    assert f"from revision none to {migrate.head()} (the newest)" in first.out
    again = await cli("migrate", env=env)
    assert f"already at revision {migrate.head()} (the newest)" in again.out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["produce", "no-such-file.json"], ["FILE", "No such file"]),
        (["produce", "."], ["FILE", "is a folder"]),
        (["produce", "--duplicates", "-1"], ["--duplicates", "0 or more"]),
        (["health", "--url", "notaurl"], ["--url", "not an http://host:port URL"]),
        (["health", "--timeout", "-1"], ["--timeout", "more than 0"]),
        (["topics", "create", "--partitions", "0"], ["--partitions"]),
        (["broker", "--port", "70000"], ["--port"]),
        (["bench", "--rounds", "0"], ["--rounds", "at least 1"]),
        (["bench", "--rate", "fast"], ["--rate", "records/s or 'half'"]),
        (["bench", "--rate", "0"], ["--rate", "positive"]),
        (["bench", "--rate", "nan"], ["--rate", "positive"]),
        (["bench", "--rate", "inf"], ["--rate", "positive"]),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, list) and v and v[0][0] != "-" else None,
)
async def test_bad_arguments_exit_2_in_one_line(args: list[str], words: list[str]) -> None:
    """A bad argument is exit 2 and one line naming it (no traceback)."""
    one_line(await cli(*args), 2, *words)


async def test_a_bad_setting_exits_2_naming_it() -> None:
    """A malformed setting: exit 2 before anything runs, naming the variable."""
    one_line(await cli("migrate", env={"LEASE_TTL_S": "abc"}), 2, "LEASE_TTL_S")


async def test_a_broker_that_is_not_there_or_not_a_broker_says_why(redis_url: str) -> None:
    """KAFKA_BOOTSTRAP_SERVERS pointing where nothing listens, or at something that is not
    Kafka (Redis): one line saying which, within the request timeout."""
    refused = await cli("produce", env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    one_line(refused, 1, "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1", "connection refused")
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    env = {"KAFKA_BOOTSTRAP_SERVERS": f"{host}:{port}", "KAFKA_REQUEST_TIMEOUT_S": "3"}
    started = asyncio.get_running_loop().time()
    not_kafka = await cli("tail", "--idle-exit", "1", env=env)
    assert asyncio.get_running_loop().time() - started < 20
    one_line(not_kafka, 1, "does not answer as a Kafka broker")


async def test_topics_are_never_created_by_accident(topic_settings: Settings) -> None:
    """tail, produce and dlq with a topic that does not exist: exit 1, one line naming
    the option or the variable, and the topic is still not there afterwards."""
    s = topic_settings
    env = member_env(s)
    one_line(await cli("tail", "--topic", "no.such.topic", env=env), 1, "--topic=no.such.topic")
    one_line(await cli("produce", "--topic", "typo.topic", env=env), 1, "--topic=typo.topic")
    missing_dlq = {**env, "DLQ_TOPIC": "no.such.dlq"}
    one_line(await cli("dlq", "list", env=missing_dlq), 1, "DLQ_TOPIC=no.such.dlq")
    missing_in = {**env, "INBOUND_TOPIC": "no.such.inbound", "METRICS_PORT": "0"}
    ran = await cli("run", env=missing_in)
    assert ran.code == 1, ran
    assert "INBOUND_TOPIC=no.such.inbound: no such topic" in ran.lines[-1]
    existing = await topics.list_topics(s.kafka_bootstrap_servers)
    assert not {"no.such.topic", "typo.topic", "no.such.dlq", "no.such.inbound"} & set(existing)


async def test_replay_of_an_offset_that_is_not_there_exits_1(topic_settings: Settings) -> None:
    """dlq replay --offset naming no dead letter: says so and exits 1."""
    env = member_env(topic_settings)
    ran = await cli("dlq", "replay", "--offset", "9:99", "--idle", "1", env=env)
    assert ran.code == 1, ran
    assert "skip 9:99: no such record" in ran.out


async def test_produce_warns_about_a_file_that_is_not_json(
    topic_settings: Settings, tmp_path: Path
) -> None:
    """A file that is not JSON is sent (the pipeline will dead-letter it) with a warning,
    and the summary counts it."""
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    ran = await cli("produce", str(notes), env=member_env(topic_settings))
    assert ran.code == 0, ran
    assert ran.lines == ["warning: notes.txt is not JSON: sent as it is (it will be dead-lettered)"]
    assert "1 of them not JSON" in ran.out


async def test_a_second_member_on_the_same_port_says_what_to_do(tmp_path: Path) -> None:
    """Two members on one host with the default METRICS_PORT: the second fails at once,
    naming the setting and what to do, exit 1."""
    port = embedded.free_port()
    taken = await asyncio.start_server(lambda r, w: None, embedded.LOOPBACK, port)
    try:
        env = {"METRICS_PORT": str(port), "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/w.db"}
        ran = await cli("run", env=env)
    finally:
        taken.close()
        await taken.wait_closed()
    assert ran.code == 1, ran
    assert "Traceback" not in ran.err
    assert "METRICS_PORT" in ran.lines[-1]
    assert "its own METRICS_PORT" in ran.lines[-1]


async def test_debug_shows_the_traceback() -> None:
    """LOG_LEVEL=DEBUG: the same failure also prints the traceback, for whoever debugs."""
    ran = await cli("migrate", env={"DATABASE_URL": UNREACHABLE_PG, "LOG_LEVEL": "DEBUG"})
    assert ran.code == 1
    assert "Traceback" in ran.err
    assert ran.lines[-1].startswith("wamid-guard migrate:")


async def test_help_names_the_variables_and_gives_examples() -> None:
    """Every command's --help says which environment variables it reads and shows an
    example; the top-level help lists every command."""
    top = await cli("--help")
    commands = ["run", "migrate", "broker", "topics", "produce", "tail", "health", "dlq"]
    for command in [*commands, "demo", "bench"]:
        assert f"    {command} " in top.out, command
    for command in commands:
        helped = await cli(command, "--help")
        assert helped.code == 0
        assert "reads:" in helped.out, command
        assert f"python -m consumer {command}" in helped.out.split("examples:")[1], command
