"""`consumer services` and the module behind it (consumer/tools/services.py), for real:
what answers is used as it is, what does not is started on loopback and stopped again,
Apache Kafka runs as one node or three, and the tests that need Apache Kafka are skipped
where it cannot run, except under CI, where they fail."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer.tools import embedded, services
from consumer.tools.services import Addresses
from tests.support.config import unavailable

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", "services", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_what_answers_is_used_and_not_stopped(redis_url: str, tansu_bootstrap: str) -> None:
    addresses = Addresses(redis=redis_url, tansu=tansu_bootstrap)
    for name in ("redis", "tansu"):
        handle = services.ensure(name, addresses, own_port=True)
        assert not handle.running.started
        assert handle.address == addresses.address(name)
        handle.stop()
        assert services.answers(name, handle.address), "a service we did not start stays up"


def test_only_a_kafka_broker_counts_as_one(redis_url: str, tansu_bootstrap: str) -> None:
    redis_at = redis_url.split("//")[1].split("/")[0]
    assert services.kafka_answers(tansu_bootstrap)
    assert not services.kafka_answers(redis_at), "Redis on the port is not a broker"
    assert not services.kafka_answers(f"127.0.0.1:{embedded.free_port()}")


def test_up_starts_what_does_not_answer_and_down_stops_it(tmp_path: Path) -> None:
    """On the configured ports: `up` starts PostgreSQL, Redis and Tansu there and prints
    the exports; a second `up` starts nothing; `status` says they answer; `down` stops
    them and removes their folders."""
    ports = {name: embedded.free_port() for name in ("postgres", "redis", "tansu")}
    env = {
        "WAMID_GUARD_SERVICES_STATE": str(tmp_path / "state.json"),
        "TEST_POSTGRES_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{ports['postgres']}/postgres",
        "TEST_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
        "TEST_TANSU_BOOTSTRAP": f"127.0.0.1:{ports['tansu']}",
    }
    try:
        first = _cli(env, "up", "postgres", "redis", "tansu")
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == [
            f"export {name}={value}" for name, value in env.items() if name.startswith("TEST_")
        ]
        assert first.stderr.count("(started: ") == 3, first.stderr
        state = json.loads((tmp_path / "state.json").read_text())
        folders = [Path(d) for r in state for d in r["dirs"]]
        assert all(f.is_dir() for f in folders)
        for name, port in ports.items():
            assert services.port_open("127.0.0.1", port), name
        again = _cli(env, "up", "postgres", "redis", "tansu")
        assert again.returncode == 0, again.stderr
        assert again.stdout == first.stdout
        status = _cli(env, "status", "postgres", "redis", "tansu")
        assert status.returncode == 0, status.stdout
        assert status.stdout.count(": answers (started by services up)") == 3, status.stdout
    finally:
        down = _cli(env, "down")
    assert down.returncode == 0, down.stderr
    assert down.stderr.count(": stopped") == 3, down.stderr
    for name, port in ports.items():
        assert not services.port_open("127.0.0.1", port), f"{name} still listens"
    assert not any(f.exists() for f in folders)
    assert json.loads((tmp_path / "state.json").read_text()) == []
    after = _cli(env, "status", "redis")
    assert (after.returncode, after.stdout) == (
        1,
        f"redis: {env['TEST_REDIS_URL']}: not answering\n",
    )


def test_a_port_taken_by_something_else_is_named(tmp_path: Path) -> None:
    with embedded.workdir() as folder:
        other = embedded.start_redis(folder)
        try:
            env = {
                "WAMID_GUARD_SERVICES_STATE": str(tmp_path / "state.json"),
                "TEST_KAFKA_BOOTSTRAP": f"127.0.0.1:{other.port}",
            }
            done = _cli(env, "up", "kafka")
        finally:
            other.stop()
    assert done.returncode == 1
    assert f"TEST_KAFKA_BOOTSTRAP=127.0.0.1:{other.port}" in done.stderr
    assert "is not kafka" in done.stderr


def _kafka_or_skip(nodes: int) -> services.KafkaCluster:
    try:
        return services.KafkaCluster(nodes)
    except services.ServiceUnavailable as exc:
        unavailable("Apache Kafka", str(exc))


async def test_a_three_node_cluster_keeps_writing_with_a_node_killed() -> None:
    """On request, three KRaft nodes: every one lists three brokers; a topic replicated
    three times with min.insync.replicas=2 still takes acks=all writes after one node
    is killed."""
    cluster = _kafka_or_skip(3)
    try:
        await asyncio.to_thread(cluster.start)
        for node in cluster.nodes:
            assert services._broker_count(f"127.0.0.1:{node.port}") == 3
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic("replicated", 2, 3)])
        finally:
            await admin.close()
        cluster.kill(cluster.nodes[2])
        producer = AIOKafkaProducer(
            bootstrap_servers=cluster.bootstrap, acks="all", request_timeout_ms=20_000
        )
        await producer.start()
        try:
            sent = [
                await asyncio.wait_for(producer.send_and_wait("replicated", b"x", partition=p), 60)
                for p in (0, 1)
            ]
        finally:
            await producer.stop()
        assert [m.offset for m in sent] == [0, 0]
        assert [n.alive() for n in cluster.nodes] == [True, True, False]
    finally:
        cluster.close()
    assert not cluster.root.exists()


@pytest.mark.parametrize("ci", ["", "true"])
def test_without_java_the_apache_runs_skip_or_fail_under_ci(
    ci: str, tmp_path: Path, pg_admin_url: str, redis_url: str
) -> None:
    """A test marked `brokers` on a machine with no java: skipped with the reason, or,
    under CI=true, failed with it: never a silent skip."""
    env = {
        **os.environ,
        "PATH": str(tmp_path),  # no java, no mvn
        "WAMID_GUARD_CACHE": str(tmp_path / "cache"),
        "TEST_BROKER": "apache",
        "TEST_KAFKA_BOOTSTRAP": f"127.0.0.1:{embedded.free_port()}",  # nothing answers
        "TEST_POSTGRES_URL": pg_admin_url,
        "TEST_REDIS_URL": redis_url,
        "CI": ci,
    }
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rsf",
            "tests/integration/test_group.py::test_settings_fixture_is_isolated",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    said = done.stdout + done.stderr
    assert "needs `java` on PATH" in said, said
    if ci:
        assert done.returncode == 1, said
        assert "1 error" in said, said
    else:
        assert done.returncode == 0, said
        assert "1 skipped" in said, said


def test_the_bench_runs_on_apache_kafka(tmp_path: Path, redis_url: str) -> None:
    """`bench --broker apache` starts Apache Kafka for the run (through the services
    module), drains its records through the pipeline, and stops the broker again."""
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "WAMID_GUARD_SERVICES_STATE": str(tmp_path / "state.json"),
    }
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.pop("DATABASE_URL", None)  # a SQLite file of the bench's own
    before = _kafka_processes()
    done = subprocess.run(
        [
            sys.executable, "-m", "consumer", "bench", "--broker", "apache", "--json",
            "--records", "3000", "--modes", "pipeline", "--consumers", "1", "--timeout", "120",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if "needs `java` on PATH" in done.stderr or "needs `mvn` on PATH" in done.stderr:
        unavailable("Apache Kafka", done.stderr.strip())
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["config"]["broker"] == "apache"
    (run,) = report["modes"]
    assert run["records"] == 3000
    assert run["counts"]["records"] >= 3000  # each batch's records, a retried one again
    assert run["counts"]["stored"] == run["counts"]["rows"] == run["unique_messages"]
    assert run["counts"]["events"] == run["unique_messages"]
    assert run["cpu_us_per_record"]["broker"] > 0, "the JVM's CPU is read as the broker's"
    assert _kafka_processes() == before, "the bench's broker is stopped"


def _kafka_processes() -> set[int]:
    """The Apache Kafka JVMs running on this machine."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"kafka.Kafka" in cmdline.read_bytes():
                found.add(int(cmdline.parent.name))
        except OSError:
            continue
    return found
