"""`bench`: the pipeline's throughput and latency against reference modes."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from consumer.commands import describe
from consumer.errors import ConfigError
from consumer.settings import DEFAULT_BATCH_MAX_RECORDS, Settings


def add_arguments(parser: argparse.ArgumentParser, summary: str) -> None:
    describe(
        parser,
        summary,
        reads="REDIS_URL, DATABASE_URL (PostgreSQL for numbers that mean something)",
        details="Modes: pipeline (the real flow), per-message (a naive one-message-at-a-time "
        "port), pass-through (consume and republish, no Redis or database: the ceiling), "
        "single (the pipeline with one member alone; not run unless named). "
        "See docs/benchmarks.md.",
        examples="  python -m consumer bench\n"
        "  python -m consumer bench --records 20000 --modes pipeline,pass-through\n"
        "  python -m consumer bench --messages-per-webhook 1-3 --modes pipeline,single\n"
        "  python -m consumer bench --statuses-per-message 3 --modes pipeline,pass-through\n"
        "  python -m consumer bench --redis-cluster --records 20000 --modes pipeline",
    )
    parser.add_argument("--records", type=int, default=200_000, help="inbound records")
    parser.add_argument("--dup-ratio", type=float, default=0.3, help="share of duplicates")
    parser.add_argument("--partitions", type=int, default=4, help="inbound partitions")
    parser.add_argument("--consumers", type=int, default=2, help="consumer processes")
    parser.add_argument(
        "--rate",
        metavar="RECORDS_PER_S or half",
        help="produce at this many records/s while consuming (latency); 'half': each "
        "round first drains a backlog with the pipeline, then runs the modes at half the "
        "rate it reached; default: produce a backlog first, then drain",
    )
    parser.add_argument(
        "--modes",
        default="pipeline,per-message,pass-through",
        help="comma-separated: pipeline, per-message, pass-through, single",
    )
    parser.add_argument(
        "--messages-per-webhook",
        default="1",
        metavar="N or LO-HI",
        help="messages in each webhook record (LO-HI: drawn per record); default 1",
    )
    parser.add_argument(
        "--statuses-per-message",
        type=int,
        default=0,
        metavar="S",
        help="Meta's real mix: S records of one status update each (sent, delivered, "
        "read, ...) for every message record (3 is Meta's usual); default 0: messages only",
    )
    parser.add_argument(
        "--per-message-records",
        type=int,
        default=5_000,
        help="records for the (slow) per-message mode",
    )
    parser.add_argument(
        "--batch-max-records",
        type=int,
        default=DEFAULT_BATCH_MAX_RECORDS,
        help="BATCH_MAX_RECORDS of the members (default: the service's own)",
    )
    parser.add_argument(
        "--bootstrap",
        help="an existing broker (default: KAFKA_BOOTSTRAP_SERVERS when set, else one "
        "started for the run, as --broker says)",
    )
    parser.add_argument(
        "--broker",
        choices=("tansu", "apache"),
        default="tansu",
        help="the broker to start, or the kind of the one named: Tansu (the embedded "
        "default) or Apache Kafka (KRaft, one node, jars fetched with Maven; "
        "TEST_KAFKA_VERSION picks the version)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="per mode, seconds")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the modes this many times, interleaved; each ratio is the median of "
        "the rounds' (a host whose speed drifts moves both sides alike)",
    )
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        help="run every mode twice in each round: against the one Redis and against a "
        "Redis Cluster started for the run (3 masters, 3 replicas, REDIS_MODE=cluster), "
        "reported side by side with the ratio cluster / one Redis (records/s, p99, Redis "
        "CPU per record summed over the nodes); needs redis-cli beside redis-server",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="sample every consumer with py-spy into DIR (py-spy installed)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _statuses(value: int) -> int:
    if not 0 <= value <= 5:
        raise ConfigError("--statuses-per-message", f"must be 0 to 5, not {value}")
    return value


def run(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.tools import bench

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = set(modes) - set(bench.MODES)
    if unknown:
        raise ConfigError("--modes", f"unknown mode(s) {sorted(unknown)}; use {bench.MODES}")
    if args.rounds < 1:
        raise ConfigError("--rounds", f"must be at least 1, not {args.rounds}")
    rate, rate_of_max = _rate(args.rate)
    cfg = bench.BenchConfig(
        rounds=args.rounds,
        redis_cluster=args.redis_cluster,
        messages_per_webhook=_span("--messages-per-webhook", args.messages_per_webhook),
        statuses_per_message=_statuses(args.statuses_per_message),
        records=args.records,
        dup_ratio=args.dup_ratio,
        partitions=args.partitions,
        consumers=args.consumers,
        rate=rate,
        rate_of_max=rate_of_max,
        modes=modes,
        per_message_records=args.per_message_records,
        batch_max_records=args.batch_max_records,
        bootstrap=args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None,
        broker=args.broker,
        timeout_s=args.timeout,
        profile_dir=Path(args.profile) if args.profile else None,
    )
    return bench.main(settings, cfg, as_json=args.json)


def _rate(raw: str | None) -> tuple[float | None, float | None]:
    """`--rate`: (records/s, None), (None, 0.5) for `half`, or (None, None): a backlog."""
    if raw is None:
        return None, None
    if raw.strip().lower() == "half":
        return None, 0.5
    try:
        rate = float(raw)
    except ValueError:
        raise ConfigError("--rate", f"expected records/s or 'half', got {raw!r}") from None
    if not (math.isfinite(rate) and rate > 0):
        raise ConfigError("--rate", f"must be a positive number of records/s, not {raw!r}")
    return rate, None


def _span(option: str, raw: str) -> tuple[int, int]:
    """`N` or `LO-HI` as (lo, hi), both at least 1."""
    lo, _, hi = raw.partition("-")
    try:
        span = (int(lo), int(hi or lo))
    except ValueError:
        raise ConfigError(option, f"expected N or LO-HI, got {raw!r}") from None
    if not 1 <= span[0] <= span[1]:
        raise ConfigError(option, f"expected 1 <= LO <= HI, got {raw!r}")
    return span
