"""`health`: ask a running member's /readyz or /healthz, for container checks."""

from __future__ import annotations

import argparse
import json
import sys
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
    started = time.monotonic()
    deadline = started + args.wait
    said = started
    ok, detail = probe(url, args.timeout)
    while not ok and time.monotonic() < deadline:
        time.sleep(0.5)
        ok, detail = probe(url, args.timeout)
        if not ok and time.monotonic() - said >= PROGRESS_EVERY_S:
            said = time.monotonic()
            print(f"health: not yet, after {said - started:.0f} s: {why(detail)}", file=sys.stderr)
    print(detail)
    if not ok and args.wait:
        waited = time.monotonic() - started
        print(f"health: gave up after {waited:.0f} s: {why(detail)}", file=sys.stderr)
    return 0 if ok else 1


# How often `health --wait` says it is still waiting (on stderr).
PROGRESS_EVERY_S = 5.0


def why(detail: str) -> str:
    """What a failed check said, in one line: each failing check's error (`kafka: no
    partition assignment yet (joining the group)`), or the text as it came."""
    try:
        state = json.loads(detail)
    except ValueError:
        return detail.splitlines()[0] if detail else "no answer"
    if not isinstance(state, dict):
        return detail
    if state.get("stopping"):
        return "the member is stopping"
    checks = state.get("checks")
    if isinstance(checks, dict):
        failing = [
            f"{name}: {check.get('error', 'not ok')}"
            for name, check in checks.items()
            if isinstance(check, dict) and not check.get("ok")
        ]
        if failing:
            return "; ".join(failing)
    if "seconds_since_poll" in state:
        return f"no poll loop turn for {state['seconds_since_poll']} s"
    return str(state.get("error", detail))
