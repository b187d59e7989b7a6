"""Real consumer processes for tests: start, signal, read their structured logs."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from consumer.settings import Settings
from consumer.tools.members import start_member


@dataclass
class ConsumerProc:
    index: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (non-JSON lines are skipped)."""
        out = []
        for line in self.log_path.read_bytes().splitlines():
            if line.startswith(b"{"):
                try:
                    out.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    continue
        return out

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]

    def assigned(self) -> bool:
        """Holds partitions after its latest rebalance."""
        marks = [
            e
            for e in self.events()
            if e.get("event") in ("partitions.assigned", "partitions.revoked")
        ]
        return (
            bool(marks)
            and marks[-1]["event"] == "partitions.assigned"
            and bool(marks[-1]["partitions"])
        )

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout_s)

    def peak_rss_bytes(self) -> int:
        """The member's peak resident set so far (VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmHWM for {self.proc.pid}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class ConsumerGroup:
    """Several `python -m consumer run` processes sharing one group."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.procs: list[ConsumerProc] = []

    def start(self, count: int = 1, **overrides: Any) -> list[ConsumerProc]:
        settings = self.settings.replace(**overrides) if overrides else self.settings
        started = []
        for _ in range(count):
            index = len(self.procs)
            log_path = self.workdir / f"consumer-{index}.log"
            cp = ConsumerProc(index, start_member(settings, log_path), log_path)
            self.procs.append(cp)
            started.append(cp)
        return started

    def wait_all_assigned(
        self, procs: list[ConsumerProc] | None = None, timeout_s: float = 45
    ) -> None:
        chosen = procs or [p for p in self.procs if p.proc.poll() is None]
        wait_until(
            lambda: all(p.assigned() for p in chosen),
            timeout_s,
            lambda: "consumers never all held partitions:\n" + self.logs(),
        )

    def kill_all(self) -> None:
        for p in self.procs:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGCONT)
                p.proc.kill()
                p.proc.wait(10)

    def logs(self) -> str:
        return "\n".join(
            f"--- consumer {p.index} (exit {p.proc.poll()})\n{p.log_tail()}" for p in self.procs
        )

    def totals(self, name: str) -> int:
        """Sum of a counter over every consumer's `batch.done` lines."""
        return sum(int(e.get(name, 0)) for p in self.procs for e in p.named("batch.done"))


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    explain: Callable[[], str] = lambda: "condition not met",
    interval_s: float = 0.1,
) -> None:
    """Poll `condition` until it holds; fail with `explain()` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g}s: {explain()}")
