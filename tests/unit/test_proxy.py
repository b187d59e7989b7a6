"""The fault-injection TCP proxy in tests/support/proxy.py, against tiny loopback servers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import socketserver
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from tests.support.proxy import LOOPBACK, FaultProxy, ThreadedProxy, running_proxy

Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Upstream:
    """A loopback server that records what it receives and echoes it (or answers OK:...)."""

    def __init__(self, *, echo: bool) -> None:
        self.echo = echo
        self.received = bytearray()
        self.closed = 0  # connections that ended, from the server's side
        self.port = 0
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()  # each handler then reads EOF and returns
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def wait_until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not done():
                self._changed.clear()
                await self._changed.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while data := await reader.read(65536):
                self.received += data
                self._changed.set()
                writer.write(data if self.echo else b"OK:" + data)
                await writer.drain()
        except OSError:
            pass
        finally:
            self.closed += 1
            self._changed.set()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._tasks.discard(task)
            self._writers.discard(writer)


@pytest.fixture
async def echo() -> AsyncIterator[Upstream]:
    server = Upstream(echo=True)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def recorder() -> AsyncIterator[Upstream]:
    server = Upstream(echo=False)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[int], Awaitable[Client]]]:
    writers: list[asyncio.StreamWriter] = []

    async def open_client(port: int) -> Client:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writers.append(writer)
        return reader, writer

    yield open_client
    for writer in writers:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def round_trip(client: Client, data: bytes, reply_size: int | None = None) -> bytes:
    """Send ``data``; read the reply (as long as ``data`` unless ``reply_size`` says)."""
    reader, writer = client
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(5):
        return await reader.readexactly(len(data) if reply_size is None else reply_size)


async def until_closed(client: Client, send: bytes = b"") -> bytes:
    """Send ``send``, then read until the connection ends (EOF or reset); what arrived."""
    reader, writer = client
    got = b""
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        if send:
            writer.write(send)
            await writer.drain()
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):
                got += chunk
    return got


async def test_forwards_both_ways(
    echo: Upstream, connect: Callable[[int], Awaitable[Client]]
) -> None:
    """Plain forwarding: what the client sends comes back from the echo server."""
    async with running_proxy(LOOPBACK, echo.port) as proxy:
        client = await connect(proxy.port)
        assert await round_trip(client, b"hello") == b"hello"
        assert await round_trip(client, b"x" * 200_000) == b"x" * 200_000
        assert proxy.connections_total == 1
        assert proxy.live_connections == 1


async def test_half_close_is_relayed(
    echo: Upstream, connect: Callable[[int], Awaitable[Client]]
) -> None:
    """A client FIN reaches the server, and the server's reply and FIN reach the client."""
    async with running_proxy(LOOPBACK, echo.port) as proxy:
        reader, writer = await connect(proxy.port)
        writer.write(b"last words")
        writer.write_eof()
        async with asyncio.timeout(5):
            assert await reader.read() == b"last words"


async def test_delay_adds_latency(
    echo: Upstream, connect: Callable[[int], Awaitable[Client]]
) -> None:
    """set_delay(0.2) slows a round trip to at least 0.2 s; set_delay(0) removes it."""
    async with running_proxy(LOOPBACK, echo.port) as proxy:
        client = await connect(proxy.port)
        proxy.set_delay(0.2)
        started = time.monotonic()
        assert await round_trip(client, b"slow") == b"slow"
        assert 0.2 <= time.monotonic() - started < 2
        proxy.set_delay(0)
        started = time.monotonic()
        assert await round_trip(client, b"fast") == b"fast"
        assert time.monotonic() - started < 0.2


async def test_cut_resets_live_connections(
    echo: Upstream, connect: Callable[[int], Awaitable[Client]]
) -> None:
    """cut() ends live connections; the proxy keeps accepting new ones."""
    async with running_proxy(LOOPBACK, echo.port) as proxy:
        client = await connect(proxy.port)
        assert await round_trip(client, b"hi") == b"hi"
        proxy.cut()
        assert await until_closed(client) == b""
        assert await round_trip(await connect(proxy.port), b"again") == b"again"


