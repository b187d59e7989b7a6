"""The member's HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

A few GET routes on asyncio's own server, in the service's event loop (no thread, no
framework): a handler sees the live state without locks. Each connection answers one
request and closes, which is all Prometheus and container health checks need.

The endpoint may face anything that reaches its port, and a liveness probe must still be
answered while other clients hold connections open without finishing their request (a
slowloris), or flood it. So:

- A connection is a protocol object, not a task: its request head (request line and
  headers, at most ``_MAX_HEAD_BYTES``) is parsed as the bytes arrive and must be complete
  within ``read_timeout_s`` of connecting; the answer must be sent within
  ``write_timeout_s``. Nothing else is read.
- At most ``max_connections`` are open, and a new one is always taken: at the limit the
  *oldest* connection that has not sent its whole request head yet is closed to make room
  (if every one has, the oldest of all). A probe sends its request at once and is answered
  a loop turn or two later, so only ``max_connections`` newer connections within those
  milliseconds could push it out; clients that send nothing, or a byte a second, only push
  out each other. Memory stays bounded by the limit whatever the number of clients.
- Requests for a path whose answer is being computed share it: one readiness check, one
  render of the metrics page, however many ask at once. A flood of complete requests
  costs a parse and a write each, not a round of Redis, database and Kafka checks each.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable

import structlog

from consumer.errors import EndpointError

log = structlog.get_logger(__name__)

Response = tuple[int, str, bytes]  # status, content type, body
Route = Callable[[], Awaitable[Response]]

_REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
# Health checks and scrapes are a handful a minute. At most this many connections are
# open (each holding at most _MAX_HEAD_BYTES of request, or one answer being sent); more
# than asyncio takes in (100 a loop turn) between a probe's connect and its request, so a
# flood of newcomers does not push the probe out before its request is read.
MAX_CONNECTIONS = 128
# From the connection to the end of the request head. A probe or a scrape sends its
# whole head (a few hundred bytes, one TCP segment) right after connecting: this is for
# slow links and retransmissions, not for a client's thinking time. Holding a connection
# this long costs a probe nothing (the oldest unfinished connection gives way).
_READ_TIMEOUT_S = 5.0
# From the answer being queued to it being sent (the metrics page is tens of KB).
_WRITE_TIMEOUT_S = 10.0
_MAX_HEAD_BYTES = 32 * 1024
_HEAD_END = re.compile(rb"\n\r?\n")
_EVICTION_LOG_EVERY_S = 60.0


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        routes: dict[str, Route],
        *,
        max_connections: int = MAX_CONNECTIONS,
        read_timeout_s: float = _READ_TIMEOUT_S,
        write_timeout_s: float = _WRITE_TIMEOUT_S,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._host = host
        self._port = port
        self._routes = routes
        self._max_connections = max_connections
        self.read_timeout_s = read_timeout_s
        self.write_timeout_s = write_timeout_s
        # Open connections in the order they came, by phase: still reading their request
        # head, or answering (waiting for the route, or writing).
        self._reading: dict[_Connection, None] = {}
        self._answering: dict[_Connection, None] = {}
        # Per path: the connections waiting for the answer being computed.
        self._waiting: dict[str, dict[_Connection, None]] = {}
        self._routes_running: set[asyncio.Task[None]] = set()
        self.evicted = 0  # connections closed to make room, for tests and logs
        self._evicted_logged = 0
        self._eviction_logged_at = -_EVICTION_LOG_EVERY_S
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (the asked one, or the kernel's choice for port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def _open(self) -> int:
        return len(self._reading) + len(self._answering)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Connection(self), self._host, self._port, start_serving=False
            )
        except OSError as exc:
            raise EndpointError(
                f"METRICS_PORT: cannot listen on {self._host}:{self._port} "
                f"({exc.strerror or exc}); another member on this host? Give each member "
                "its own METRICS_PORT (9108, 9109, ...), or 0 to turn the endpoint off"
            ) from exc
        await self._server.start_serving()
        log.info("http.listening", host=self._host, port=self.port, paths=sorted(self._routes))

    async def stop(self) -> None:
        """Stop listening, drop the connections in flight and the answers being computed."""
        if self._server is None:
            return
        self._server.close()
        for conn in [*self._reading, *self._answering]:
            conn.drop()
        running = list(self._routes_running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    # -- connections (called by _Connection) --------------------------------------------

    def _admit(self, conn: _Connection) -> bool:
        if self._server is None or not self._server.is_serving():
            return False  # accepted as stop() began
        if self._open >= self._max_connections:
            victim = next(iter(self._reading), None) or next(iter(self._answering))
            self._evict(victim)
        self._reading[conn] = None
        return True

    def _evict(self, victim: _Connection) -> None:
        victim.drop()
        self.evicted += 1
        now = time.monotonic()
        if now - self._eviction_logged_at >= _EVICTION_LOG_EVERY_S:
            log.warning(
                "http.connections_evicted",
                evicted=self.evicted - self._evicted_logged,
                max_connections=self._max_connections,
                hint="more clients hold the metrics port open than any monitor would",
            )
            self._evicted_logged = self.evicted
            self._eviction_logged_at = now

    def _forget(self, conn: _Connection) -> None:
        self._reading.pop(conn, None)
        self._answering.pop(conn, None)
        if conn.waits_for is not None:
            self._waiting.get(conn.waits_for, {}).pop(conn, None)

    def _request(self, conn: _Connection, method: str, target: str) -> None:
        """`conn` sent its request head: answer it, or wait for its route's answer."""
        self._reading.pop(conn, None)
        self._answering[conn] = None
        path = target.split("?", 1)[0]
        route = self._routes.get(path)
        if route is None:
            conn.respond((404, "text/plain", b"not found\n"))
            return
        if method not in ("GET", "HEAD"):
            conn.respond((405, "text/plain", b"GET only\n"))
            return
        conn.waits_for = path
        waiting = self._waiting.get(path)
        if waiting is None:
            waiting = self._waiting[path] = {}
            task = asyncio.get_running_loop().create_task(self._run(path, route))
            self._routes_running.add(task)
            task.add_done_callback(self._routes_running.discard)
        waiting[conn] = None

    async def _run(self, path: str, route: Route) -> None:
        try:
            response = await route()
        except Exception:  # one broken page must not take the endpoint down
            log.exception("http.route_failed", path=path)
            response = (500, "text/plain", b"internal error\n")
        finally:
            waiting = self._waiting.pop(path, {})
        for conn in waiting:
            conn.respond(response)


