"""Move the database's clock for tests: make the outbox's times older.

Outbox claims and ages are set and compared with the database's own time (docs/design.md,
rule 12), so a test cannot hand the store a clock. Instead it moves the rows: shifting
`created_at` and `claimed_until` back by N seconds is, for every comparison the store
makes, the same as the database's clock moving N seconds on.
"""

from __future__ import annotations

import sqlalchemy as sa

from consumer.schema import outbox
from consumer.store import Store


async def pass_time(store: Store, seconds: float) -> None:
    """As if `seconds` went by on the database's clock, for every outbox row."""
    if store.engine.dialect.name == "sqlite":
        shift = f"{-seconds:+.3f} seconds"

        def back(column: sa.ColumnElement[object]) -> sa.ColumnElement[object]:
            return sa.func.strftime("%Y-%m-%d %H:%M:%f", column, shift)
    else:
        interval = sa.func.make_interval(0, 0, 0, 0, 0, 0, seconds)

        def back(column: sa.ColumnElement[object]) -> sa.ColumnElement[object]:
            return column - interval

    stmt = sa.update(outbox).values(
        created_at=back(outbox.c.created_at),
        claimed_until=sa.case(
            (outbox.c.claimed_until.is_(None), None), else_=back(outbox.c.claimed_until)
        ),
    )
    async with store.engine.begin() as conn:
        await conn.execute(stmt)
