"""Late commits under load: 8 and 12 concurrent writers with random commit delays while three watches poll."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from airflow_trigger_kit.sources.postgres import PostgresSource
from tests.conftest import PgDatabase
from tests.integration.test_postgres_support import ORDERS_DDL, execute, persisted, source

pytestmark = pytest.mark.integration

WRITERS = 8
ROWS = 20_000


@dataclass
class Watch:
    label: str
    source: PostgresSource
    cursor: Any = None
    seen: Counter[int] = field(default_factory=Counter)
    late: int = 0
    polls: int = 0
    largest_cursor: int = 0

    async def poll_once(self) -> int:
        batch = await self.source.poll(self.cursor, 2000)
        self.polls += 1
        self.cursor = persisted(batch.cursor)
        self.largest_cursor = max(self.largest_cursor, len(str(self.cursor)))
        for item in batch.items:
            self.seen[int(item.data["key"]["id"])] += 1  # type: ignore[index, call-overload]
            self.late += bool(item.data.get("late"))
        return len(batch.items)

    def report(self, expected: set[int]) -> tuple[int, int]:
        skipped = len(expected - set(self.seen))
        duplicates = sum(self.seen.values()) - len(self.seen)
        print(
            f"{self.label:<34} rows={sum(self.seen.values()):>6} unique={len(self.seen):>6} skipped={skipped:>5} "
            f"duplicates={duplicates:>5} late-found={self.late:>5} polls={self.polls:>4} "
            f"largest-cursor={self.largest_cursor}B"
        )
        return skipped, duplicates


async def writer(dsn: str, number: int, quota: int, rng: random.Random) -> None:
    """Transactions of 1-30 rows whose ``now()`` is taken before a random pause and commit delay."""
    conn = await asyncpg.connect(dsn)
    try:
        left = quota
        while left:
            k = min(left, rng.randint(1, 30))
            tx = conn.transaction()
            await tx.start()  # now() is fixed here
            await asyncio.sleep(rng.uniform(0, 0.02))
            await conn.execute(
                "INSERT INTO orders (customer, amount) SELECT $1, g FROM generate_series(1, $2::int) AS g",
                f"writer-{number}",
                k,
            )
            await asyncio.sleep(rng.uniform(0, 0.04))  # commit delay: later rows commit first meanwhile
            await tx.commit()
            left -= k
    finally:
        await conn.close()


@pytest.mark.parametrize("writers", [WRITERS, 12], ids=["8-writers", "12-writers"])
async def test_concurrent_writers_with_random_commit_delays_skip_nothing(pg_db: PgDatabase, writers: int) -> None:
    await execute(pg_db.dsn, ORDERS_DDL)
    watches = [
        Watch(
            "default (lookback 300 s on updated_at)",
            source(pg_db.dsn, table="orders", watermark_columns=["updated_at"]),
        ),
        Watch("xid_column (exact)", source(pg_db.dsn, table="orders", xid_column="xmin8")),
        Watch(
            "plain keyset (lookback=0)", source(pg_db.dsn, table="orders", watermark_columns=["updated_at"], lookback=0)
        ),
    ]
    for w in watches:
        w.cursor = persisted(await w.source.baseline())
    started = time.monotonic()
    writing = asyncio.gather(
        *(writer(pg_db.dsn, n, ROWS // writers, random.Random(n)) for n in range(writers)),
    )

    async def keep_polling(w: Watch) -> None:
        while not writing.done():
            if not await w.poll_once():
                await asyncio.sleep(0.02)
        while await w.poll_once():  # drain what committed last
            pass

    try:
        await asyncio.gather(writing, *(keep_polling(w) for w in watches))
    finally:
        for w in watches:
            await w.source.aclose()
    elapsed = time.monotonic() - started

    total = ROWS // writers * writers
    expected = set(range(1, total + 1))
    assert await _count(pg_db.dsn) == total
    print(f"\n{writers} writers inserted {total} rows in {elapsed:.1f}s while three watches polled:")
    results = {w.label: w.report(expected) for w in watches}
    default_skipped, default_dups = results[watches[0].label]
    xid_skipped, xid_dups = results[watches[1].label]
    plain_skipped, _ = results[watches[2].label]
    assert default_skipped == 0, "the default (lookback) watch must not skip committed rows"
    assert xid_skipped == 0 and xid_dups == 0, "the xid_column watch is exact"
    assert plain_skipped > 0, "the load must produce late commits, or this test proves nothing"
    assert watches[0].late > 0, "the lookback window found late rows"
    assert default_dups <= total


async def _count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM orders"))
    finally:
        await conn.close()
