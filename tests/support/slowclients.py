"""Clients that hold the HTTP endpoint's port without finishing a request, and probes.

`Slowloris` runs in the test's event loop: each client connects, sends nothing, or a
partial request line and then one more byte a second, or a partial head of 30 KB, and
holds the connection; with `reconnect`, a client the server closed connects again at
once, as a real attacker would. `probe_many` runs in a thread with blocking sockets, as
an orchestrator's probe would: each probe has `deadline_s` from connect to the last byte
of the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

HOST = "127.0.0.1"
KINDS = ("idle", "partial", "bighead")


@dataclass(frozen=True)
class ProbeResult:
    path: str
    status: str  # "200", "503", or what went wrong: "timeout", "reset", "empty", ...
    elapsed_s: float
    body: bytes

    def ok_within(self, deadline_s: float) -> bool:
        return self.status == "200" and self.elapsed_s <= deadline_s


def probe(port: int, path: str, deadline_s: float = 1.0) -> ProbeResult:
    """One GET of `path` on a fresh connection, the whole request in one write."""
    started = time.monotonic()

    def left() -> float:
        return deadline_s - (time.monotonic() - started)

    def result(status: str, data: bytes = b"") -> ProbeResult:
        return ProbeResult(path, status, time.monotonic() - started, data)

    data = b""
    try:
        with socket.create_connection((HOST, port), timeout=deadline_s) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            while left() > 0:
                sock.settimeout(left())
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            else:
                return result("timeout", data)
    except TimeoutError:
        return result("timeout", data)
    except ConnectionResetError:
        return result("reset", data)
    except OSError as exc:
        return result(type(exc).__name__, data)
    if not data.startswith(b"HTTP/1.1 "):
        return result("empty" if not data else "garbled", data)
    return result(data[9:12].decode(), data.partition(b"\r\n\r\n")[2])


def probe_many(
    port: int, rounds: int, *, spacing_s: float = 0.05, deadline_s: float = 1.0
) -> list[ProbeResult]:
    """`rounds` times: /healthz then /readyz, `spacing_s` apart."""
    out = []
    for _ in range(rounds):
        for path in ("/healthz", "/readyz"):
            out.append(probe(port, path, deadline_s))
            time.sleep(spacing_s)
    return out


def failures(results: list[ProbeResult], deadline_s: float = 1.0) -> list[str]:
    return [
        f"{r.path}: {r.status} after {r.elapsed_s * 1000:.0f} ms {r.body[:60]!r}"
        for r in results
        if not r.ok_within(deadline_s)
    ]


class Slowloris:
    """`count` slow clients against `port`, cycling through KINDS."""

    def __init__(self, port: int, count: int, *, reconnect: bool) -> None:
        self.port = port
        self.count = count
        self.reconnect = reconnect
        self.connects = 0
        self.closed_by_server = 0
        self._stop = asyncio.Event()
        self._all_connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Slowloris:
        self._tasks = [
            asyncio.create_task(self._client(KINDS[i % len(KINDS)])) for i in range(self.count)
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def connected(self) -> None:
        """Every client has connected (at least once)."""
        await self._all_connected.wait()

    async def _client(self, kind: str) -> None:
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(HOST, self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            self.connects += 1
            if self.connects >= self.count:
                self._all_connected.set()
            try:
                await self._hold(kind, reader, writer)
            except OSError:
                self.closed_by_server += 1
            finally:
                writer.close()
            if not self.reconnect:
                await self._stop.wait()

    async def _hold(
        self, kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if kind == "partial":
            writer.write(b"GET /heal")
        elif kind == "bighead":
            writer.write(b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * 30_000)
        await writer.drain()
        while not self._stop.is_set():
            try:
                if not await asyncio.wait_for(reader.read(1024), 1.0):
                    self.closed_by_server += 1
                    return
            except TimeoutError:
                if kind == "partial":
                    writer.write(b"t")  # one more byte a second
                    await writer.drain()


@contextlib.contextmanager
def open_files(needed: int) -> Iterator[int]:
    """Raise the soft limit on open files towards `needed` (up to the hard limit)
    meanwhile; yields the limit in force."""
    import resource

    inf = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == inf or soft >= needed:
        yield needed
        return
    want = needed if hard == inf else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        yield want
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
