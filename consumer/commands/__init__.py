"""The commands of `python -m consumer`, one module each: its arguments beside its code.

Each module gives `add_arguments(parser, summary)` and `run(settings, args) -> int`.
consumer.cli registers them in its COMMANDS table and imports a module only when its
command is named, so a module imports nothing heavy at module level.
"""

from __future__ import annotations

import argparse

KAFKA = "KAFKA_BOOTSTRAP_SERVERS"


def describe(
    parser: argparse.ArgumentParser,
    summary: str,
    *,
    reads: str,
    examples: str,
    details: str = "",
) -> None:
    """Make a command's --help say what it does, which environment variables it reads,
    and how to call it."""
    parser.description = (
        f"{summary[0].upper()}{summary[1:]}.\n\n{details}" if details else f"{summary}."
    )
    parser.epilog = f"reads: {reads}\n\nexamples:\n{examples}"
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
