"""Fuzz ``intake.decode``: ``python -m tests.fuzz.decoder --cases 50000``.

Runs the generators of tests/fuzz/generators.py through Hypothesis (generation only, no
shrinking: every case is run and counted) and checks each outcome against
tests/fuzz/contract.py: no exception escapes, every refusal is an Invalid with a Reason
(not ``internal_error``), every accepted webhook satisfies the limits and can be stored
and announced. Prints the cases run, the outcomes by reason, the cases per generator, the
time per case and the slowest case (its generator, size, depth and outcome), and exits 1
on an escaped exception, a contract violation, or a case of at most 256 KiB slower than
``--time-bound`` seconds (a report, not a timed test: the machine may be shared).
"""

from __future__ import annotations

import argparse
import collections
import gc
import statistics
import sys
import time
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from consumer import intake
from consumer.records import InboundRecord, Invalid, Webhook
from tests.fuzz import contract, generators
from tests.fuzz.generators import Case
from tests.support.bodies import json_depth

# MAX_RECORD_BYTES of the fuzzing: 256 KiB, the former default (now 3 MiB). The decoder's
# rules do not change with the size; cases near the limit stay quick to make.
DEFAULT_MAX_BYTES = 256 * 1024
BOUNDED_SIZE = 256 * 1024
SHOWN_FAILURES = 5
FULL_COLLECTION_EVERY = 500


@dataclass(frozen=True, slots=True)
class Result:
    """One case run: its outcome's label, the time decode took, what is wrong."""

    case: Case
    label: str
    seconds: float
    messages: int
    problems: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.case.value or b"")

    def describe(self) -> str:
        what = f"{self.label} ({self.messages} messages)" if self.label == "webhook" else self.label
        return (
            f"{self.seconds * 1000:.1f} ms: generator {self.case.kind}, {self.size} bytes, "
            f"depth {json_depth(self.case.value or b'')}, {what}"
        )


def examine(case: Case, max_bytes: int, offset: int = 0) -> Result:
    """Decode one case, time it, and check the outcome against the contract.

    The objects alive before the decode (Hypothesis keeps many) are frozen out of the
    garbage collector while it runs: a collection then walks what intake allocated, not
    the fuzzer's heap, and the time is intake's own. (Unfrozen, they all land in the
    oldest generation; the young ones are collected first, and the caller collects in
    full now and then, or the generator's garbage cycles would pile up there.)"""
    record = InboundRecord("fuzz", 0, offset, None, case.value, case.headers, 0)
    gc.collect(1)
    gc.freeze()
    start = time.perf_counter()
    try:
        outcome = intake.decode(record, max_bytes=max_bytes, app_secret=case.app_secret)
    except Exception as exc:  # noqa: BLE001 - an escaped exception is the finding
        seconds = time.perf_counter() - start
        problem = f"intake.decode raised {type(exc).__name__}: {exc}"
        return Result(case, "raised", seconds, 0, (problem,))
    finally:
        gc.unfreeze()
    seconds = time.perf_counter() - start
    if isinstance(outcome, Webhook):
        label, messages = "webhook", len(outcome.messages)
    elif isinstance(outcome, Invalid):
        label, messages = str(outcome.reason), 0
    else:
        label, messages = type(outcome).__name__, 0
    return Result(case, label, seconds, messages, tuple(contract.problems(record, outcome)))


