"""The command line: the one place that reads the environment and builds Settings.

python -m consumer run        one consumer-group member (run many)
python -m consumer migrate    create / upgrade the database schema
python -m consumer produce    send webhook files to the inbound topic
python -m consumer tail       follow the outbound topic
python -m consumer demo       the whole flow on embedded services, with a summary
python -m consumer health     ask a running member's /readyz (or /healthz): exit 0 or 1
python -m consumer dlq        list or replay dead letters (dlq list --help, dlq replay --help)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import structlog

from consumer import logs
from consumer.errors import ConfigError, WamidGuardError
from consumer.settings import Settings

if TYPE_CHECKING:
    from consumer.wiring import FlowFactory

log = structlog.get_logger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    return run_command(args.command, lambda settings: int(args.func(settings, args)))


def run_command(command: str, func: Callable[[Settings], int]) -> int:
    """Build the settings from the environment, configure logging and run `func`.

    Exit 2 on a bad configuration, 1 on an expected failure (logged and printed, the
    cause chained), 130 on Ctrl-C; otherwise what `func` returns."""
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"wamid-guard: bad configuration: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    try:
        return func(settings)
    except WamidGuardError as exc:
        log.error(  # noqa: TRY400 - the cause is chained in the line; no traceback for an expected failure
            "command.failed",
            command=command,
            error=str(exc),
            cause=repr(exc.__cause__) if exc.__cause__ else None,
        )
        print(f"wamid-guard {command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m consumer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("run", help="consume INBOUND_TOPIC as a member of CONSUMER_GROUP").set_defaults(
        func=cmd_run
    )
    sub.add_parser("migrate", help="create or upgrade the database schema").set_defaults(
        func=cmd_migrate
    )

    produce = sub.add_parser("produce", help="send webhook bodies to INBOUND_TOPIC")
    produce.add_argument("files", nargs="*", help="webhook JSON files (default: bundled samples)")
    produce.add_argument(
        "--duplicates",
        type=int,
        default=0,
        metavar="N",
        help="send each body N extra times (Meta's redelivery)",
    )
    produce.add_argument(
        "--spread-partitions",
        action="store_true",
        help="put the copies of a body on different partitions",
    )
    produce.add_argument("--topic", help="topic (default: INBOUND_TOPIC)")
    produce.set_defaults(func=cmd_produce)

    tail = sub.add_parser("tail", help="follow OUTBOUND_TOPIC, one event a line")
    tail.add_argument("--json", action="store_true", help="print each event as raw JSON")
    where = tail.add_mutually_exclusive_group()
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
    tail.add_argument(
        "--idle-exit",
        type=float,
        metavar="SECONDS",
        help="exit after this long without a new event (default: follow forever; 6 or more "
        "to be sure nothing is missed: a broker may show its newest records late)",
    )
    tail.add_argument("--topic", help="topic (default: OUTBOUND_TOPIC)")
    tail.set_defaults(func=cmd_tail)

    bench = sub.add_parser("bench", help="measure the pipeline against its reference modes")
    bench.add_argument("--records", type=int, default=200_000, help="inbound records")
    bench.add_argument("--dup-ratio", type=float, default=0.3, help="share of duplicates")
    bench.add_argument("--partitions", type=int, default=4, help="inbound partitions")
    bench.add_argument("--consumers", type=int, default=2, help="consumer processes")
    bench.add_argument(
        "--rate",
        type=float,
        help="produce at this many records/s while "
        "consuming (latency); default: produce a backlog first, then drain",
    )
    bench.add_argument(
        "--modes",
        default="pipeline,per-message,pass-through",
        help="comma-separated: pipeline, per-message, pass-through",
    )
    bench.add_argument(
        "--per-message-records",
        type=int,
        default=5_000,
        help="records for the (slow) per-message mode",
    )
    bench.add_argument("--batch-max-records", type=int, default=500)
    bench.add_argument("--bootstrap", help="an existing broker (default: start Tansu)")
    bench.add_argument("--timeout", type=float, default=900.0, help="per mode, seconds")
    bench.add_argument(
        "--profile",
        metavar="DIR",
        help="sample every consumer with py-spy into DIR (py-spy installed)",
    )
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.set_defaults(func=cmd_bench)

    demo = sub.add_parser("demo", help="run the whole flow on embedded services")
    demo.add_argument("--consumers", type=int, default=2, help="consumer processes (default 2)")
    demo.add_argument("--partitions", type=int, default=4, help="inbound partitions (default 4)")
    demo.add_argument(
        "--duplicates", type=int, default=2, help="extra copies of each webhook (default 2)"
    )
    demo.add_argument(
        "--messages",
        type=int,
        default=300,
        help="synthetic unique messages besides the samples (default 300)",
    )
    demo.set_defaults(func=cmd_demo)

    health = sub.add_parser(
        "health",
        help="check a running member over HTTP; exit 0 healthy, 1 not (for health checks)",
    )
    health.add_argument(
        "--live",
        action="store_true",
        help="liveness (/healthz: the poll loop moves) instead of readiness (/readyz)",
    )
    health.add_argument(
        "--url",
        help="the member's base URL (default http://METRICS_HOST:METRICS_PORT, "
        "with 127.0.0.1 for a wildcard host)",
    )
    health.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    health.set_defaults(func=cmd_health)
    _add_dlq_parser(sub)
    return parser


def _add_dlq_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from consumer.records import Reason

    dlq = sub.add_parser("dlq", help="list or replay dead letters (DLQ_TOPIC)")
    dlq.set_defaults(func=cmd_dlq)
    actions = dlq.add_subparsers(dest="dlq_command", required=True)
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
        "stored nor announced again. Exit 0 if all sent, 1 if a send failed, 2 on bad "
        "arguments.",
    )
    replay.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.add_argument("--dry-run", action="store_true", help="print what would be sent")


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    return serve(settings)


def serve(settings: Settings, flow_factory: FlowFactory | None = None) -> int:
    """Run one member until SIGTERM or SIGINT (a second one cuts the batch in flight
    short). `flow_factory`: what it runs (default: the pipeline)."""
    from consumer.service import Service
    from consumer.wiring import PIPELINE

    async def _run() -> None:
        service = Service(settings, flow_factory=flow_factory or PIPELINE)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.request_stop, sig.name)
        await service.run()

    asyncio.run(_run())
    return 0


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from consumer import migrate

    migrate.upgrade(settings.database_url)
    log.info("migrate.done", revision="head")
    return 0


def cmd_produce(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.tools import produce

    if args.duplicates < 0:
        raise ConfigError("--duplicates", "must be 0 or more")
    bodies = produce.read_bodies(args.files)
    topic = args.topic or settings.inbound_topic
    sent = asyncio.run(
        produce.produce(
            settings.kafka_bootstrap_servers,
            topic,
            bodies,
            duplicates=args.duplicates,
            spread=args.spread_partitions,
            app_secret=settings.app_secret,
        )
    )
    print(
        f"sent {len(sent)} record(s) ({len(bodies)} bodies x {1 + args.duplicates}) "
        f"to {topic} on partitions {sorted({s.partition for s in sent})}"
    )
    return 0


def cmd_tail(settings: Settings, args: argparse.Namespace) -> int:
    # read_topic starts every partition at offset 0 (not the broker's EARLIEST, which the
    # embedded broker can answer too high); --idle-exit shorter than 6 s can miss records
    # it has not shown yet.
    from consumer.source import inbound
    from consumer.tools.topics import read_topic

    async def _tail() -> None:
        topic = args.topic or settings.outbound_topic
        async for record in read_topic(
            settings.kafka_bootstrap_servers,
            topic,
            from_beginning=args.from_beginning,
            idle_s=args.idle_exit,
        ):
            event = inbound(record)
            print(format_event(event.partition, event.offset, event.value, args.json), flush=True)

    try:
        asyncio.run(_tail())
    except KeyboardInterrupt:
        return 0
    return 0


def format_event(partition: int, offset: int, value: bytes | None, as_json: bool) -> str:
    """One line per event: its JSON (re-encoded on one line), or a readable summary
    without message content. Every value from the record is escaped (safetext): no raw
    control, bidi or invisible character, and the JSON stays valid."""
    from consumer.safetext import json_line, token

    size = len(value or b"")
    try:
        event = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        if as_json:
            return json_line({"partition": partition, "offset": offset, "not_json_bytes": size})
        return f"{partition}:{offset} <not a message_created event: {size} bytes>"
    if as_json:
        return json_line(event)
    try:
        message = event["message"]
        fields = {
            "event_id": event["event_id"],
            "phone_number_id": event["phone_number_id"],
            "from": message["from"],
            "type": message["type"],
            "wamid": message["source_id"],
        }
        shown = " ".join(f"{name}={token(str(v))}" for name, v in fields.items())
        return f"{partition}:{offset} {token(str(event['event']))} {shown}"
    except (KeyError, TypeError):
        return f"{partition}:{offset} <not a message_created event: {size} bytes>"


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.tools import bench

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = set(modes) - set(bench.MODES)
    if unknown:
        raise ConfigError("--modes", f"unknown mode(s) {sorted(unknown)}; use {bench.MODES}")
    cfg = bench.BenchConfig(
        records=args.records,
        dup_ratio=args.dup_ratio,
        partitions=args.partitions,
        consumers=args.consumers,
        rate=args.rate,
        modes=modes,
        per_message_records=args.per_message_records,
        batch_max_records=args.batch_max_records,
        bootstrap=args.bootstrap,
        timeout_s=args.timeout,
        profile_dir=Path(args.profile) if args.profile else None,
    )
    return bench.main(settings, cfg, as_json=args.json)


def cmd_health(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.http import probe

    base = args.url
    if base is None:
        if settings.metrics_port == 0:
            print("health: the endpoint is off (METRICS_PORT=0); pass --url", file=sys.stderr)
            return 1
        host = settings.metrics_host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - a wildcard bind
        base = f"http://{host}:{settings.metrics_port}"
    url = base.rstrip("/") + ("/healthz" if args.live else "/readyz")
    ok, detail = probe(url, args.timeout)
    print(detail)
    return 0 if ok else 1


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.tools import demo

    return demo.main(
        settings,
        consumers=args.consumers,
        partitions=args.partitions,
        duplicates=args.duplicates,
        messages=args.messages,
    )


def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.tools import dlq

    try:
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
    except ConfigError as exc:
        print(f"wamid-guard dlq {args.dlq_command}: {exc}", file=sys.stderr)
        return 2
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
