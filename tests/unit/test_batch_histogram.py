"""consumer.metrics.BatchHistogram is exposed exactly as prometheus_client's Histogram."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from consumer.metrics import BatchHistogram

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400)


def _exposition(registry: CollectorRegistry) -> list[str]:
    """The sample lines, without the _created series (a Histogram's own timestamp)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def test_same_exposition_as_a_histogram() -> None:
    rng = random.Random(7)  # noqa: S311 - test data, not a secret
    values = {
        "a": [rng.choice([0.0, 0.01, 1.0, 86400.0, 1e9]) for _ in range(50)]
        + [rng.expovariate(0.5) for _ in range(500)],
        "b": [rng.uniform(0, 100) for _ in range(300)],
    }
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("x_seconds", "help", ["since"], buckets=BUCKETS, registry=theirs)
    batch = BatchHistogram("x_seconds", "help", "since", buckets=BUCKETS)
    ours.register(batch)
    for label, amounts in values.items():
        for amount in amounts:
            reference.labels(label).observe(amount)
        for start in range(0, len(amounts), 64):  # in batches, as the pipeline observes
            batch.observe_many(label, amounts[start : start + 64])
    assert _exposition(ours) == _exposition(theirs)
    # An observation exactly on a bound counts in that bound's bucket (le: <=).
    assert 'x_seconds_bucket{le="0.01",since="a"}' in "\n".join(_exposition(ours))


def test_nothing_observed_exposes_no_series() -> None:
    registry = CollectorRegistry()
    batch = BatchHistogram("y_seconds", "help", "since", buckets=BUCKETS)
    registry.register(batch)
    batch.observe_many("a", [])
    lines = [line for line in _exposition(registry) if not line.startswith("#")]
    assert 'y_seconds_count{since="a"} 0.0' in lines
    assert all('since="b"' not in line for line in lines)
