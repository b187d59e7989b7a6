"""The command table (consumer/cli.py) and the command modules (consumer/commands/): each
table row loads its module, every module gives a parser and a handler, and the top-level
--help imports no command module."""

from __future__ import annotations

import subprocess
import sys

import pytest

from consumer import cli
from consumer.commands import (
    bench,
    broker,
    demo,
    dlq,
    health,
    migrate,
    produce,
    run,
    services,
    tail,
    topics,
)

# Typed as cli.Command, so mypy checks each module against the protocol.
MODULES: dict[str, cli.Command] = {
    "run": run,
    "migrate": migrate,
    "broker": broker,
    "topics": topics,
    "produce": produce,
    "tail": tail,
    "health": health,
    "dlq": dlq,
    "demo": demo,
    "bench": bench,
    "services": services,
}


def test_the_table_loads_each_command_module_in_help_order() -> None:
    """COMMANDS lists every command module, in the order the top-level --help shows."""
    assert list(cli.COMMANDS) == list(MODULES)
    for name, module in MODULES.items():
        assert cli.load(name) is module


@pytest.mark.parametrize("name", list(MODULES))
def test_each_command_help_names_what_it_reads(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command's --help starts from its table summary and names what it reads."""
    with pytest.raises(SystemExit) as exited:
        cli._parser().parse_args([name, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    summary = cli.COMMANDS[name].summary
    assert f"{summary[0].upper()}{summary[1:]}." in " ".join(out.split())
    assert "reads:" in out


def test_a_parser_parses_twice() -> None:
    """A command's arguments are added once, however often its parser is used."""
    parser = cli._parser()
    assert parser.parse_args(["topics", "create", "--partitions", "6"]).partitions == 6
    assert parser.parse_args(["topics", "list"]).topics_command == "list"


def test_top_level_help_imports_no_command_module() -> None:
    """`python -m consumer --help` stays fast: it loads no command module (nor Kafka)."""
    code = (
        "import sys\n"
        "from consumer import cli\n"
        "cli._parser().format_help()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('consumer.commands.', 'aiokafka'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("argv0", "prog"),
    [
        ("/usr/local/bin/wamid-guard", "wamid-guard"),
        ("/app/consumer/__main__.py", "python -m consumer"),
        ("", "python -m consumer"),
    ],
)
def test_usage_names_what_the_user_typed(
    argv0: str, prog: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`wamid-guard --help` says `usage: wamid-guard`, `python -m consumer --help` says
    `usage: python -m consumer`."""
    monkeypatch.setattr(sys, "argv", [argv0])
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert capsys.readouterr().out.startswith(f"usage: {prog} [-h] COMMAND ...")
