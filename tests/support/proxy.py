"""A small asyncio TCP proxy on loopback for fault injection in tests.

There is no Toxiproxy, Docker or ``tc netem`` here, so tests that need a flaky network
put a :class:`FaultProxy` between a client and a real service (Redis, PostgreSQL, the
Kafka-protocol broker) and flip faults on and off while traffic flows:

* :meth:`FaultProxy.set_delay` - latency on every chunk, both directions;
* :meth:`FaultProxy.cut` - RST every live connection;
* :meth:`FaultProxy.refuse` - accept-then-RST new connections (and cut live ones);
* :meth:`FaultProxy.blackhole` - swallow bytes both ways, so peers hang;
* :meth:`FaultProxy.reset_after` - RST when the client sends a pattern, either before
  the server sees it or after the server has it but before the client hears back (an
  indeterminate commit).

Every fault takes effect on live and new connections at once. The proxy only ever binds
127.0.0.1.

:func:`running_proxy` is the async context manager for tests on the test's own loop;
:class:`ThreadedProxy` hosts a proxy on a private loop in a daemon thread for sync tests
and for tests whose clients are separate consumer processes, so the proxy keeps serving
while the test blocks in ``time.sleep``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = ["LOOPBACK", "FaultProxy", "ThreadedProxy", "running_proxy"]

LOOPBACK = "127.0.0.1"
_CHUNK = 65536
_FORWARD_GRACE = 0.5  # how long reset_after(forward=True) waits for the server's reply
_T = TypeVar("_T")


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s connection abruptly: SO_LINGER 0 makes the kernel send an RST."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _close(*writers: asyncio.StreamWriter) -> None:
    """Close connections politely (FIN), ignoring peers that already left. Every close()
    happens before the first await: a caller cancelled while waiting (stop() cancels
    relays) must not leave a socket open, as a gather of one _close task per writer did
    when the cancel came before those tasks started."""
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@dataclass
class _Trigger:
    pattern: bytes
    forward: bool
    remaining: int


class _Conn:
    """One proxied connection: a client socket, an upstream socket, two relay tasks."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.client_reader, self.client_writer = client
        self.upstream_reader, self.upstream_writer = upstream
        self.tasks: list[asyncio.Task[None]] = []
        self.dead = False
        # reset_after(forward=True): nothing more goes server -> client once this is set.
        self.mute_replies = False
        self.reply_seen = asyncio.Event()
        self._tail = b""  # end of the client's previous chunk, for patterns across chunks

    async def run(self) -> None:
        """Relay both directions until both end (or the connection is reset)."""
        self.tasks = [
            asyncio.create_task(self._pump(self.client_reader, self.upstream_writer, True)),
            asyncio.create_task(self._pump(self.upstream_reader, self.client_writer, False)),
        ]
        try:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            if not self.dead:
                self.dead = True
                await _close(self.client_writer, self.upstream_writer)

    def reset(self) -> None:
        """RST both sides and stop relaying."""
        if self.dead:
            return
        self.dead = True
        _rst(self.client_writer)
        _rst(self.upstream_writer)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, to_server: bool
    ) -> None:
        try:
            await self._relay(src, dst, to_server)
        except (OSError, EOFError):
            self.reset()

    async def _relay(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, to_server: bool
    ) -> None:
        while not self.dead:
            data = await src.read(_CHUNK)
            if not data:
                self._eof(dst, to_server)
                return
            if to_server:
                if await self._client_sent(data):
                    return
            elif self.mute_replies:
                self.reply_seen.set()
            elif not self.proxy.blackholed:
                await self._send(dst, data, to_server)

    def _eof(self, dst: asyncio.StreamWriter, to_server: bool) -> None:
        """One side half-closed: pass the FIN on, unless it is lost to a fault."""
        muted = not to_server and self.mute_replies
        if not to_server:
            self.reply_seen.set()
        if not (self.proxy.blackholed or muted or self.dead) and dst.can_write_eof():
            dst.write_eof()

    async def _client_sent(self, data: bytes) -> bool:
        """Relay a client chunk to the server; True once the connection is finished."""
        proxy = self.proxy
        if proxy.blackholed:
            return False
        window = self._tail + data
        trigger = proxy._match(window, len(self._tail))
        keep = proxy._longest_pattern() - 1
        self._tail = window[-keep:] if keep > 0 else b""
        if trigger is not None and not trigger.forward:
            self.reset()
            return True
        if trigger is not None:
            self.mute_replies = True  # before the server can possibly answer
        await self._send(self.upstream_writer, data, True)
        if trigger is not None:
            await self._reset_after_reply()
            return True
        return False

    async def _send(self, dst: asyncio.StreamWriter, data: bytes, to_server: bool) -> None:
        """Write ``data`` to ``dst`` after the configured delay, unless a fault intervenes."""
        proxy = self.proxy
        if proxy.delay > 0:
            await asyncio.sleep(proxy.delay)
        if self.dead or proxy.blackholed or (not to_server and self.mute_replies):
            return
        dst.write(data)
        await dst.drain()

    async def _reset_after_reply(self) -> None:
        """The server has the chunk; give it a moment to act, then hang up on the client."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.reply_seen.wait(), _FORWARD_GRACE)
        if self.dead:
            return
        self.dead = True
        _rst(self.client_writer)
        self.upstream_writer.close()
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()


class FaultProxy:
    """Forwards 127.0.0.1:<port> to an upstream host:port, with injectable faults."""

    def __init__(self, upstream_host: str, upstream_port: int, *, listen_port: int = 0) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_port = listen_port
        self.port = 0
        self.delay = 0.0
        self.blackholed = False
        self.refusing = False
        self.triggered = 0
        self.connections_total = 0
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        # One relay task per accepted connection, with its client side, from the moment
        # the connection is accepted (see _accepted).
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._triggers: list[_Trigger] = []
        self._waiters: set[asyncio.Event] = set()
        self._generation = 0  # bumped by cut(): connections still dialing upstream die too
        self._stopping = False

    def __repr__(self) -> str:
        return (
            f"FaultProxy({LOOPBACK}:{self.port} -> {self.upstream_host}:{self.upstream_port},"
            f" live={self.live_connections})"
        )

    @property
    def live_connections(self) -> int:
        """Connections currently relaying (or dialing upstream)."""
        return len(self._handlers)

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, for settings that take host:port."""
        return f"{LOOPBACK}:{self.port}"

    async def start(self) -> None:
        """Listen on 127.0.0.1 (port 0 picks a free one) and set :attr:`port`."""
        if self._server is not None:
            raise RuntimeError("proxy already started")
        self._stopping = False
        self._server = await asyncio.start_server(self._accepted, LOOPBACK, self.listen_port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every connection; wait for all relay tasks to finish."""
        self._stopping = True
        server, self._server = self._server, None
        if server is not None:
            # Stop accepting before closing the listener, and let what was accepted reach
            # _accepted (which now turns it away; two loop iterations, a third for the
            # sockets to close): on 3.11 a connection accepted in the iteration before
            # Server.close() fails an assertion in Server._attach, and its socket leaks.
            loop = asyncio.get_running_loop()
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())
            for _ in range(3):
                await asyncio.sleep(0)
            server.close()
        while self._handlers:
            for conn in list(self._conns):
                conn.reset()
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await asyncio.sleep(0)  # the sockets just reset close on the next iteration
        if server is not None:
            await server.wait_closed()

    # -- faults ---------------------------------------------------------------------

    def set_delay(self, seconds: float) -> None:
        """Add ``seconds`` of latency to every chunk in both directions (0 turns it off)."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self.delay = seconds

    def cut(self) -> None:
        """Reset (RST) every live connection, including ones still dialing upstream."""
        self._generation += 1
        for conn in list(self._conns):
            conn.reset()

    def refuse(self, on: bool) -> None:
        """While on, reset new connections as soon as they are accepted; on also cuts."""
        self.refusing = on
        if on:
            self.cut()

    def blackhole(self, on: bool) -> None:
        """While on, swallow bytes (and FINs) in both directions, so peers hang."""
        self.blackholed = on

    def reset_after(self, pattern: bytes, *, forward: bool, times: int = 1) -> None:
        """Arm a trigger that resets a connection whose client sends ``pattern``.

        ``forward=False``: reset both sides without forwarding that chunk, so the server
        never sees it. ``forward=True``: forward the chunk, drop everything the server
        sends back, wait for its next reply (at most 0.5 s), then RST the client and close
        the upstream - the server acted, the client never learns the outcome.
        The trigger fires ``times`` times, then disarms. :attr:`triggered` counts firings.
        """
        if not pattern:
            raise ValueError("pattern must not be empty")
        if times < 1:
            raise ValueError("times must be >= 1")
        self._triggers.append(_Trigger(pattern, forward, times))

    def clear_triggers(self) -> None:
        """Disarm every pending :meth:`reset_after` trigger."""
        self._triggers.clear()

    def heal(self) -> None:
        """Turn every fault off: no delay, no refusing, no blackhole, no triggers."""
        self.set_delay(0)
        self.refuse(False)
        self.blackhole(False)
        self.clear_triggers()

    async def wait_triggered(self, count: int = 1) -> None:
        """Wait until :attr:`triggered` reaches ``count`` (bound it with asyncio.timeout)."""
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        try:
            while self.triggered < count:
                await waiter.wait()
                waiter.clear()
        finally:
            self._waiters.discard(waiter)

    # -- internals ------------------------------------------------------------------

    def _longest_pattern(self) -> int:
        return max((len(t.pattern) for t in self._triggers), default=0)

    def _match(self, window: bytes, new_from: int) -> _Trigger | None:
        """The first armed trigger whose pattern ends in ``window[new_from:]`` (it fires)."""
        for trigger in self._triggers:
            if window.find(trigger.pattern, max(0, new_from - len(trigger.pattern) + 1)) >= 0:
                trigger.remaining -= 1
                if trigger.remaining <= 0:
                    self._triggers.remove(trigger)
                self.triggered += 1
                for waiter in self._waiters:
                    waiter.set()
                return trigger
        return None

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """start_server's callback, called inside connection_made: tracks the connection
        from its first moment. (Not a coroutine: start_server would run it as a task of
        its own, and a task cancelled before its first step - by stop(), or by the
        shutdown of a ThreadedProxy's loop - never runs, so nothing closed its socket.)"""
        if self._stopping:
            _rst(writer)
            return
        self.connections_total += 1
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._handlers[task] = writer
        task.add_done_callback(self._served)

    def _served(self, task: asyncio.Task[None]) -> None:
        writer = self._handlers.pop(task)
        if not writer.transport.is_closing():  # cancelled before it could start
            _rst(writer)
        if not task.cancelled() and (exc := task.exception()) is not None:
            task.get_loop().call_exception_handler(
                {"message": f"{self!r}: relaying a connection failed", "exception": exc}
            )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing or self._stopping:
            _rst(writer)
            return
        generation = self._generation
        try:
            upstream = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            _rst(writer)  # upstream down: the client sees what it would see direct
            return
        except BaseException:
            _rst(writer)
            raise
        if self.refusing or self._stopping or generation != self._generation:
            _rst(writer)
            _rst(upstream[1])
            return
        conn = _Conn(self, (reader, writer), upstream)
        self._conns.add(conn)
        try:
            await conn.run()
        finally:
            self._conns.discard(conn)
            conn.reset()


@contextlib.asynccontextmanager
async def running_proxy(
    upstream_host: str, upstream_port: int, *, listen_port: int = 0
) -> AsyncIterator[FaultProxy]:
    """``async with running_proxy(host, port) as proxy:`` - started, and stopped after."""
    proxy = FaultProxy(upstream_host, upstream_port, listen_port=listen_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


class ThreadedProxy:
    """A :class:`FaultProxy` on its own event loop in a daemon thread, driven by sync calls.

    For sync tests and for tests whose clients are consumer *processes*: the proxy keeps
    serving while the test blocks. Every fault method returns once the fault is in place.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_port: int = 0,
        call_timeout: float = 10.0,
    ) -> None:
        self.proxy = FaultProxy(upstream_host, upstream_port, listen_port=listen_port)
        self.call_timeout = call_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"Threaded{self.proxy!r}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def address(self) -> str:
        return self.proxy.address

    @property
    def triggered(self) -> int:
        return self.proxy.triggered

    @property
    def connections_total(self) -> int:
        return self.proxy.connections_total

    @property
    def live_connections(self) -> int:
        return self.proxy.live_connections

    def start(self) -> None:
        """Start the loop thread and the proxy; returns once it is listening."""
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(
            target=self._run, name=f"fault-proxy-{self.proxy.upstream_port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(self.call_timeout):
            raise TimeoutError("proxy thread did not start")
        if self._error is not None:
            self._thread.join(self.call_timeout)
            self._thread = None
            raise self._error

    def stop(self) -> None:
        """Stop the proxy (closing every connection) and join the thread."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already gone
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(self.call_timeout)
        if thread.is_alive():
            raise TimeoutError("proxy thread did not stop")
        self._thread = self._loop = self._stop_event = None

    def set_delay(self, seconds: float) -> None:
        self._call(lambda: self.proxy.set_delay(seconds))

    def cut(self) -> None:
        self._call(self.proxy.cut)

    def refuse(self, on: bool) -> None:
        self._call(lambda: self.proxy.refuse(on))

    def blackhole(self, on: bool) -> None:
        self._call(lambda: self.proxy.blackhole(on))

    def reset_after(self, pattern: bytes, *, forward: bool, times: int = 1) -> None:
        self._call(lambda: self.proxy.reset_after(pattern, forward=forward, times=times))

    def clear_triggers(self) -> None:
        self._call(self.proxy.clear_triggers)

    def heal(self) -> None:
        self._call(self.proxy.heal)

    def wait_triggered(self, count: int = 1, timeout: float = 10.0) -> None:
        """Block until the proxy's :attr:`triggered` reaches ``count`` (or TimeoutError)."""

        async def wait() -> None:
            async with asyncio.timeout(timeout):
                await self.proxy.wait_triggered(count)

        self._submit(wait(), timeout + self.call_timeout)

    # -- internals ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        await self.proxy.start()
        try:
            self._ready.set()
            await self._stop_event.wait()
        finally:
            await self.proxy.stop()

    def _call(self, fn: Callable[[], None]) -> None:
        async def run() -> None:
            fn()

        self._submit(run(), self.call_timeout)

    def _submit(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            coro.close()
            raise RuntimeError("proxy not running")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("call the FaultProxy directly from the proxy's own loop")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)
