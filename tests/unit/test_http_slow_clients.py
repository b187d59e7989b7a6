"""The HTTP endpoint under clients that hold its port: slowloris, floods, slow readers.

Real sockets on 127.0.0.1 against a real `HttpServer` with its default limits; the
attackers run in the test's event loop, the probes in a thread with blocking sockets (as
an orchestrator's would), each allowed 1 s from connect to the end of the answer.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest
import structlog

from consumer.http import MAX_CONNECTIONS, HttpServer, Response, Route
from consumer.metrics import Metrics
from consumer.tools import embedded
from tests.support.slowclients import Slowloris, failures, open_files, probe, probe_many

DEADLINE_S = 1.0


async def _ok() -> Response:
    return 200, "application/json", b'{"ok": true}\n'


async def _ready() -> Response:
    await asyncio.sleep(0.005)  # a Redis, a database and a coordinator round trip
    return 200, "application/json", b'{"ok": true}\n'


def _routes() -> dict[str, Route]:
    return {"/healthz": _ok, "/readyz": _ready}


class _Watch:
    """Samples, every millisecond of the loop: open connections, and the tasks running
    code of consumer/http.py (one per route being computed, never one per connection)
    or asyncio's accepting (at most 100 a loop turn, each done within three turns)."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.open = 0
        self.http_tasks = 0
        self.accept_tasks = 0
        self.longest_turn_s = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._last = 0.0

    def start(self) -> None:
        self._last = time.monotonic()
        self._sample()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def _sample(self) -> None:
        now = time.monotonic()
        self.longest_turn_s = max(self.longest_turn_s, now - self._last - 0.001)
        self._last = now
        self.open = max(self.open, self.server._open)
        http = accept = 0
        for task in asyncio.all_tasks():
            code = getattr(task.get_coro(), "cr_code", None)
            if code is None:
                continue
            if code.co_filename.endswith("consumer/http.py"):
                http += 1
            elif code.co_name == "_accept_connection2":
                accept += 1
        self.http_tasks = max(self.http_tasks, http)
        self.accept_tasks = max(self.accept_tasks, accept)
        self._handle = asyncio.get_running_loop().call_later(0.001, self._sample)


async def _wait_until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("count", [40, 200])
async def test_probes_are_answered_while_slow_clients_hold_the_port(count: int) -> None:
    """`count` clients that connect and send nothing, a partial request line then a byte
    a second, or 30 KB of an unfinished head, and connect again whenever the server closes
    them: every /healthz and /readyz probe meanwhile answers 200 within 1 s, and the
    server never holds more than its limit."""
    server = HttpServer(embedded.LOOPBACK, 0, _routes())
    await server.start()
    watch = _Watch(server)
    try:
        async with Slowloris(server.port, count, reconnect=True) as attack:
            await asyncio.wait_for(attack.connected(), 10)
            await asyncio.sleep(0.2)  # every client has sent what it sends at first
            watch.start()
            results = await asyncio.to_thread(probe_many, server.port, 15)
            watch.stop()
            held = server._open
        assert not failures(results, DEADLINE_S), failures(results, DEADLINE_S)
        assert held >= min(count, MAX_CONNECTIONS) - 5, "the attack held the port"
        assert watch.open <= MAX_CONNECTIONS
        assert watch.http_tasks <= len(_routes())
        if count > MAX_CONNECTIONS:
            assert server.evicted > 0
            assert attack.closed_by_server > 0
    finally:
        watch.stop()
        await server.stop()


async def test_a_flood_of_idle_connections_stays_bounded() -> None:
    """Thousands of connections that send nothing, opened as fast as the loop allows and
    all held by the client: the server keeps at most its limit open, makes no task per
    connection, and probes made during and after the flood answer 200 within 1 s."""
    with open_files(6000) as limit:
        flood = min(3000, limit - 500)
        server = HttpServer(embedded.LOOPBACK, 0, _routes())
        await server.start()
        watch = _Watch(server)
        held: list[asyncio.StreamWriter] = []
        try:
            watch.start()
            during = asyncio.create_task(
                asyncio.to_thread(probe_many, server.port, 10, spacing_s=0.02)
            )
            for _ in range(flood):
                _, writer = await asyncio.open_connection(embedded.LOOPBACK, server.port)
                held.append(writer)
            results = await during
            results += await asyncio.to_thread(probe_many, server.port, 5)
            watch.stop()
            assert not failures(results, DEADLINE_S), failures(results, DEADLINE_S)
            assert watch.open <= MAX_CONNECTIONS
            assert server.evicted >= flood - MAX_CONNECTIONS
            assert watch.http_tasks <= len(_routes())
            assert watch.accept_tasks <= 400, "asyncio's accept tasks, bounded by its backlog"
        finally:
            watch.stop()
            for writer in held:
                writer.close()
            await server.stop()


async def test_concurrent_requests_share_one_answer() -> None:
    """100 requests for /readyz while one check is running get that check's answer: one
    check, not 100 (nor a refusal)."""
    calls = 0
    release = asyncio.Event()

    async def readyz() -> Response:
        nonlocal calls
        calls += 1
        await release.wait()
        return 200, "application/json", b'{"ok": true}\n'

    server = HttpServer(embedded.LOOPBACK, 0, {"/readyz": readyz})
    await server.start()
    try:
        clients = [
            await asyncio.open_connection(embedded.LOOPBACK, server.port) for _ in range(100)
        ]
        for _, writer in clients:
            writer.write(b"GET /readyz HTTP/1.1\r\n\r\n")
        await _wait_until(lambda: calls >= 1)
        await asyncio.sleep(0.3)  # every request has arrived
        release.set()
        answers = [await asyncio.wait_for(reader.read(), 5) for reader, _ in clients]
        assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") for a in answers)
        assert calls == 1
        for _, writer in clients:
            writer.close()
    finally:
        await server.stop()