async def test_refuse_and_restore(
    echo: Upstream, connect: Callable[[int], Awaitable[Client]]
) -> None:
    """refuse(True) cuts live connections and resets new ones; refuse(False) restores."""
    async with running_proxy(LOOPBACK, echo.port) as proxy:
        live = await connect(proxy.port)
        assert await round_trip(live, b"hi") == b"hi"
        proxy.refuse(True)
        assert await until_closed(live) == b""
        with contextlib.suppress(ConnectionError):
            assert await until_closed(await connect(proxy.port), b"hello?") == b""
        proxy.refuse(False)
        assert await round_trip(await connect(proxy.port), b"back") == b"back"


async def test_blackhole_hangs_then_recovers(
    echo: Upstream, connect: Callable[[int], Awaitable[Client]]
) -> None:
    """While blackholed nothing comes back (reads time out); afterwards traffic flows."""
    async with running_proxy(LOOPBACK, echo.port) as proxy:
        reader, writer = client = await connect(proxy.port)
        assert await round_trip(client, b"hi") == b"hi"
        proxy.blackhole(True)
        writer.write(b"lost")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(65536), 0.3)
        proxy.blackhole(False)
        assert await round_trip(client, b"found") == b"found"
        assert b"lost" not in echo.received


async def test_reset_before_forwarding(
    recorder: Upstream, connect: Callable[[int], Awaitable[Client]]
) -> None:
    """reset_after(forward=False): the server never sees the chunk and the client is reset."""
    async with running_proxy(LOOPBACK, recorder.port) as proxy:
        proxy.reset_after(b"COMMIT", forward=False)
        client = await connect(proxy.port)
        assert await round_trip(client, b"BEGIN", 8) == b"OK:BEGIN"
        assert await until_closed(client, b"COMMIT") == b""
        await recorder.wait_until(lambda: recorder.closed == 1)
        assert recorder.received == b"BEGIN"
        assert proxy.triggered == 1


async def test_reset_after_forwarding(
    recorder: Upstream, connect: Callable[[int], Awaitable[Client]]
) -> None:
    """reset_after(forward=True): the server gets COMMIT, the client never hears back."""
    async with running_proxy(LOOPBACK, recorder.port) as proxy:
        proxy.reset_after(b"COMMIT", forward=True)
        client = await connect(proxy.port)
        assert await round_trip(client, b"BEGIN", 8) == b"OK:BEGIN"
        started = time.monotonic()
        assert await until_closed(client, b"COMMIT") == b""
        assert time.monotonic() - started < 0.5  # reset on the reply, not on the timeout
        assert recorder.received == b"BEGINCOMMIT"
        assert proxy.triggered == 1


async def test_trigger_fires_times_then_disarms(
    recorder: Upstream, connect: Callable[[int], Awaitable[Client]]
) -> None:
    """A times=2 trigger resets two connections, then the pattern passes through."""
    async with running_proxy(LOOPBACK, recorder.port) as proxy:
        proxy.reset_after(b"COMMIT", forward=False, times=2)
        for _ in range(2):
            assert await until_closed(await connect(proxy.port), b"COMMIT") == b""
        await proxy.wait_triggered(2)
        client = await connect(proxy.port)
        assert await round_trip(client, b"COMMIT", 9) == b"OK:COMMIT"
        assert proxy.triggered == 2


async def test_pattern_split_across_chunks(
    recorder: Upstream, connect: Callable[[int], Awaitable[Client]]
) -> None:
    """A pattern split over two client chunks still fires, withholding the second chunk."""
    async with running_proxy(LOOPBACK, recorder.port) as proxy:
        proxy.reset_after(b"COMMIT", forward=False)
        client = await connect(proxy.port)
        assert await round_trip(client, b"COM", 6) == b"OK:COM"
        assert await until_closed(client, b"MIT") == b""
        await recorder.wait_until(lambda: recorder.closed == 1)
        assert recorder.received == b"COM"


