"""The bench's report: ratios within each round, the median over the rounds."""

from __future__ import annotations

import argparse
import collections

import pytest

from consumer import intake
from consumer.records import Webhook
from consumer.settings import Settings
from consumer.testing import record
from consumer.tools.bench import (
    BenchConfig,
    ModeResult,
    ProcStats,
    _report,
    _text,
    make_records,
    run_rounds,
)


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


def _pair(mode: str, n: int, standalone: float, cluster: float) -> list[ModeResult]:
    """One round of a mode against the one Redis and the cluster."""
    out = []
    for redis, speed in (("standalone", standalone), ("cluster", cluster)):
        r = _run(mode, speed, n)
        r.redis = redis
        r.latency_ms = {"p99": 1000 / speed * 100, "p99.9": 1000 / speed * 200}
        r.cpu_us_per_record = {"consumers": 80.0, "redis": 10.0 if redis == "standalone" else 15.0}
        out.append(r)
    return out


def test_redis_cluster_runs_each_mode_against_both_interleaved() -> None:
    calls: list[tuple[str, str]] = []

    def run(mode: str, cfg: BenchConfig) -> ModeResult:
        calls.append((mode, cfg.redis))
        return _run(mode, 1000, 0)

    cfg = BenchConfig(modes=("pipeline", "pass-through"), rounds=2, redis_cluster=True)
    results = run_rounds(cfg, run)
    pairs = [
        ("pipeline", "standalone"),
        ("pipeline", "cluster"),
        ("pass-through", "standalone"),
        ("pass-through", "cluster"),
    ]
    assert calls == pairs * 2
    assert [(r.mode, r.redis, r.round) for r in results] == [
        (m, redis, n) for n in (1, 2) for m, redis in pairs
    ]


def test_redis_cluster_is_reported_beside_the_one_redis_with_the_ratio() -> None:
    runs = _pair("pipeline", 1, 10000, 8000) + _pair("pipeline", 2, 6000, 6000)
    runs += [_run("pass-through", 12000, 1), _run("pass-through", 10000, 2)]
    cfg = BenchConfig(modes=("pipeline",), rounds=2, redis_cluster=True)
    report = _report(runs, Settings(), cfg)
    compared = report["redis_cluster"]["pipeline"]
    assert compared["records_per_s"] == {
        "standalone": 8000.0,
        "cluster": 7000.0,
        "ratio": 0.9,
        "ratios_per_round": [0.8, 1.0],
    }
    assert compared["redis_cpu_us_per_record"]["ratio"] == 1.5
    assert compared["p99_ms"]["ratios_per_round"] == [1.25, 1.0]
    # The ratios of the modes stay the one Redis's.
    assert report["ratios_per_round"]["pipeline / pass-through (records/s)"] == [0.833, 0.6]
    assert report["config"]["redis_cluster"] is True
    assert "redis" not in report["config"]
    text = _text(report)
    assert "one Redis and a Redis Cluster (3 masters, 3 replicas)" in text
    assert "pipeline/redis#1" in text
    assert "pipeline/cluster#2" in text
    assert "pipeline records/s: 8000 / 7000 = 0.900 (rounds: 0.8, 1.0)" in text
    assert "pipeline Redis CPU µs/record: 10 / 15 = 1.500" in text


def test_without_redis_cluster_the_report_has_no_trace_of_it() -> None:
    runs = [_run("pipeline", 6000, 1)]
    report = _report(runs, Settings(), BenchConfig(modes=("pipeline",)))
    assert "redis_cluster" not in report
    assert "redis_cluster" not in report["config"]
    assert "redis" not in report["config"]
    assert "redis" not in report["modes"][0]
    text = _text(report)
    assert "cluster" not in text.lower()
    assert "pipeline/redis" not in text


def test_the_redis_cluster_option_reaches_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from consumer.commands import bench as command
    from consumer.tools import bench

    seen: list[BenchConfig] = []

    def main(_settings: Settings, cfg: BenchConfig, *, as_json: bool) -> int:
        seen.append(cfg)
        return 0

    monkeypatch.setattr(bench, "main", main)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser, "bench")
    for argv, expected in (([], False), (["--redis-cluster"], True)):
        args = parser.parse_args([*argv, "--records", "100", "--modes", "pipeline"])
        assert command.run(Settings(), args) == 0
        assert seen[-1].redis_cluster is expected


def test_redis_cluster_under_rate_half_compares_the_runs_at_the_rate() -> None:
    """The round's backlog (the one Redis's, setting the rate) is left out of the pairs."""
    backlog = _run("pipeline", 9000, 1)
    pairs = _pair("pipeline", 1, 4500, 4000)
    for r in pairs:
        r.rate = 4500
    cfg = BenchConfig(modes=("pipeline",), redis_cluster=True, rate_of_max=0.5)
    report = _report([backlog, *pairs], Settings(), cfg)
    assert report["redis_cluster"]["pipeline"]["records_per_s"]["standalone"] == 4500.0
    assert report["redis_cluster"]["pipeline"]["records_per_s"]["ratio"] == 0.889


def test_the_status_mix_workload_holds_three_statuses_per_message() -> None:
    """--statuses-per-message 3: a quarter of the unique records hold a message, the
    rest one status each (sent, delivered, read of a message the business sent), every
    record a valid webhook; duplicates re-deliver bodies of both kinds."""
    records, unique_messages = make_records(400, 0.25, 4, "t", statuses_per_message=3)
    assert len(records) == 400
    hooks = [intake.decode(record(body), max_bytes=1 << 20) for _, body in records]
    assert all(isinstance(h, Webhook) for h in hooks)
    webhooks = [h for h in hooks if isinstance(h, Webhook)]
    distinct = {body for _, body in records}
    assert len(distinct) == 300
    messages = {m.key for h in webhooks for m in h.messages}
    statuses = {u.key for h in webhooks for u in h.statuses}
    assert len(messages) == unique_messages == 75
    assert len(statuses) == 225
    words = collections.Counter(k.status for k in statuses)
    assert words == {"sent": 75, "delivered": 75, "read": 75}
