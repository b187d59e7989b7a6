"""`health --wait` says it is waiting, and why, and when it gives up."""

from __future__ import annotations

import argparse
import http.server
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from consumer.commands import health
from consumer.settings import Settings

JOINING: dict[str, Any] = {
    "ok": False,
    "stopping": False,
    "checks": {
        "kafka": {
            "assigned_partitions": 0,
            "ok": False,
            "error": "no partition assignment yet (joining the group)",
        },
        "redis": {"ok": True},
        "database": {"ok": True},
    },
}


def test_why_names_each_failing_check() -> None:
    assert health.why(json.dumps(JOINING)) == (
        "kafka: no partition assignment yet (joining the group)"
    )
    both = {**JOINING, "checks": {**JOINING["checks"], "redis": {"ok": False, "error": "down"}}}
    assert health.why(json.dumps(both)).endswith("; redis: down")
    assert health.why(json.dumps({"ok": False, "stopping": True, "checks": {}})) == (
        "the member is stopping"
    )
    assert health.why("cannot reach http://x/readyz: refused") == (
        "cannot reach http://x/readyz: refused"
    )
    assert health.why('{"ok": false, "seconds_since_poll": 130.5}') == (
        "no poll loop turn for 130.5 s"
    )


@pytest.fixture
def joining_member() -> Iterator[str]:
    """A member's endpoint that stays 'joining the group'."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(JOINING).encode()
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            """Quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_wait_prints_progress_and_gives_up_saying_why(
    joining_member: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(health, "PROGRESS_EVERY_S", 1.0)
    # The command itself, not cli.main: that configures the process's logging (INFO),
    # which would hide the debug lines later tests capture.
    args = argparse.Namespace(url=joining_member, live=False, timeout=5.0, wait=2.2)
    assert health.run(Settings(), args) == 1
    out, err = capsys.readouterr()
    assert json.loads(out) == JOINING  # the member's answer, as before, on stdout
    lines = err.splitlines()
    progress = [x for x in lines if x.startswith("health: not yet, after ")]
    assert len(progress) >= 1
    assert progress[0].endswith(": kafka: no partition assignment yet (joining the group)")
    assert re.fullmatch(
        r"health: gave up after [23] s: kafka: no partition assignment yet \(joining the group\)",
        lines[-1],
    )