async def test_upstream_down_resets_client(connect: Callable[[int], Awaitable[Client]]) -> None:
    """With nothing listening upstream, the client's connection is reset."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        dead_port = sock.getsockname()[1]
    async with running_proxy(LOOPBACK, dead_port) as proxy:
        assert await until_closed(await connect(proxy.port), b"anyone?") == b""


async def test_stop_closes_everything(
    echo: Upstream, connect: Callable[[int], Awaitable[Client]]
) -> None:
    """stop() ends live connections and leaves no relay tasks behind."""
    proxy = FaultProxy(LOOPBACK, echo.port)
    await proxy.start()
    client = await connect(proxy.port)
    assert await round_trip(client, b"hi") == b"hi"
    await proxy.stop()
    assert proxy.live_connections == 0
    assert await until_closed(client) == b""
    with pytest.raises(ConnectionRefusedError):
        await connect(proxy.port)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


@pytest.fixture
def thread_echo_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer((LOOPBACK, 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size:
        chunk = sock.recv(size - len(got))
        assert chunk, "connection closed early"
        got += chunk
    return got


def _recv_until_closed(sock: socket.socket) -> bytes:
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            got += chunk
    return got


def test_threaded_proxy_from_sync_code(thread_echo_port: int) -> None:
    """ThreadedProxy serves plain blocking sockets and takes faults as sync calls."""
    with ThreadedProxy(LOOPBACK, thread_echo_port) as proxy:
        with socket.create_connection((LOOPBACK, proxy.port), timeout=5) as sock:
            sock.sendall(b"hello")
            assert _recv_exactly(sock, 5) == b"hello"
            proxy.cut()
            assert _recv_until_closed(sock) == b""
        proxy.reset_after(b"COMMIT", forward=False)
        with socket.create_connection((LOOPBACK, proxy.port), timeout=5) as sock:
            sock.sendall(b"COMMIT")
            proxy.wait_triggered(1, timeout=5)
            assert _recv_until_closed(sock) == b""
        assert proxy.triggered == 1
        assert proxy.connections_total == 2
    assert proxy.live_connections == 0


@contextlib.contextmanager
def _no_socket_left_open() -> Iterator[None]:
    """Fail if a socket, transport or stream writer was left for the garbage collector
    to close (each warns ResourceWarning) while the block ran; collects at the end."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, f"{len(leaks)} socket(s) left open, e.g. {leaks[:2]}"


def test_stopping_while_clients_arrive_leaves_no_socket_open(thread_echo_port: int) -> None:
    """Connections that arrive as a ThreadedProxy stops (a consumer killed while it was
    reconnecting, say) are all closed by the proxy, none left to the garbage collector: on
    3.11 one accepted just before Server.close(), or one whose relay task was cancelled
    before it ran, kept its socket open, and the ResourceWarning failed a fault scenario."""
    with _no_socket_left_open():
        for _ in range(5):
            proxy = ThreadedProxy(LOOPBACK, thread_echo_port)
            proxy.start()
            for _ in range(20):
                with socket.create_connection((LOOPBACK, proxy.port), timeout=5):
                    pass
            proxy.stop()
            gc.collect()


async def test_stop_closes_connections_that_are_just_ending(echo: Upstream) -> None:
    """stop() lands at every moment of connections that are ending by themselves (client
    gone, server gone, the relay tidying up): each one is closed, none left open. A stop()
    that cancelled a relay while it was closing its two sockets used to leave both open."""
    with _no_socket_left_open():
        for spins in range(60):
            proxy = FaultProxy(LOOPBACK, echo.port)
            await proxy.start()
            for _ in range(4):
                _, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
                writer.close()  # the client leaves at once: the relay ends by itself
            for _ in range(spins % 30):  # stop() after a different number of loop steps
                await asyncio.sleep(0)
            await proxy.stop()
            gc.collect()
