"""Model-based test of the Postgres watermark cursor against a real PostgreSQL (Hypothesis).

Random interleavings of inserts, overwrites and deletes in up to three concurrent transactions
(held open, so their rows commit *late*, after rows with larger watermark values were already
read), autocommitted writes, polls with random ``max_items``, polls lost in a crash (the cursor is
not committed), restarts (a new :class:`PostgresSource` from the committed, JSON-persisted cursor)
and re-baselines (``start_from="now"``), checked against a model of what was committed:

* after every drain, every row version that is committed and current (not overwritten or deleted
  since) was delivered by a committed batch — except, with ``lookback``, versions whose value was
  taken ``lookback`` or more before their commit (the documented limit of that strategy), and, with
  ``xid_column``, versions whose transaction id is not yet below the snapshot's xmin (they are
  reported later, never skipped);
* every report of a version carries its first dedup id, and two versions never share one;
* with ``xid_column`` no version is delivered twice by committed batches (exact).

Watermark values are explicit timestamps from a model clock (``T0`` + milliseconds), so the
``lookback`` arithmetic is deterministic. Only the public source API is used (``PostgresWatchConfig``,
``PostgresSource``, ``baseline``, ``poll``, ``aclose``): the test is a safety net for reworking the
window code. Each example gets its own table in the test's database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import asyncpg
import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule, run_state_machine_as_test

from airflow_trigger_kit.sources.base import Batch
from airflow_trigger_kit.sources.postgres import PostgresSource, PostgresWatchConfig
from tests.conftest import PgDatabase
from tests.integration.test_postgres_support import persisted
from tests.model_support import CursorModel, model_settings

pytestmark = pytest.mark.integration

T = TypeVar("T")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
WRITERS = 3
STEPS_MS = (0, 1, 250, 2000)
"""How far the model clock moves before a write: several rows share a value, or it jumps."""
Change = tuple[int, int]
"""A row version: (id, v) where v is unique per write."""


@dataclass
class Version:
    id: int
    v: int
    value_ms: int
    xid: int = 0


@dataclass
class Writer:
    conn: asyncpg.Connection
    tx: Any = None
    pending: dict[int, Version | None] = field(default_factory=dict)
    """Row id -> its version inside this transaction (None: deleted by it)."""

    @property
    def open(self) -> bool:
        return self.tx is not None


class PostgresCursorModel(CursorModel):
    """One watch over one table; see the module docstring for the properties."""

    drain_max_items = 500
    drain_limit = 10_000
    dsn: ClassVar[str]
    mode: ClassVar[str]
    """``lookback`` (default 300 s), ``short_lookback`` (5 s: windows expire), ``xid`` (xid_column)."""
    source_lookback: ClassVar[float | None] = None
    """Overrides the source's ``lookback`` (and only the source's: the model still expects 300 s)."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.table = f"model_{uuid.uuid4().hex[:12]}"
        self.admin: asyncpg.Connection = self.run(asyncpg.connect(self.dsn))
        self.writers = [Writer(self.run(asyncpg.connect(self.dsn))) for _ in range(WRITERS)]
        self.source: PostgresSource | None = None
        self.cursor: Any = None
        self.clock_ms = 0
        self.next_id = 1
        self.next_v = 1
        self.current: dict[int, Version] = {}
        """Committed state: row id -> its current version."""
        self.exempt: set[Change] = set()
        """Versions committed ``lookback`` or more after their value was taken (may be skipped)."""
        self.at_baseline: set[Change] = set()
        self.polls = 0
        self.lookback_ms = {"lookback": 300_000, "short_lookback": 5_000, "xid": None}[self.mode]
        self.run(self._create_table())

    # -- plumbing -------------------------------------------------------------------------------
    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def _create_table(self) -> None:
        t = self.table
        await self.admin.execute(
            f"""
            CREATE TABLE {t} (
                id bigint PRIMARY KEY,
                v bigint NOT NULL,
                updated_at timestamptz NOT NULL,
                xmin8 xid8 NOT NULL DEFAULT pg_current_xact_id()
            );
            CREATE INDEX ON {t} (updated_at, id);
            CREATE INDEX ON {t} (xmin8, id);
            CREATE FUNCTION {t}_stamp() RETURNS trigger LANGUAGE plpgsql AS
              $$ BEGIN NEW.xmin8 := pg_current_xact_id(); RETURN NEW; END $$;
            CREATE TRIGGER {t}_stamp BEFORE UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION {t}_stamp();
            """
        )

    def new_source(self) -> PostgresSource:
        if self.mode == "xid":
            config = PostgresWatchConfig.create(table=self.table, xid_column="xmin8")
        else:
            lookback = None if self.mode == "lookback" else self.lookback_ms / 1000  # type: ignore[operator]
            if self.source_lookback is not None:
                lookback = self.source_lookback
            config = PostgresWatchConfig.create(table=self.table, watermark_columns=["updated_at"], lookback=lookback)
        return PostgresSource(config, {"dsn": self.dsn}, label="model")

    def value(self, ms: int) -> dt.datetime:
        return T0 + dt.timedelta(milliseconds=ms)

    def tick(self, step: int) -> int:
        self.clock_ms += step
        return self.clock_ms

    def writer(self, index: int) -> Writer | None:
        """An open transaction (by index among the open ones), or None for an autocommitted write."""
        open_writers = [w for w in self.writers if w.open]
        return open_writers[index % len(open_writers)] if open_writers and index >= 0 else None

    def locked(self) -> set[int]:
        """Rows an open transaction changed: writing them from elsewhere would wait for its lock."""
        return {rid for w in self.writers if w.open for rid in w.pending if rid in self.current}

    def visible_to(self, w: Writer | None) -> dict[int, Version]:
        rows = dict(self.current)
        if w is not None:
            for rid, version in w.pending.items():
                if version is None:
                    rows.pop(rid, None)
                else:
                    rows[rid] = version
        return rows

    def commit_versions(self, changes: dict[int, Version | None]) -> None:
        for rid, version in changes.items():
            if version is None:
                self.current.pop(rid, None)
                continue
            self.current[rid] = version
            if self.lookback_ms is not None and self.clock_ms - version.value_ms >= self.lookback_ms:
                self.exempt.add((version.id, version.v))

    async def _write(self, w: Writer | None, sql: str, *args: Any) -> int:
        conn = w.conn if w is not None else self.admin
        return int(await conn.fetchval(sql, *args))

    # -- setup ----------------------------------------------------------------------------------
    @initialize(rows=st.sampled_from([0, 3, 40, 1100]), start=st.sampled_from(["now", "beginning"]))
    def setup(self, rows: int, start: str) -> None:
        """Rows committed before the watch starts (1,100 make the baseline cut coarse segments)."""
        if rows:
            first = self.next_id
            self.run(
                self.admin.execute(
                    f"INSERT INTO {self.table} (id, v, updated_at) "
                    "SELECT g, g, $1::timestamptz + g * interval '1 millisecond' "
                    "FROM generate_series($2::bigint, $3::bigint) AS g",
                    self.value(0),
                    first,
                    first + rows - 1,
                )
            )
            for rid in range(first, first + rows):
                self.current[rid] = Version(rid, rid, rid)
            self.next_id = self.next_v = first + rows
            self.clock_ms = rows
        self.source = self.new_source()
        if start == "now":
            self.rebaseline()

    # -- writes ---------------------------------------------------------------------------------
    @precondition(lambda self: any(not w.open for w in self.writers))
    @rule()
    def begin(self) -> None:
        w = next(w for w in self.writers if not w.open)
        w.tx = w.conn.transaction()
        self.run(w.tx.start())
        w.pending = {}

    @rule(writer=st.integers(-1, WRITERS - 1), count=st.integers(1, 3), step=st.sampled_from(STEPS_MS))
    def insert(self, writer: int, count: int, step: int) -> None:
        w = self.writer(writer)
        changes: dict[int, Version | None] = {}
        for _ in range(count):
            ms = self.tick(step)
            version = Version(self.next_id, self.next_v, ms)
            self.next_id += 1
            self.next_v += 1
            version.xid = self.run(
                self._write(
                    w,
                    f"INSERT INTO {self.table} (id, v, updated_at) VALUES ($1, $2, $3) RETURNING xmin8::text::bigint",
                    version.id,
                    version.v,
                    self.value(ms),
                )
            )
            changes[version.id] = version
        self._record(w, changes)

    @rule(writer=st.integers(-1, WRITERS - 1), pick=st.integers(0, 10**6), step=st.sampled_from(STEPS_MS))
    def overwrite(self, writer: int, pick: int, step: int) -> None:
        """An update that moves the watermark (as ``updated_at = now()`` does) and the row's ``v``."""
        w = self.writer(writer)
        candidates = self._writable(w)
        if not candidates:
            return
        rid = candidates[pick % len(candidates)]
        ms = self.tick(max(step, 1))
        version = Version(rid, self.next_v, ms)
        self.next_v += 1
        version.xid = self.run(
            self._write(
                w,
                f"UPDATE {self.table} SET v = $2, updated_at = $3 WHERE id = $1 RETURNING xmin8::text::bigint",
                rid,
                version.v,
                self.value(ms),
            )
        )
        self._record(w, {rid: version})

    @rule(writer=st.integers(-1, WRITERS - 1), pick=st.integers(0, 10**6))
    def delete(self, writer: int, pick: int) -> None:
        w = self.writer(writer)
        candidates = self._writable(w)
        if not candidates:
            return
        rid = candidates[pick % len(candidates)]
        conn = w.conn if w is not None else self.admin
        self.run(conn.execute(f"DELETE FROM {self.table} WHERE id = $1", rid))
        self._record(w, {rid: None})

    def _writable(self, w: Writer | None) -> list[int]:
        locked = self.locked() - (set(w.pending) if w is not None else set())
        return sorted(rid for rid in self.visible_to(w) if rid not in locked)

    def _record(self, w: Writer | None, changes: dict[int, Version | None]) -> None:
        if w is None:
            self.commit_versions(changes)
        else:
            w.pending.update(changes)

    @precondition(lambda self: any(w.open for w in self.writers))
    @rule(writer=st.integers(0, WRITERS - 1), commit=st.booleans())
    def end(self, writer: int, commit: bool) -> None:
        """Commit (late, possibly after newer rows were read) or roll back an open transaction."""
        w = self.writer(writer)
        assert w is not None
        self.run(w.tx.commit() if commit else w.tx.rollback())
        if commit:
            self.commit_versions(w.pending)
        w.tx, w.pending = None, {}

    # -- the watch --------------------------------------------------------------------------------
    def poll_once(self, max_items: int, *, crash: bool = False) -> Batch:
        assert self.source is not None
        batch = self.run(self.source.poll(self.cursor, max_items))
        self.polls += 1
        assert len(batch.items) <= max_items
        for item in batch.items:
            row = item.data["row"]
            change = (int(row["id"]), int(row["v"]))
            self.log.reported(change, item.dedup_id, committed=not crash)
        if not crash:
            self.cursor = persisted(batch.cursor)
        return batch

    @rule()
    def restart(self) -> None:
        """The triggerer dies and another one resumes the watch from the committed cursor."""
        assert self.source is not None
        self.run(self.source.aclose())
        self.source = self.new_source()

    @rule()
    def rebaseline(self) -> None:
        """``start_from="now"`` (a new watch, or one reset): what is committed now counts as seen."""
        assert self.source is not None
        self.cursor = persisted(self.run(self.source.baseline()))
        self.at_baseline |= {(v.id, v.v) for v in self.current.values()}

    def before_drain(self) -> int:
        """The snapshot's xmin now: versions below it must be reported by the end of the drain."""
        xmin: int = self.run(self.admin.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"))
        return xmin

    def check_drained(self, xmin: int) -> None:
        """Every committed, current version was delivered (within the strategy's limits)."""
        required = [
            (v.id, v.v)
            for v in self.current.values()
            if (v.id, v.v) not in self.at_baseline
            and (v.id, v.v) not in self.exempt
            and (self.mode != "xid" or v.xid < xmin)
        ]
        self.log.assert_delivered(required, f"{self.mode} after {self.polls} polls")
        if self.mode == "xid":
            self.log.assert_exactly_once("xid_column")

    def teardown(self) -> None:
        try:
            for w in self.writers:
                if w.open:
                    self.run(w.tx.commit())
                    self.commit_versions(w.pending)
                    w.tx, w.pending = None, {}
            if self.source is not None:
                self.drain()
        finally:
            self.run(self._close())
            self.loop.close()

    async def _close(self) -> None:
        if self.source is not None:
            await self.source.aclose()
        for w in self.writers:
            await w.conn.close()
        await self.admin.execute(f"DROP TABLE IF EXISTS {self.table}; DROP FUNCTION IF EXISTS {self.table}_stamp()")
        await self.admin.close()


def run_model(pg_db: PgDatabase, mode: str, max_examples: int, **attrs: Any) -> None:
    machine = type(f"PostgresCursorModel_{mode}", (PostgresCursorModel,), {"dsn": pg_db.dsn, "mode": mode, **attrs})
    run_state_machine_as_test(machine, settings=model_settings(max_examples, steps=30))


def test_the_model_catches_the_plain_keyset_skipping_a_late_commit(pg_db: PgDatabase) -> None:
    """The check has teeth: ``lookback=0`` (the plain keyset cursor) skips late commits, and the model
    finds one. Derandomized and without shrinking, so it is deterministic and quick."""
    attrs = {"dsn": pg_db.dsn, "mode": "lookback", "source_lookback": 0.0}
    machine = type("PostgresCursorModel_keyset", (PostgresCursorModel,), attrs)
    deterministic = settings(model_settings(100, steps=30), derandomize=True, database=None, phases=[Phase.generate])
    with pytest.raises(AssertionError, match="committed change\\(s\\) never delivered"):
        run_state_machine_as_test(machine, settings=deterministic)


def test_lookback_window_skips_no_committed_row(pg_db: PgDatabase) -> None:
    """The default window (300 s): late commits, overwrites and deletes inside it lose nothing."""
    run_model(pg_db, "lookback", 25)


def test_short_lookback_skips_nothing_committed_within_it(pg_db: PgDatabase) -> None:
    """A 5 s window that expires during the run: only versions committed 5 s or more late may go."""
    run_model(pg_db, "short_lookback", 25)


def test_xid_column_is_exact(pg_db: PgDatabase) -> None:
    """Below the snapshot's xmin: nothing skipped, nothing delivered twice (crashes aside)."""
    run_model(pg_db, "xid", 25)
