"""The bench's report: ratios within each round, the median over the rounds."""

from __future__ import annotations

from consumer.settings import Settings
from consumer.tools.bench import BenchConfig, ModeResult, ProcStats, _report, _text, run_rounds


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


def test_rate_half_runs_each_round_at_half_the_backlog_rate_it_just_measured() -> None:
    """`--rate half`: the maximum is the pipeline's backlog rate of the same round."""
    backlog = iter([9000.0, 7000.0])
    calls: list[tuple[str, float | None]] = []

    def run(mode: str, cfg: BenchConfig) -> ModeResult:
        calls.append((mode, cfg.rate))
        speed = next(backlog) if cfg.rate is None else cfg.rate
        result = _run(mode, speed, 0)
        result.rate = cfg.rate
        return result

    cfg = BenchConfig(modes=("pipeline",), rounds=2, rate_of_max=0.5)
    results = run_rounds(cfg, run)
    assert calls == [("pipeline", None), ("pipeline", 4500), ("pipeline", None), ("pipeline", 3500)]
    assert [r.round for r in results] == [1, 1, 2, 2]
    text = _text(_report(results, Settings(), cfg))
    assert "backlog, then 0.5 of the pipeline's backlog rate" in text
    assert "pipeline@4500/s#1" in text
    assert "pipeline@3500/s#2" in text
    assert "pipeline#1 " in text  # the backlog run, unmarked


def test_tail_latency_is_reported_per_round_and_as_the_median_of_runs_at_a_rate() -> None:
    """A backlog's latency is the time to drain it: only the runs at a rate count."""
    results = []
    for n, (p99, p999) in enumerate([(61.0, 131.0), (130.0, 175.0), (65.0, 69.0)], start=1):
        backlog = _run("pipeline", 20000, n)
        backlog.latency_ms = {"p99": 14000.0, "p99.9": 14500.0}
        at_rate = _run("pipeline", 10000, n)
        at_rate.rate = 10000
        at_rate.latency_ms = {"p99": p99, "p99.9": p999}
        results += [backlog, at_rate]
    cfg = BenchConfig(modes=("pipeline",), rounds=3, rate_of_max=0.5)
    report = _report(results, Settings(), cfg)
    assert report["latency"]["pipeline"]["p99"] == {"median": 65.0, "rounds": [61.0, 130.0, 65.0]}
    assert report["latency"]["pipeline"]["p99.9"]["median"] == 131.0
    text = _text(report)
    assert "pipeline p99 latency at a rate: 65 ms (median of 3 rounds: 61, 130, 65)" in text
    assert "pipeline p99.9 latency at a rate: 131 ms" in text


def test_a_backlog_alone_reports_no_tail_latency() -> None:
    runs = [_run("pipeline", 6000, 1)]
    runs[0].latency_ms = {"p99": 9000.0, "p99.9": 9100.0}
    report = _report(runs, Settings(), BenchConfig(modes=("pipeline",)))
    assert report["latency"] == {}
    assert "latency at a rate" not in _text(report)


def test_rates_at_a_fixed_rate_keep_their_ratios_and_labels() -> None:
    runs = [_run("pipeline", 6000, 1), _run("pass-through", 6000, 1)]
    for r in runs:
        r.rate = 6000
    cfg = BenchConfig(modes=("pipeline", "pass-through"), rate=6000)
    text = _text(_report(runs, Settings(), cfg))
    assert "rate 6000 records/s" in text
    assert "@" not in text
    assert "pipeline / pass-through (records/s): 1.0" in text
