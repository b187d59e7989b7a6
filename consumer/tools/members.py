"""Member processes for the demo, the bench and the tests: `python -m consumer run` (or
another member command) in a process of its own, configured through the environment the
way an operator configures one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from consumer.settings import Settings, env_name

RUN: tuple[str, ...] = ("-m", "consumer", "run")
"""The member users run: the pipeline."""
PASSTHROUGH: tuple[str, ...] = ("-m", "consumer.tools.passthrough")
"""The bench's pass-through reference member: consume and publish, no Redis, no database."""


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce `settings` in a child process."""
    return {
        env_name(k): str(v)
        for k, v in settings.__class__.__dataclass_fields__.items()
        for v in [getattr(settings, k)]
        if v != ""
    }


def start_member(
    settings: Settings, log_path: Path, *, command: Sequence[str] = RUN
) -> subprocess.Popen[bytes]:
    """Start one member (`python <command>`, by default `python -m consumer run`) with
    this process's environment plus `settings`; its stdout and stderr go to `log_path`."""
    env = {**os.environ, **settings_env(settings)}
    with log_path.open("wb") as log_file:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, *command],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
