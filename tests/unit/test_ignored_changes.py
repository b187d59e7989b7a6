"""No silent drop (issue 24, item 6): a change that creates nothing is counted by its
field in wamid_guard_changes_ignored_total, under a bounded set of labels, and said at
debug with its coordinates; a change of another field holding messages is dead-lettered."""

from __future__ import annotations

import datetime as dt
from typing import Any

import structlog

from consumer import intake
from consumer.metrics import Metrics
from consumer.outbox import MarkQueue
from consumer.pipeline import Pipeline
from consumer.records import Reason
from consumer.settings import Settings
from consumer.testing import FakeLeases, FakePublisher, FakeStore, message, record, webhook
from consumer.wiring import pipeline_config

NOW = dt.datetime(2025, 6, 9, 12, 0, tzinfo=dt.UTC)
COUNTER = "wamid_guard_changes_ignored_total"


def _pipeline(settings: Settings | None = None) -> tuple[Pipeline, FakePublisher]:
    store, publisher = FakeStore(), FakePublisher()
    pipeline = Pipeline(
        pipeline_config(settings or Settings()),
        FakeLeases(),
        store,
        publisher,
        worker_id="w1",
        metrics=Metrics(),
        marks=MarkQueue(store),
        clock=lambda: NOW,
    )
    return pipeline, publisher


def _count(metrics: Metrics, field: str) -> float:
    value = metrics.registry.get_sample_value(COUNTER, {"field": field})
    assert value is not None, f"no series for field={field}"
    return value


def _with_changes(*changes: tuple[object, dict[str, Any]]) -> dict[str, Any]:
    body = webhook([message("wamid.A")])
    body["entry"][0]["changes"] += [{"field": f, "value": v} for f, v in changes]
    return body


def test_every_label_is_created_up_front_and_the_set_is_bounded() -> None:
    """Meta's field names and "other", at 0 from the start; nothing else."""
    metrics = Metrics()
    labels = {
        s.labels["field"]
        for family in metrics.registry.collect()
        if family.name == COUNTER.removesuffix("_total")
        for s in family.samples
        if s.name == COUNTER
    }
    assert labels == intake.WEBHOOK_FIELDS | {intake.OTHER_FIELD}
    assert all(_count(metrics, label) == 0 for label in labels)


async def test_ignored_changes_are_counted_by_field_and_logged_at_debug() -> None:
    """Two account_update changes, one of a field Meta does not document, one null and a
    messages change holding nothing: counted under account_update (2), other (2) and
    messages (1); the good message is stored; each ignored change is a debug line with
    the record's coordinates and where the change is, and never the field as sent."""
    pipeline, publisher = _pipeline(Settings(log_level="DEBUG"))
    body = _with_changes(
        ("account_update", {"event": "x"}),
        ("zz_Sheena_field", {"event": "x"}),
        (None, {"event": "x"}),
        ("messages", {"messaging_product": "whatsapp"}),
    )
    other = _with_changes(("account_update", {"event": "y"}))
    other["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = "wamid.B"
    with structlog.testing.capture_logs() as logs:
        report = await pipeline.process([record(body, offset=3), record(other, offset=4)])
    assert report.stored == 2
    assert report.ignored_changes == 5
    assert report.counts()["ignored_changes"] == 5
    m = pipeline.metrics
    assert _count(m, "account_update") == 2
    assert _count(m, "other") == 2
    assert _count(m, "messages") == 1
    assert _count(m, "history") == 0
    lines = [e for e in logs if e["event"] == "change.ignored"]
    assert [(e["offset"], e["change"], e["field"]) for e in lines] == [
        (3, "entry[0].changes[1]", "account_update"),
        (3, "entry[0].changes[2]", "other"),
        (3, "entry[0].changes[3]", "other"),
        (3, "entry[0].changes[4]", "messages"),
        (4, "entry[0].changes[1]", "account_update"),
    ]
    assert all(e["log_level"] == "debug" and e["partition"] == 0 for e in lines)
    assert not any("Sheena" in str(e) for e in logs)
    assert len(publisher.published) == 2


async def test_no_debug_line_is_built_at_info() -> None:
    """At the default level the count is kept and no per-change line is built."""
    pipeline, _ = _pipeline()
    with structlog.testing.capture_logs() as logs:
        report = await pipeline.process([record(_with_changes(("history", {"x": 1})))])
    assert report.ignored_changes == 1
    assert _count(pipeline.metrics, "history") == 1
    assert not [e for e in logs if e["event"] == "change.ignored"]


async def test_messages_under_another_field_are_dead_lettered() -> None:
    """A change of field null holding messages is neither stored nor ignored: its record
    is dead-lettered as bad_shape, and its good neighbour record is stored."""
    pipeline, publisher = _pipeline()
    hidden = webhook([message("wamid.HIDDEN")])
    hidden["entry"][0]["changes"][0]["field"] = None
    report = await pipeline.process([record(hidden, offset=1), record(webhook([message("w.ok")]))])
    assert report.stored == 1
    assert report.dead_lettered == 1
    (letter,) = publisher.dead_letters
    assert letter.reason is Reason.BAD_SHAPE
    assert "entry[0].changes[0]" in letter.detail
    assert report.ignored_changes == 0
    assert all(_count(pipeline.metrics, f) == 0 for f in ("other", "messages"))
