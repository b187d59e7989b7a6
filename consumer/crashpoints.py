"""Test-only deterministic crashes: SIGKILL this process at a named step of the flow.

Set ``WAMID_GUARD_CRASH_POINT=after_commit`` (or ``after_commit:3`` for the third time
the step is reached). The fault suite uses it to prove that a crash at every step
keeps the promise. With the setting empty (production) :meth:`hit` does nothing.
"""

from __future__ import annotations

import os
import signal

import structlog

log = structlog.get_logger(__name__)


class CrashPoints:
    def __init__(self, spec: str) -> None:
        point, _, nth = spec.partition(":")
        self._point = point
        self._remaining = int(nth) if nth else 1
        self.enabled = bool(point)

    def hit(self, point: str) -> None:
        if not self.enabled or point != self._point:
            return
        self._remaining -= 1
        if self._remaining <= 0:
            log.warning("crashpoint.kill", point=point)
            os.kill(os.getpid(), signal.SIGKILL)
