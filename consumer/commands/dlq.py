"""`dlq list` and `dlq replay`: the dead letters of DLQ_TOPIC."""

from __future__ import annotations

import argparse
import asyncio
import sys

from consumer.commands import KAFKA, describe
from consumer.settings import Settings


def add_arguments(parser: argparse.ArgumentParser, summary: str) -> None:
    from consumer.records import Reason

    describe(
        parser,
        summary,
        reads=f"{KAFKA}, DLQ_TOPIC, INBOUND_TOPIC (replay sends there)",
        details="`dlq list --help` and `dlq replay --help` say more. Reading moves nobody's "
        "offsets; bodies are personal data and are not printed unless --show-body.",
        examples="  python -m consumer dlq list\n"
        "  python -m consumer dlq list --reason not_json --since 2h\n"
        "  python -m consumer dlq replay --reason signature_invalid --dry-run",
    )
    actions = parser.add_subparsers(dest="dlq_command", required=True)
    filters = argparse.ArgumentParser(add_help=False)
    pick = filters.add_argument_group("filters (kinds combine with AND, repeats with OR)")
    pick.add_argument(
        "--reason",
        action="append",
        default=[],
        choices=[str(r) for r in Reason],
        help="why it was dead-lettered (the dlq.reason header)",
    )
    pick.add_argument(
        "--since",
        metavar="WHEN",
        help="dead-lettered at or after WHEN: ISO-8601 "
        "(2026-05-09T03:00:00Z; UTC if no zone) or a duration ago (30m, 2h, 7d, 1h30m)",
    )
    pick.add_argument("--until", metavar="WHEN", help="dead-lettered before WHEN (same forms)")
    pick.add_argument(
        "--source-partition",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="came from this partition of the inbound topic",
    )
    pick.add_argument(
        "--offset",
        action="append",
        default=[],
        metavar="P:O",
        help="the DLQ record at partition:offset (the first column of `dlq list`)",
    )
    pick.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="at most N (in read order: each partition oldest first)",
    )
    filters.add_argument(
        "--idle",
        type=float,
        default=6.0,
        metavar="SECONDS",
        help="stop reading after this long without a record (default 6: shorter can miss "
        "records a broker has not shown yet)",
    )
    ls = actions.add_parser(
        "list",
        parents=[filters],
        help="one line per dead letter, then a count per reason",
        description="Read DLQ_TOPIC from the beginning (no consumer group, nothing committed) "
        "and print one line per dead letter: DLQ partition:offset, reason, source "
        "topic:partition:offset, age, size, detail. Bodies are personal data: never shown "
        "unless --show-body.",
    )
    ls.add_argument("--json", action="store_true", help="one JSON object a line (all headers)")
    ls.add_argument("--show-body", action="store_true", help="also print the body (personal data)")
    replay = actions.add_parser(
        "replay",
        parents=[filters],
        help="re-send chosen dead letters to INBOUND_TOPIC",
        description="Re-send the chosen dead letters to INBOUND_TOPIC with the original "
        "record's key, value and headers, exactly (x-hub-signature-256 included), plus "
        "dlq.replayed_from=topic:partition:offset. Needs a filter or --all. Dead letters "
        "whose key, value or headers were cut or left out are refused, saying what is "
        "missing. Safe to repeat: the pipeline dedups, a message already stored is neither "
        "stored nor announced again. Exit 0 if all sent, 1 if a send failed or an --offset "
        "named no dead letter, 2 on bad arguments.",
    )
    replay.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.add_argument("--dry-run", action="store_true", help="print what would be sent")


def run(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.tools import dlq

    dlq.check_idle(args.idle)
    selection = dlq.build_selection(
        reasons=args.reason,
        since=args.since,
        until=args.until,
        source_partitions=args.source_partition,
        offsets=args.offset,
        limit=args.limit,
        now_ms=dlq.now_ms(),
    )
    if args.dlq_command == "replay":
        dlq.require_filter(selection, replay_all=args.all)
    if args.dlq_command == "list":
        return asyncio.run(
            dlq.list_letters(
                settings,
                selection,
                out=sys.stdout,
                err=sys.stderr,
                as_json=args.json,
                show_body=args.show_body,
                idle_s=args.idle,
            )
        )
    return asyncio.run(
        dlq.replay(settings, selection, out=sys.stdout, dry_run=args.dry_run, idle_s=args.idle)
    )
