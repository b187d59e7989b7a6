"""`demo`: the whole flow on embedded services, with a summary."""

from __future__ import annotations

import argparse

from consumer.commands import describe
from consumer.settings import Settings


def add_arguments(parser: argparse.ArgumentParser, summary: str) -> None:
    describe(
        parser,
        summary,
        reads="REDIS_URL (the machine's Redis if it answers, else one started for the demo)",
        details="Starts a broker, uses or starts Redis, keeps the database in a temporary "
        "SQLite file, runs two members, sends Meta's samples and synthetic webhooks several "
        "times each plus a few poison records, then checks what came out.",
        examples="  python -m consumer demo\n"
        "  python -m consumer demo --consumers 3 --messages 1000",
    )
    parser.add_argument("--consumers", type=int, default=2, help="consumer processes (default 2)")
    parser.add_argument("--partitions", type=int, default=4, help="inbound partitions (default 4)")
    parser.add_argument(
        "--duplicates", type=int, default=2, help="extra copies of each webhook (default 2)"
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=300,
        help="synthetic unique messages besides the samples (default 300)",
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.tools import demo

    return demo.main(
        settings,
        consumers=args.consumers,
        partitions=args.partitions,
        duplicates=args.duplicates,
        messages=args.messages,
    )
