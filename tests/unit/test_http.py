"""The member's HTTP endpoint and the metrics helpers, without services."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from consumer.errors import BrokerError, EndpointError, LeaseStoreError, StoreError
from consumer.http import HttpServer, Response, probe
from consumer.metrics import Metrics
from consumer.tools import embedded


async def _ok() -> Response:
    return 200, "text/plain", b"fine\n"


async def _down() -> Response:
    return 503, "application/json", b'{"ok": false}\n'


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(embedded.LOOPBACK, port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_routes_methods_and_garbage() -> None:
    server = HttpServer(embedded.LOOPBACK, 0, {"/healthz": _ok, "/readyz": _down})
    await server.start()
    try:
        port = server.port
        ok = await _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
        assert ok.endswith(b"\r\n\r\nfine\n")
        assert b"Content-Length: 5\r\n" in ok
        assert (await _raw(port, b"GET /readyz?verbose=1 HTTP/1.0\r\n\r\n")).startswith(
            b"HTTP/1.1 503 Service Unavailable"
        )
        assert (await _raw(port, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await _raw(port, b"POST /healthz HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        head = await _raw(port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert head.endswith(b"\r\n\r\n")
        assert await _raw(port, b"\r\n") == b"", "nonsense gets no answer, and no crash"
        # The server still answers after all that.
        healthy, said = await asyncio.to_thread(probe, f"http://127.0.0.1:{port}/healthz", 5)
        assert (healthy, said) == (True, "fine")
        healthy, said = await asyncio.to_thread(probe, f"http://127.0.0.1:{port}/readyz", 5)
        assert (healthy, said) == (False, '{"ok": false}')
    finally:
        await server.stop()


async def test_connections_are_bounded_and_the_endpoint_recovers() -> None:
    """Clients that connect and send nothing hold at most `max_connections` slots, and
    cannot keep a probe out: at the limit the oldest of them is closed to make room; the
    rest time out. An overlong request line is refused, not buffered."""
    server = HttpServer(
        embedded.LOOPBACK, 0, {"/healthz": _ok}, max_connections=4, read_timeout_s=0.5
    )
    await server.start()
    idle = []
    try:
        idle.extend(
            [await asyncio.open_connection(embedded.LOOPBACK, server.port) for _ in range(4)]
        )
        await _wait_until(lambda: server._open == 4)
        ok = await asyncio.wait_for(_raw(server.port, b"GET /healthz HTTP/1.1\r\n\r\n"), 2)
        assert ok.startswith(b"HTTP/1.1 200"), ok
        assert server.evicted == 1
        assert await asyncio.wait_for(idle[0][0].read(), 2) == b"", "the oldest made room"
        await _wait_until(lambda: server._open == 0)  # the idle ones ran out of time
        ok = await _raw(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200"), ok
        huge = b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\n\r\n"
        try:
            refused = await _raw(server.port, huge)
        except ConnectionResetError:  # closed with the rest of it unread
            refused = b""
        assert refused == b""
        assert server._open == 0
        assert server.evicted == 1
    finally:
        for _, writer in idle:
            writer.close()
        await server.stop()


async def test_stop_ends_connections_in_flight_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """stop() with clients connected that never send a request: it returns at once, and
    asyncio logs no error about a cancelled connection handler (Python 3.11 does for
    handlers that are cancelled rather than ended)."""
    server = HttpServer(embedded.LOOPBACK, 0, {"/healthz": _ok}, read_timeout_s=30)
    await server.start()
    idle = [await asyncio.open_connection(embedded.LOOPBACK, server.port) for _ in range(3)]
    await _wait_until(lambda: server._open == 3)
    started = asyncio.get_running_loop().time()
    await server.stop()
    assert asyncio.get_running_loop().time() - started < 5
    assert server._open == 0
    for reader, writer in idle:
        assert await reader.read() == b"", "the server closed the connection"
        writer.close()
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


async def _wait_until(condition: Callable[[], bool], timeout_s: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_taken_port_fails_naming_the_setting() -> None:
    first = HttpServer(embedded.LOOPBACK, 0, {"/healthz": _ok})
    await first.start()
    try:
        with pytest.raises(EndpointError, match="METRICS_PORT") as info:
            await HttpServer(embedded.LOOPBACK, first.port, {}).start()
        assert isinstance(info.value.__cause__, OSError)
    finally:
        await first.stop()


def test_probe_of_nothing_says_why() -> None:
    healthy, said = probe(f"http://127.0.0.1:{embedded.free_port()}/readyz", 2)
    assert not healthy
    assert said.startswith("cannot reach http://127.0.0.1:")


def _sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_dependency_errors_are_labelled_by_dependency_and_cause() -> None:
    m = Metrics()
    for exc in (
        LeaseStoreError("x"),
        StoreError("y"),
        BrokerError("z"),
    ):
        try:
            raise exc from TimeoutError()
        except type(exc) as raised:
            m.dependency_error(raised)
    m.dependency_error(StoreError("no cause"))
    for dep in ("redis", "database", "kafka"):
        assert _sample(
            m, "wamid_guard_dependency_errors_total", dependency=dep, kind="TimeoutError"
        )
    assert _sample(
        m, "wamid_guard_dependency_errors_total", dependency="database", kind="StoreError"
    )


def test_lag_series_follow_the_assignment() -> None:
    m = Metrics()
    m.set_lag([("in", 0, 5), ("in", 1, 0)])
    assert _sample(m, "wamid_guard_consumer_lag", topic="in", partition="0") == 5
    m.set_lag([("in", 1, 2)])  # partition 0 was revoked: its series goes away
    assert _sample(m, "wamid_guard_consumer_lag", topic="in", partition="0") is None
    assert _sample(m, "wamid_guard_consumer_lag", topic="in", partition="1") == 2
    assert b"wamid_guard_consumer_lag{" in m.render()
