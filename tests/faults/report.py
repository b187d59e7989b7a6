"""Render the fault suite's figures (FAULT_REPORT JSON lines) as a Markdown table.

FAULT_REPORT=/tmp/faults.jsonl python -m pytest tests/faults
python -m tests.faults.report /tmp/faults.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [
    ("fault", "fault"),
    ("broker", "broker"),
    ("messages", "messages"),
    ("duplicates_injected", "dups in"),
    ("poison", "poison"),
    ("rows", "rows"),
    ("events", "events"),
    ("duplicate_events", "dup events"),
    ("lost", "lost"),
    ("phantom_events", "phantom"),
    ("dead_lettered", "DLQ"),
    ("lock_conflicts", "lease held"),
    ("insert_conflicts", "insert conflicts"),
    ("rebalances", "revocations"),
    ("relay_republished", "relay"),
    ("statuses", "statuses"),
    ("status_duplicates_injected", "status dups in"),
    ("statuses_announced", "announced"),
    ("statuses_stale", "stale"),
    ("status_events", "status events"),
    ("duplicate_status_events", "dup status events"),
    ("drain_s", "drain s"),
]


def render(lines: list[dict[str, object]]) -> str:
    head = "| " + " | ".join(title for _, title in COLUMNS) + " | crash |"
    rule = "|" + "---|" * (len(COLUMNS) + 1)
    rows = [
        "| "
        + " | ".join(str(d.get(key, "")) for key, _ in COLUMNS)
        + f" | {'yes' if d['crash'] else 'no'} |"
        for d in lines
    ]
    return "\n".join([head, rule, *rows])


def main(argv: list[str]) -> int:
    lines = [json.loads(x) for x in Path(argv[1]).read_text().splitlines() if x.strip()]
    print(render(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