class _Connection(asyncio.Protocol):
    """One client: its request head as it arrives, then one answer."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._request_line: tuple[str, str] | None = None  # method, target
        self._timer: asyncio.TimerHandle | None = None
        self._done = False  # the request head is read (or the connection dropped)
        self.waits_for: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - a stream server's
        self._transport = transport
        if not self._server._admit(self):
            self.drop()
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._server.read_timeout_s, self.drop)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        start = max(0, len(self._head) - 2)
        self._head += data
        if self._request_line is None:
            end = self._head.find(b"\n")
            if end < 0:
                if len(self._head) > _MAX_HEAD_BYTES:
                    self.drop()
                return
            words = bytes(self._head[:end]).decode("latin-1").split()
            if len(words) < 2:
                self.drop()  # not HTTP: nothing to answer
                return
            self._request_line = (words[0].upper(), words[1])
            start = end
        if _HEAD_END.search(self._head, start) is not None:
            self._complete()
        elif len(self._head) > _MAX_HEAD_BYTES:
            self.drop()

    def eof_received(self) -> bool | None:
        if self._done:
            return True  # keep the transport open for the answer
        if self._request_line is not None:
            self._complete()  # the client sent its request and shut its side
            return True
        self.drop()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._done = True
        self._server._forget(self)

    def _complete(self) -> None:
        assert self._request_line is not None  # noqa: S101 - only called once it is read
        assert self._transport is not None  # noqa: S101
        self._done = True
        self._head = bytearray()
        self._cancel_timer()
        self._transport.pause_reading()
        self._server._request(self, *self._request_line)

    def respond(self, response: Response) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._request_line is None:
            return
        status, ctype, body = response
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        transport.write(head if self._request_line[0] == "HEAD" else head + body)
        if transport.get_write_buffer_size():
            # A client that does not read: the rest is dropped after write_timeout_s.
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._server.write_timeout_s, self.drop)
        transport.close()

    def drop(self) -> None:
        """Close at once, unanswered (or with what was written so far)."""
        self._cancel_timer()
        self._done = True
        self._server._forget(self)
        if self._transport is not None:
            self._transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def probe(url: str, timeout_s: float) -> tuple[bool, str]:
    """GET a health URL: (healthy, what it said or why it could not be asked)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - operator's URL
            return resp.status == 200, resp.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return False, exc.read().decode(errors="replace").strip() or f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"cannot reach {url}: {reason}"
