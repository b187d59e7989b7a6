"""The member's HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

A few GET routes on asyncio's own server, in the service's event loop (no thread, no
framework): a handler sees the live state without locks. Each connection answers one
request and closes, which is all Prometheus and container health checks need.

The endpoint may face anything that reaches its port, so what a client can hold is
bounded: at most ``max_connections`` at once (one more is answered 503 and closed at
once, without reading it), each with ``read_timeout_s`` to send its request, a request
line and header lines of at most 64 KiB each (asyncio's line limit), at most 100 headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable

import structlog

from consumer.errors import EndpointError

log = structlog.get_logger(__name__)

Response = tuple[int, str, bytes]  # status, content type, body
Route = Callable[[], Awaitable[Response]]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_READ_TIMEOUT_S = 5.0
_MAX_HEADER_LINES = 100
# Health checks and scrapes are a handful a minute; far more at once is not a monitor.
MAX_CONNECTIONS = 32
_REFUSE_READ_S = 0.1
_REFUSE_READ_BYTES = 64 * 1024
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n"
)


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        routes: dict[str, Route],
        *,
        max_connections: int = MAX_CONNECTIONS,
        read_timeout_s: float = _READ_TIMEOUT_S,
    ) -> None:
        self._host = host
        self._port = port
        self._routes = routes
        self._max_connections = max_connections
        self._read_timeout_s = read_timeout_s
        self._open = 0
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.refused = 0  # connections turned away at the limit, for tests and logs
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (the asked one, or the kernel's choice for port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, self._host, self._port)
        except OSError as exc:
            raise EndpointError(
                f"METRICS_PORT: cannot listen on {self._host}:{self._port} "
                f"({exc.strerror or exc}); another member on this host? Give each member "
                "its own METRICS_PORT (9108, 9109, ...), or 0 to turn the endpoint off"
            ) from exc
        log.info("http.listening", host=self._host, port=self.port, paths=sorted(self._routes))

    async def stop(self) -> None:
        """Stop listening and end the connections in flight. Their handlers are not
        cancelled (on Python 3.11 asyncio logs a cancelled connection handler as an
        error): their sockets are closed, and each handler ends at its next read."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        handlers = [t for t in self._handlers if not t.done()]
        if handlers:
            await asyncio.wait(handlers, timeout=self._read_timeout_s)
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self._max_connections:
            await self._refuse(reader, writer)
            return
        self._open += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._writers.add(writer)
        try:
            await self._answer(reader, writer)
        finally:
            self._open -= 1
            self._writers.discard(writer)
            if task is not None:
                self._handlers.discard(task)

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Over the limit: say 503 without waiting for the request. What the client sent
        already is read (briefly) first: closing a socket with unread data resets it, and
        the client would see a reset instead of the answer."""
        self.refused += 1
        with contextlib.suppress(TimeoutError, ConnectionError, ValueError):
            await asyncio.wait_for(reader.read(_REFUSE_READ_BYTES), _REFUSE_READ_S)
        try:
            writer.write(_BUSY)
            await asyncio.wait_for(writer.drain(), _REFUSE_READ_S)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path = await asyncio.wait_for(_read_request(reader), self._read_timeout_s)
            status, ctype, body = await self._respond(method, path)
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            writer.write(head if method == "HEAD" else head + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError):
            pass  # a client that went away or spoke nonsense: nothing to answer
        finally:
            writer.close()

    async def _respond(self, method: str, path: str) -> Response:
        route = self._routes.get(path.split("?", 1)[0])
        if route is None:
            return 404, "text/plain", b"not found\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"GET only\n"
        return await route()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    line = (await reader.readline()).decode("latin-1").split()
    if len(line) < 2:
        raise ValueError("not an HTTP request")
    for _ in range(_MAX_HEADER_LINES):
        if (await reader.readline()) in (b"\r\n", b"\n", b""):
            break
    return line[0].upper(), line[1]


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
