"""Logs: JSON or console by LOG_FORMAT, filtered by LOG_LEVEL, one summary line per batch,
and nothing personal (bodies, names, sender numbers) or secret at info."""

from __future__ import annotations

import io

import orjson
import pytest
import structlog

from consumer import logs, pipeline
from consumer.settings import Settings
from consumer.testing import record, webhook
from tests.unit.test_pipeline import World

NAME = "Zelda Quixotebottom"
TEXT = "my card number is 4111-1111-1111-1111"
SENDER = "447700900123"


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    yield
    structlog.reset_defaults()


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_json_lines_with_level_timestamp_and_context() -> None:
    out = io.StringIO()
    logs.configure("INFO", "json", stream=out)
    log = structlog.get_logger("t")
    log.info("batch.done", records=3, partition=1)
    log.debug("message.stored", wamid="w")  # below the level: dropped
    [line] = _lines(out)
    assert line["event"] == "batch.done"
    assert line["level"] == "info"
    assert line["records"] == 3
    assert str(line["timestamp"]).endswith("Z")


def test_console_format_is_readable_not_json() -> None:
    out = io.StringIO()  # not a terminal: "auto" would pick JSON, "console" must not
    logs.configure("DEBUG", "console", stream=out)
    structlog.get_logger("t").debug("lease.released", count=2)
    text = out.getvalue()
    assert "lease.released" in text
    assert "count=2" in text
    assert not text.lstrip().startswith("{")


def test_auto_is_json_when_not_a_terminal() -> None:
    out = io.StringIO()
    logs.configure("INFO", "auto", stream=out)
    structlog.get_logger("t").info("service.started")
    assert _lines(out)[0]["event"] == "service.started"


async def test_a_batch_at_info_logs_one_summary_and_nothing_personal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    logs.configure("INFO", "json", stream=out)
    # A fresh logger: the module's own may be cached on an earlier test's stream.
    monkeypatch.setattr(pipeline, "log", structlog.get_logger(pipeline.__name__))
    world = World(Settings(app_secret="", log_level="INFO"))
    body = webhook(
        [
            {
                "from": SENDER,
                "id": "wamid.PII",
                "timestamp": "1749416383",
                "type": "text",
                "text": {"body": TEXT},
            }
        ],
        contacts=[{"profile": {"name": NAME}, "wa_id": SENDER}],
    )
    poison = record(b'{"object": "whatsapp_business_account", "entry": "' + TEXT.encode() + b'"}')
    await world.pipeline.process([record(body, offset=0), poison])
    lines = _lines(out)
    summaries = [line for line in lines if line["event"] == "batch.done"]
    assert len(summaries) == 1
    assert summaries[0]["stored"] == 1
    assert summaries[0]["dead_lettered"] == 1
    text = out.getvalue()
    for personal in (NAME, TEXT, SENDER, "4111"):
        assert personal not in text, f"{personal!r} reached the info log"
