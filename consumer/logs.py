"""structlog setup: JSON lines in production, a readable console on a terminal.

Event names are stable and dotted (``batch.done``, ``record.dead_lettered``); context is
bound per record (topic, partition, offset, phone_number_id, wamid). Message bodies and
contact names are personal data and are never logged at info level.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog


def _json_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was set up:
    loggers are cached on first use, and a replaced stderr (a test's capture, a
    daemoniser) must not leave them writing to a closed file."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def uses_json(fmt: str = "auto", stream: TextIO | None = None) -> bool:
    """Whether the log lines are JSON: LOG_FORMAT=json, or auto and the stream (stderr
    by default) is not a terminal."""
    return fmt == "json" or (fmt == "auto" and not (stream or sys.stderr).isatty())


def configure(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog (and the stdlib loggers of our libraries) once, at the edge."""
    out: Any = stream or _Stderr()
    tty = (stream or sys.stderr).isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json_dumps)
        if uses_json(fmt, stream)
        else structlog.dev.ConsoleRenderer(colors=tty)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    # aiokafka and friends log through the stdlib: keep their warnings, drop chatter.
    logging.basicConfig(
        stream=out, level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