@dataclass
class Report:
    """What a run saw."""

    max_bytes: int
    seed: int | None
    time_bound: float
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    messages: int = 0
    times: list[float] = field(default_factory=list)
    slowest: Result | None = None
    slowest_accepted: Result | None = None
    slowest_refused: Result | None = None
    slowest_bounded: Result | None = None
    failures: list[Result] = field(default_factory=list)
    failure_count: int = 0

    @property
    def cases(self) -> int:
        return len(self.times)

    def add(self, result: Result) -> None:
        self.times.append(result.seconds)
        if len(self.times) % FULL_COLLECTION_EVERY == 0:
            gc.collect()  # see examine()
        self.outcomes[result.label] += 1
        self.kinds[result.case.kind] += 1
        self.messages += result.messages
        self.slowest = _slower(self.slowest, result)
        if result.label == "webhook":
            self.slowest_accepted = _slower(self.slowest_accepted, result)
        else:
            self.slowest_refused = _slower(self.slowest_refused, result)
        if result.size <= BOUNDED_SIZE:
            self.slowest_bounded = _slower(self.slowest_bounded, result)
        if result.problems:
            self.failure_count += 1
            self.failures.append(result)
            self.failures.sort(key=lambda r: r.size)
            del self.failures[SHOWN_FAILURES:]

    @property
    def too_slow(self) -> bool:
        return self.slowest_bounded is not None and self.slowest_bounded.seconds > self.time_bound

    @property
    def passed(self) -> bool:
        return not self.failure_count and not self.too_slow

    def render(self, total_seconds: float) -> str:
        lines = [
            f"intake.decode fuzz: {self.cases} cases, max_bytes={self.max_bytes}, "
            f"seed={self.seed if self.seed is not None else 'random'}",
            "outcomes by reason:",
            *(f"  {label:<26}{n:>8}" for label, n in sorted(self.outcomes.items())),
            f"  (accepted webhooks held {self.messages} messages)",
            "cases by generator:",
            *(f"  {kind:<26}{n:>8}" for kind, n in sorted(self.kinds.items()) if n),
        ]
        if self.times:
            ordered = sorted(self.times)
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            lines.append(
                f"time per case: median {statistics.median(ordered) * 1000:.3f} ms, "
                f"p99 {p99 * 1000:.3f} ms, max {ordered[-1] * 1000:.1f} ms"
            )
        for name, result in (
            ("slowest case", self.slowest),
            ("slowest accepted", self.slowest_accepted),
            ("slowest refused", self.slowest_refused),
        ):
            lines.append(f"{name}: {result.describe() if result else 'none'}")
        if self.slowest_bounded is not None:
            verdict = "TOO SLOW" if self.too_slow else "ok"
            lines.append(
                f"bound: slowest case of <= 256 KiB took "
                f"{self.slowest_bounded.seconds * 1000:.1f} ms "
                f"(bound {self.time_bound * 1000:.0f} ms): {verdict}"
            )
        raised = self.outcomes["raised"]
        lines.append(
            f"escaped exceptions: {raised}; cases violating the contract: {self.failure_count}"
        )
        lines.extend(_failure_lines(self.failures))
        lines.append(f"total time: {total_seconds:.1f} s")
        lines.append(f"result: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


def _slower(current: Result | None, candidate: Result) -> Result:
    return candidate if current is None or candidate.seconds > current.seconds else current


def _failure_lines(failures: list[Result]) -> list[str]:
    lines = []
    for result in failures:
        value = result.case.value
        shown = repr(value) if value is None or len(value) <= 2000 else repr(value[:2000]) + "..."
        lines.append(f"FAILED ({result.case.kind}, {result.size} bytes, {result.label}):")
        lines.extend(f"    {p}" for p in result.problems[:5])
        if result.case.app_secret:
            lines.append(
                f"    app_secret={result.case.app_secret!r} headers={result.case.headers!r}"
            )
        lines.append(f"    value = {shown}")
    return lines


def run(cases: int, max_bytes: int, seed: int | None, time_bound: float) -> Report:
    """Run at least `cases` generated cases through decode, each family its share
    (generators.SHARES), the rest as a mix; every case is run, none shrunk."""
    report = Report(max_bytes, seed, time_bound)
    strategies = generators.families(max_bytes)
    for case in generators.FIXED_CASES:
        report.add(examine(case, max_bytes, report.cases))
    for name, share in generators.SHARES.items():
        run_strategy(report, strategies[name], round(cases * share))
    while report.cases < cases:
        before = report.cases
        run_strategy(report, generators.mixed(max_bytes), cases - report.cases)
        if report.cases == before:
            break
    return report


def run_strategy(report: Report, strategy: st.SearchStrategy[Case], cases: int) -> None:
    """Up to `cases` examples of `strategy` (fewer if Hypothesis exhausts it)."""

    @settings(
        max_examples=max(1, cases),
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(strategy)
    def one(case: Case) -> None:
        report.add(examine(case, report.max_bytes, report.cases))

    if report.seed is not None:
        one = hypothesis_seed(report.seed)(one)
    one()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.decoder", description=__doc__)
    parser.add_argument("--cases", type=int, default=50_000, help="cases to run (50000)")
    parser.add_argument(
        "--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="MAX_RECORD_BYTES (default 262144)"
    )
    parser.add_argument("--seed", type=int, default=None, help="Hypothesis seed (random)")
    parser.add_argument(
        "--time-bound", type=float, default=0.5, help="slowest case of <= 256 KiB, s (0.5)"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    report = run(args.cases, args.max_bytes, args.seed, args.time_bound)
    print(report.render(time.perf_counter() - start))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
