"""The command line: the one place that reads the environment and builds Settings, and
the one error path of every command.

Exit codes: 0 done; 1 a failure (one line on stderr saying what failed and what to do;
no traceback unless LOG_LEVEL=DEBUG); 2 a bad setting or argument (one line naming it);
130 interrupted.

Each command lives in its own module of consumer.commands, registered in COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import structlog

from consumer import logs
from consumer.errors import ConfigError, WamidGuardError
from consumer.settings import Settings

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


# -- the commands ----------------------------------------------------------------------


@dataclass(frozen=True)
class CommandInfo:
    """Where a command's code lives, and its line in the top-level --help."""

    module: str
    summary: str
    service: bool = False  # a group member: its failure is also logged as command.failed


COMMANDS: dict[str, CommandInfo] = {
    "run": CommandInfo(
        "consumer.commands.run",
        "be one member of the consumer group (start as many as you like)",
        service=True,
    ),
    "migrate": CommandInfo(
        "consumer.commands.migrate",
        "create or upgrade the database schema, and say which revision it is at",
    ),
    "broker": CommandInfo(
        "consumer.commands.broker",
        "start a local Kafka-protocol broker in the foreground (development only)",
    ),
    "topics": CommandInfo(
        "consumer.commands.topics",
        "create the three topics, or list the broker's topics",
    ),
    "produce": CommandInfo(
        "consumer.commands.produce",
        "send webhook files (default: Meta's bundled samples) to INBOUND_TOPIC",
    ),
    "tail": CommandInfo(
        "consumer.commands.tail",
        "print OUTBOUND_TOPIC's message_created events, one a line",
    ),
    "health": CommandInfo(
        "consumer.commands.health",
        "ask a running member whether it is ready (or alive): exit 0 yes, 1 no",
    ),
    "dlq": CommandInfo(
        "consumer.commands.dlq",
        "list or replay the dead letters of DLQ_TOPIC",
    ),
    "demo": CommandInfo(
        "consumer.commands.demo",
        "run the whole flow on embedded services and print a summary",
    ),
    "bench": CommandInfo(
        "consumer.commands.bench",
        "measure the pipeline's throughput and latency against reference modes",
    ),
    "services": CommandInfo(
        "consumer.commands.services",
        "have PostgreSQL, Redis, Tansu and Apache Kafka on loopback, for tests and trying",
    ),
}
"""Every command, in the order the top-level --help lists them."""


class Command(Protocol):
    """What each module of consumer.commands provides."""

    def add_arguments(self, parser: argparse.ArgumentParser, summary: str) -> None: ...

    def run(self, settings: Settings, args: argparse.Namespace) -> int: ...


def load(name: str) -> Command:
    """The module of the command `name`, imported on first use."""
    return cast(Command, importlib.import_module(COMMANDS[name].module))


# -- the one error path ----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = load(args.command)
    return run_command(
        args.command,
        lambda settings: int(command.run(settings, args)),
        service=COMMANDS[args.command].service,
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
            # The plain line below says what failed; a console log (someone reading the
            # terminal) does not say it again, JSON lines (a log pipeline) carry it.
            said = {"error": str(exc)} if logs.uses_json(settings.log_format) else {}
            log.error(  # noqa: TRY400 - the cause is chained in the line; no traceback for an expected failure
                "command.failed",
                command=command,
                **said,
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


if TYPE_CHECKING:
    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time
    _SubParsers = argparse._SubParsersAction


class _LazyCommands(_SubParsers):
    """The COMMAND argument: a command's own arguments are added once it is named, so
    neither the top-level --help nor another command imports its module."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._built: set[str] = set()

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        name = values[0] if values else None
        if name in COMMANDS and name not in self._built:
            load(name).add_arguments(self._name_parser_map[name], COMMANDS[name].summary)
            self._built.add(name)
        super().__call__(parser, namespace, values, option_string)


def _prog() -> str:
    """How the user called us: `wamid-guard` (the installed script) or `python -m
    consumer`, so that usage lines and examples name what they typed."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name and name not in ("__main__.py", "-c") else "python -m consumer"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", action=_LazyCommands
    )
    for name, info in COMMANDS.items():
        sub.add_parser(name, help=info.summary)
    return parser
