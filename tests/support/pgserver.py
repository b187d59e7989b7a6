"""A PostgreSQL server of a test's own, so a fault scenario can really restart it
(a clean restart, or a crash and its recovery) without touching the machine's server
that the other tests share.

It uses the server binaries of the machine's PostgreSQL installation (TEST_PG_BINDIR,
else `pg_config --bindir`, else /usr/lib/postgresql/<newest>/bin). PostgreSQL refuses
to run as root: under root the server runs as the `postgres` user, in a data directory
outside the root-only pytest temp tree.
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from consumer import migrate
from consumer.tools import embedded

LOOPBACK = embedded.LOOPBACK


def _bindir() -> Path:
    candidates: list[str] = []
    if env := os.environ.get("TEST_PG_BINDIR"):
        candidates.append(env)
    if pg_config := shutil.which("pg_config"):
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(done.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and (Path(c) / "postgres").is_file() and (Path(c) / "initdb").is_file():
            return Path(c)
    raise RuntimeError(
        "this fault scenario runs a PostgreSQL server of its own and needs the server "
        "binaries (initdb, postgres, pg_ctl): set TEST_PG_BINDIR to their directory; "
        f"looked in {candidates}"
    )


class PostgresServer:
    """initdb + postgres on a free loopback port; stop it fast or crash it, start again."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.root = Path(tempfile.mkdtemp(prefix="wamid-guard-pg-"))
        if self.as_user:
            shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self.log_path = self.root / "server.log"
        self.port = embedded.free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({done.returncode}): "
                f"{done.stderr.decode(errors='replace')[-2000:]}"
            )

    def start(self, timeout_s: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                *self.as_user, str(self.bindir / "postgres"), "-D", str(self.data),
                "-p", str(self.port), "-k", str(self.root), "-c", f"listen_addresses={LOOPBACK}",
                # Durable enough for a process crash (the OS keeps what was written);
                # the test is about the server going away, not the disk.
                "-c", "fsync=off", "-c", "full_page_writes=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
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
        raise RuntimeError(f"own PostgreSQL did not start; its log ends:\n{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: a clean restart's first half (sessions are told to end, transactions
        in flight roll back). `immediate`: a crash (no shutdown; recovery at the next
        start replays the WAL, so what had committed stays and nothing else)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "30")
        self.proc.wait(30)

    def create_database(self, name: str) -> str:
        """A migrated database; returns its URL (direct, not through any proxy)."""
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

    def close(self) -> None:
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            if self.proc is not None:
                self.proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)
