"""The bench's report: ratios within each round, the median over the rounds."""

from __future__ import annotations

from consumer.settings import Settings
from consumer.tools.bench import BenchConfig, ModeResult, ProcStats, _report, _text


def _run(mode: str, records_per_s: float, n: int) -> ModeResult:
    return ModeResult(
        mode=mode,
        records=1000,
        unique_messages=700,
        seconds=1000 / records_per_s,
        messages_per_s=0.7 * records_per_s,
        records_per_s=records_per_s,
        latency_ms={},
        consumers=[ProcStats(100.0, 1.0)],
        round=n,
    )


def test_each_ratio_is_taken_within_a_round_and_the_median_reported() -> None:
    # The host slows down from round to round: both modes of a round move together.
    runs = [
        _run("pipeline", 6000, 1),
        _run("pass-through", 10000, 1),
        _run("pipeline", 3000, 2),
        _run("pass-through", 5500, 2),
        _run("pipeline", 4500, 3),
        _run("pass-through", 7000, 3),
    ]
    cfg = BenchConfig(modes=("pipeline", "pass-through"), rounds=3)
    report = _report(runs, Settings(), cfg)
    name = "pipeline / pass-through (records/s)"
    assert report["ratios_per_round"][name] == [0.6, 0.545, 0.643]
    assert report["ratios"][name] == 0.6
    text = _text(report)
    assert "pipeline#2" in text
    assert f"{name}: 0.6 (median of 3 rounds: 0.6, 0.545, 0.643)" in text


def test_one_round_reads_as_before() -> None:
    runs = [_run("pipeline", 6000, 1), _run("pass-through", 10000, 1)]
    report = _report(runs, Settings(), BenchConfig(modes=("pipeline", "pass-through")))
    text = _text(report)
    assert "pipeline / pass-through (records/s): 0.6\n" in text + "\n"
    assert "#1" not in text
