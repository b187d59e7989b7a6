"""`produce`: send webhook files to INBOUND_TOPIC."""

from __future__ import annotations

import argparse
import asyncio
import sys

from consumer.commands import KAFKA, describe
from consumer.errors import ConfigError
from consumer.settings import Settings


def add_arguments(parser: argparse.ArgumentParser, summary: str) -> None:
    describe(
        parser,
        summary,
        reads=f"{KAFKA}, INBOUND_TOPIC, WHATSAPP_APP_SECRET (signs each record as Meta would)",
        details="Each body is sent as one record, 1 + --duplicates times (Meta's "
        "redelivery), to one partition or, with --spread-partitions, to several. A file "
        "that is not JSON is sent all the same, with a warning (the pipeline will "
        "dead-letter it).",
        examples="  python -m consumer produce\n"
        "  python -m consumer produce --duplicates 2 --spread-partitions\n"
        "  python -m consumer produce webhook.json other.json",
    )
    parser.add_argument("files", nargs="*", help="webhook JSON files (default: bundled samples)")
    parser.add_argument(
        "--duplicates",
        type=int,
        default=0,
        metavar="N",
        help="send each body N extra times (Meta's redelivery)",
    )
    parser.add_argument(
        "--spread-partitions",
        action="store_true",
        help="put the copies of a body on different partitions",
    )
    parser.add_argument("--topic", help="topic (default: INBOUND_TOPIC)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.source import require_topics
    from consumer.tools import produce

    if args.duplicates < 0:
        raise ConfigError("--duplicates", "must be 0 or more")
    bodies = produce.read_bodies(args.files)
    odd = produce.not_json(bodies)
    for name in odd:
        print(
            f"warning: {name} is not JSON: sent as it is (it will be dead-lettered)",
            file=sys.stderr,
        )
    topic = args.topic or settings.inbound_topic
    label = "--topic" if args.topic else "INBOUND_TOPIC"
    bootstrap = settings.kafka_bootstrap_servers

    async def _send() -> list[produce.Sent]:
        await require_topics(bootstrap, {label: topic}, settings.kafka_request_timeout_s)
        return await produce.produce(
            bootstrap,
            topic,
            bodies,
            duplicates=args.duplicates,
            spread=args.spread_partitions,
            app_secret=settings.app_secret,
        )

    sent = asyncio.run(_send())
    bodies_said = produce.count(len(bodies), "body", "bodies")
    print(
        f"sent {produce.count(len(sent), 'record', 'records')} ({bodies_said} x "
        f"{1 + args.duplicates}{f', {len(odd)} of them not JSON' if odd else ''}) "
        f"to {topic} on partitions {sorted({s.partition for s in sent})}"
    )
    print(f"  {produce.contents(bodies, settings.max_record_bytes).describe()}")
    return 0
