"""The cyclic garbage collector, tuned for a member process: untuned, it took a visible
share of a member's CPU (docs/benchmarks.md, round three)."""

from __future__ import annotations

import gc

# Allocations between two collections of the youngest generation (the interpreter's
# default is 700).
YOUNG_THRESHOLD = 20_000


def tune_collector() -> None:
    """Keep the collector off the hot path of a started member.

    What startup built (modules, clients, the engine) lives as long as the process:
    frozen, later full collections do not walk it again. A batch allocates tens of
    thousands of short-lived objects (decoded webhooks, rows, events) that reference
    counting frees when the batch ends; with the default threshold the collector ran
    every few records and walked each live batch several times over. Garbage in
    reference cycles is still collected, only in larger steps.
    """
    gc.collect()
    gc.freeze()
    _young, *older = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, *older)
