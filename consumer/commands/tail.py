"""`tail`: print OUTBOUND_TOPIC's events without joining a group."""

from __future__ import annotations

import argparse
import asyncio

from consumer.commands import KAFKA, describe
from consumer.settings import Settings


def add_arguments(parser: argparse.ArgumentParser, summary: str) -> None:
    describe(
        parser,
        summary,
        reads=f"{KAFKA}, OUTBOUND_TOPIC",
        details="Reads without joining a group (nobody's offsets move). A line shows where "
        "the event sits, its event_id, number, sender, type and wamid; --json prints the "
        "whole event (it holds message content: personal data).",
        examples="  python -m consumer tail\n"
        "  python -m consumer tail --json --from-end\n"
        "  python -m consumer tail --idle-exit 6",
    )
    parser.add_argument("--json", action="store_true", help="print each event as one JSON line")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--from-beginning",
        dest="from_beginning",
        action="store_true",
        default=True,
        help="start at the oldest event (default)",
    )
    where.add_argument(
        "--from-end",
        dest="from_beginning",
        action="store_false",
        help="only events published from now on",
    )
    parser.add_argument(
        "--idle-exit",
        type=float,
        metavar="SECONDS",
        help="exit after this long without a new event (default: follow forever; 6 or more "
        "to be sure nothing is missed: a broker may show its newest records late)",
    )
    parser.add_argument("--topic", help="topic (default: OUTBOUND_TOPIC)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.tools.tail import tail

    try:
        asyncio.run(
            tail(
                settings,
                topic=args.topic,
                from_beginning=args.from_beginning,
                idle_exit_s=args.idle_exit,
                as_json=args.json,
            )
        )
    except KeyboardInterrupt:
        return 0
    return 0
