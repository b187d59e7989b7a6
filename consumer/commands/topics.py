"""`topics create`, `topics grow` and `topics list`: the three topics on the broker."""

from __future__ import annotations

import argparse
import asyncio

from consumer.commands import KAFKA, describe
from consumer.errors import ConfigError
from consumer.settings import Settings


def add_arguments(parser: argparse.ArgumentParser, summary: str) -> None:
    from consumer.tools.topics import (
        DEFAULT_PARTITIONS,
        DEFAULT_REPLICATION,
        default_max_message_bytes,
    )

    describe(
        parser,
        summary,
        reads=f"{KAFKA}, INBOUND_TOPIC, OUTBOUND_TOPIC, DLQ_TOPIC, MAX_RECORD_BYTES",
        details="`create` makes INBOUND_TOPIC and OUTBOUND_TOPIC with --partitions each "
        f"(default {DEFAULT_PARTITIONS}: a partition is the unit of parallelism, members "
        "beyond it wait) and DLQ_TOPIC with one; existing topics are left as they are. "
        "Each gets --replication-factor replicas (default 1: a local broker), "
        "min.insync.replicas (the producer writes with acks=all) and max.message.bytes "
        '(docs/operations.md, "Broker settings wamid-guard needs"). '
        "`grow` adds partitions to INBOUND_TOPIC (or --topic outbound) while the members "
        "run: they find them within KAFKA_METADATA_MAX_AGE_S and read them from offset 0 "
        '(docs/operations.md, "Adding partitions"; Apache Kafka only, Tansu refuses). '
        "`list` prints every topic with its partition count.",
        examples="  python -m consumer topics create\n"
        "  python -m consumer topics create --partitions 12\n"
        "  python -m consumer topics create --partitions 12 --replication-factor 3\n"
        "  python -m consumer topics grow --partitions 8\n"
        "  python -m consumer topics grow --partitions 8 --topic outbound\n"
        "  python -m consumer topics list",
    )
    actions = parser.add_subparsers(dest="topics_command", required=True)
    wait = argparse.ArgumentParser(add_help=False)
    wait.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for the broker to answer (a broker just started)",
    )
    create = actions.add_parser(
        "create", parents=[wait], help="create INBOUND_TOPIC, OUTBOUND_TOPIC, DLQ_TOPIC"
    )
    create.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help=f"of the inbound and outbound topics (default {DEFAULT_PARTITIONS})",
    )
    create.add_argument(
        "--replication-factor",
        type=int,
        default=DEFAULT_REPLICATION,
        metavar="N",
        help=f"replicas of each partition, at most the brokers (default {DEFAULT_REPLICATION}; "
        "a production cluster: 3)",
    )
    create.add_argument(
        "--min-insync-replicas",
        type=int,
        default=None,
        metavar="N",
        help="replicas that must have a write before it is acknowledged, at most "
        "--replication-factor (default 2 from 3 replicas on, else 1)",
    )
    create.add_argument(
        "--max-message-bytes",
        type=int,
        default=None,
        metavar="BYTES",
        help="largest batch each topic takes, at least the default: MAX_RECORD_BYTES plus "
        f"64 KiB and Kafka's 12 bytes, at least Kafka's 1048588 ({default_max_message_bytes()} "
        "with the default MAX_RECORD_BYTES of 3 MiB: Meta's webhooks reach 3 MB)",
    )
    grow = actions.add_parser(
        "grow", parents=[wait], help="add partitions to INBOUND_TOPIC or OUTBOUND_TOPIC"
    )
    grow.add_argument(
        "--partitions",
        type=int,
        required=True,
        help="the topic's new partition count, more than it has (Kafka cannot take "
        "partitions away)",
    )
    grow.add_argument(
        "--topic",
        choices=("inbound", "outbound"),
        default="inbound",
        help="INBOUND_TOPIC (default) or OUTBOUND_TOPIC; growing the outbound topic moves "
        "keys to other partitions (per-contact order holds per partition only): grow it "
        "first, with its readers drained",
    )
    actions.add_parser("list", parents=[wait], help="every topic and its partitions")


def run(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.tools import topics

    s = settings
    bootstrap = s.kafka_bootstrap_servers
    if args.wait < 0:
        raise ConfigError("--wait", "must be 0 or more seconds")
    configs: dict[str, str] = {}
    if args.topics_command == "create":
        if args.partitions < 1:
            raise ConfigError("--partitions", "must be 1 or more")
        configs = topics.topic_configs(
            args.replication_factor,
            args.min_insync_replicas,
            args.max_message_bytes,
            max_record_bytes=s.max_record_bytes,
        )
    if args.topics_command == "grow":
        return _grow(s, args)
    before = asyncio.run(topics.list_topics(bootstrap, wait_s=args.wait))
    if args.topics_command == "list":
        for name, count in before.items():
            print(f"{name}: {count} partition(s)")
        return 0
    wanted = {
        s.inbound_topic: args.partitions,
        s.outbound_topic: args.partitions,
        s.dlq_topic: topics.DLQ_PARTITIONS,
    }
    asyncio.run(
        topics.create_topics(
            bootstrap,
            wanted,
            replication=args.replication_factor,
            configs=configs,
            max_record_bytes=s.max_record_bytes,
        )
    )
    after = asyncio.run(topics.layout(bootstrap, wanted))
    for name in wanted:
        parts, replicas = map(str, after.get(name, ("?", "?")))
        state = "created"
        if name in before:
            # Left as it is: say when it differs from what was asked.
            odd = replicas not in ("?", str(args.replication_factor))
            state = f"exists, left as it is{' (not the replication asked)' if odd else ''}"
        print(f"{name}: {parts} partition(s), replication {replicas}, {state}")
    return 0


def _grow(settings: Settings, args: argparse.Namespace) -> int:
    """`topics grow`: refuses a count that does not grow the topic (exit 2, naming
    --partitions), says what it did."""
    from consumer.tools import topics

    if args.partitions < 1:
        raise ConfigError("--partitions", "must be 1 or more")
    bootstrap = settings.kafka_bootstrap_servers
    name = settings.inbound_topic if args.topic == "inbound" else settings.outbound_topic
    asyncio.run(topics.list_topics(bootstrap, wait_s=args.wait))  # the broker answers
    before, after = asyncio.run(topics.grow_partitions(bootstrap, name, args.partitions))
    print(f"{name}: {before} -> {after} partitions")
    return 0
