"""`health`: ask a running member's /readyz or /healthz, for container checks."""

from __future__ import annotations

import argparse
import time
from urllib.parse import urlsplit

from consumer.commands import describe
from consumer.errors import ConfigError
from consumer.settings import Settings


def add_arguments(parser: argparse.ArgumentParser, summary: str) -> None:
    describe(
        parser,
        summary,
        reads="METRICS_HOST, METRICS_PORT (the member's endpoint)",
        details="Readiness (/readyz): the member holds an assignment, its group "
        "coordinator, Redis and the database answer. Liveness (/healthz, --live): its "
        "poll loop keeps coming round. For container health checks.",
        examples="  python -m consumer health\n"
        "  python -m consumer health --live --url http://127.0.0.1:9109",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="liveness (/healthz: the poll loop moves) instead of readiness (/readyz)",
    )
    parser.add_argument(
        "--url",
        help="the member's base URL (default http://METRICS_HOST:METRICS_PORT, "
        "with 127.0.0.1 for a wildcard host)",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="ask again every half second until healthy, for up to this long (a member "
        "just started)",
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.http import probe

    if not args.timeout > 0:
        raise ConfigError("--timeout", f"must be more than 0 seconds, got {args.timeout:g}")
    base = args.url
    if base is None:
        if settings.metrics_port == 0:
            raise ConfigError("METRICS_PORT", "is 0 (the endpoint is off): pass --url")
        host = settings.metrics_host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - a wildcard bind
        base = f"http://{host}:{settings.metrics_port}"
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("--url", f"{base!r} is not an http://host:port URL")
    if args.wait < 0:
        raise ConfigError("--wait", "must be 0 or more seconds")
    url = base.rstrip("/") + ("/healthz" if args.live else "/readyz")
    deadline = time.monotonic() + args.wait
    ok, detail = probe(url, args.timeout)
    while not ok and time.monotonic() < deadline:
        time.sleep(0.5)
        ok, detail = probe(url, args.timeout)
    print(detail)
    return 0 if ok else 1
