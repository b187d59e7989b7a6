"""README command 1: the demo runs the whole flow and the operator's tools, and says OK."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_end_to_end() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    done = subprocess.run(
        [sys.executable, "-m", "consumer", "demo"],
        env=env,
        capture_output=True,
        timeout=110,
        check=False,
    )
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, out + done.stderr.decode(errors="replace")[-3000:]
    assert "result                   OK: stored once, announced once, statuses forward only" in out
    assert "message states           " in out
    assert ": each the highest status sent" in out
    assert "/readyz ok (kafka ok, redis ok, database ok" in out
    assert "replayed record back on the DLQ, marked dlq.replayed_from: yes" in out
    assert ": agree" in out
