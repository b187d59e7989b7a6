"""The collector tuning of a member process (consumer/gctune.py). It changes the whole
interpreter, so each check runs in a fresh one."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_startup_objects_are_frozen_and_the_young_generation_grows() -> None:
    out = _run(
        """
        import gc
        from consumer.gctune import YOUNG_THRESHOLD, tune_collector
        before = gc.get_threshold()
        tune_collector()
        after = gc.get_threshold()
        assert after == (YOUNG_THRESHOLD, *before[1:]), (before, after)
        assert gc.get_freeze_count() > 1000, gc.get_freeze_count()
        print("ok")
        """
    )
    assert out == "ok"


def test_garbage_in_cycles_is_still_collected_without_an_explicit_collect() -> None:
    # A member never calls gc.collect() after startup: cycles made while it runs (an
    # exception's traceback holds its frame, which holds the exception) must still go.
    out = _run(
        """
        import gc, weakref
        from consumer.gctune import YOUNG_THRESHOLD, tune_collector
        tune_collector()

        class Node:
            pass

        gone = []
        for _ in range(100):
            a, b = Node(), Node()
            a.other, b.other = b, a
            weakref.finalize(a, gone.append, 1)
            del a, b
        # Objects that live a while, as a batch's do (a count of allocations minus
        # deallocations triggers a collection).
        batch = [[0] for _ in range(2 * YOUNG_THRESHOLD)]
        print(len(gone))
        """
    )
    assert out == "100"