async def test_a_flood_of_complete_requests_does_not_starve_the_loop() -> None:
    """50 clients asking for the metrics page as fast as they can for 1.5 s: renders are
    shared by the requests that arrive together, every loop turn stays short, and probes
    meanwhile answer within 1 s."""
    metrics = Metrics()
    renders = 0

    async def page() -> Response:
        nonlocal renders
        renders += 1
        return 200, "text/plain", metrics.render()

    server = HttpServer(embedded.LOOPBACK, 0, {**_routes(), "/metrics": page})
    await server.start()
    watch = _Watch(server)
    stop = asyncio.Event()
    answered = 0

    async def client() -> None:
        nonlocal answered
        while not stop.is_set():
            reader, writer = await asyncio.open_connection(embedded.LOOPBACK, server.port)
            writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
            if (await reader.read()).startswith(b"HTTP/1.1 200"):
                answered += 1
            writer.close()

    try:
        watch.start()
        clients = [asyncio.create_task(client()) for _ in range(50)]
        results = await asyncio.to_thread(probe_many, server.port, 15)
        stop.set()
        await asyncio.gather(*clients)
        watch.stop()
        assert not failures(results, DEADLINE_S), failures(results, DEADLINE_S)
        assert answered > 500
        assert renders < answered / 2, (renders, answered)
        assert watch.longest_turn_s < 0.5, watch.longest_turn_s
        assert watch.open <= MAX_CONNECTIONS
    finally:
        watch.stop()
        await server.stop()


async def test_clients_that_do_not_read_their_answer_cannot_hold_the_port() -> None:
    """Clients that ask for a large page and never read it hold a connection each while
    the answer waits to be sent: a probe still gets in (the oldest gives way), and the
    rest are dropped after write_timeout_s."""
    big = b"x" * (16 * 1024 * 1024)

    async def page() -> Response:
        return 200, "text/plain", big

    server = HttpServer(
        embedded.LOOPBACK,
        0,
        {"/healthz": _ok, "/big": page},
        max_connections=4,
        write_timeout_s=1.0,
    )
    await server.start()
    socks = []
    try:
        for _ in range(4):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((embedded.LOOPBACK, server.port))
            sock.sendall(b"GET /big HTTP/1.1\r\n\r\n")
            socks.append(sock)
        await _wait_until(lambda: server._open == 4)
        await asyncio.sleep(0.2)  # every request has arrived, its answer stuck
        result = await asyncio.to_thread(probe, server.port, "/healthz", DEADLINE_S)
        assert result.ok_within(DEADLINE_S), result
        assert server.evicted == 1
        await _wait_until(lambda: server._open == 0, 5)
    finally:
        for sock in socks:
            sock.close()
        await server.stop()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: kube-probe/1.29\r\n\r\n",
        b"GET /healthz HTTP/1.0\n\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\n\r\n",
    ],
)
async def test_a_request_sent_byte_by_byte_within_the_deadline_is_answered(
    request_bytes: bytes,
) -> None:
    """A slow but honest client (a head in one-byte segments) is answered, whatever line
    endings it uses."""
    server = HttpServer(embedded.LOOPBACK, 0, _routes())
    await server.start()
    try:
        reader, writer = await asyncio.open_connection(embedded.LOOPBACK, server.port)
        for i in range(len(request_bytes)):
            writer.write(request_bytes[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.002)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
        assert answer.endswith(b'{"ok": true}\n')
    finally:
        await server.stop()


async def test_a_request_line_then_end_of_stream_is_answered() -> None:
    """A client that sends its request line and shuts its side gets its answer."""
    server = HttpServer(embedded.LOOPBACK, 0, _routes())
    await server.start()
    try:
        reader, writer = await asyncio.open_connection(embedded.LOOPBACK, server.port)
        writer.write(b"GET /healthz HTTP/1.0\r\n")
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    finally:
        await server.stop()


async def test_a_failing_route_answers_500_to_everyone_waiting() -> None:
    """A route that raises answers 500 to every request that waited for it, is logged
    once, and the endpoint goes on."""
    release = asyncio.Event()

    async def broken() -> Response:
        await release.wait()
        raise RuntimeError("boom")

    server = HttpServer(embedded.LOOPBACK, 0, {"/healthz": _ok, "/broken": broken})
    await server.start()
    try:
        with structlog.testing.capture_logs() as logs:
            clients = [
                await asyncio.open_connection(embedded.LOOPBACK, server.port) for _ in range(3)
            ]
            for _, writer in clients:
                writer.write(b"GET /broken HTTP/1.1\r\n\r\n")
            await asyncio.sleep(0.2)
            release.set()
            for reader, writer in clients:
                answer = await asyncio.wait_for(reader.read(), 5)
                assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), answer
                writer.close()
        assert [e["event"] for e in logs] == ["http.route_failed"]
        result = await asyncio.to_thread(probe, server.port, "/healthz", DEADLINE_S)
        assert result.ok_within(DEADLINE_S), result
    finally:
        await server.stop()
