"""The ``watermark`` detection: keyset pagination, and the late-commit window of ``lookback``.

Design and invariants are in the package docstring (:mod:`airflow_trigger_kit.sources.postgres`)
and, for the window, in :mod:`airflow_trigger_kit.sources.postgres.window`. In short, one poll,
inside one ``REPEATABLE READ`` snapshot:

1. (``lookback`` only) check the window segments that are due — the exact ones, pending ones,
   coarse ones on their schedule within a row budget, and every segment that leaves the window —
   in one statement; report the rows that appeared in them (late commits) first;
2. read the rows after the cursor's position in order (``LIMIT max_items + 1``), report them, and
   add them to the window's digests as they pass the cursor.

Its cost therefore follows what is new: the rows read, about 1,000 exact window rows, and the
window checks that come due — never the whole window on every poll.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from airflow_trigger_kit.sources.base import JSON, Batch, Item, PermanentSourceError
from airflow_trigger_kit.sources.postgres.identifiers import quote_ident
from airflow_trigger_kit.sources.postgres.plan import Params, Plan
from airflow_trigger_kit.sources.postgres.rows import Row, RowReader
from airflow_trigger_kit.sources.postgres.window import (
    BASELINE_COARSE_SEGMENTS,
    MAX_EXACT_ROWS,
    Segment,
    append_rows,
    checks_for,
    compact_window,
    short_hash,
    wrap64,
)

CURSOR_VERSION = 1
YIELD_EVERY = 500
"""Rows converted between two turns given back to the event loop."""


def wall_clock() -> float:
    """The time window checks are scheduled by (tests replace it to move time)."""
    return time.time()


class WatermarkDetection:
    """Baseline and polls of one ``watermark`` watch over the statements of its :class:`Plan`."""

    def __init__(self, plan: Plan, table_name: str, timeout: float) -> None:
        self.plan = plan
        self.reader = RowReader(plan, table_name)
        self.timeout = timeout

    # -- building blocks -------------------------------------------------------------------------
    def empty_cursor(self) -> dict[str, Any]:
        cursor: dict[str, Any] = {"v": CURSOR_VERSION, "d": "watermark", "cols": self.plan.order, "pos": None}
        if self.plan.lookback_kind is not None:
            cursor["lo"] = None
            cursor["seg"] = []
        return cursor

    async def items(self, rows: Sequence[Row], *, late: bool = False) -> list[Item]:
        """Items for ``rows``, giving the event loop a turn every :data:`YIELD_EVERY` rows."""
        items: list[Item] = []
        item = self.reader.item
        for start in range(0, len(rows), YIELD_EVERY):
            if start:
                await asyncio.sleep(0)  # converting thousands of rows must not block the triggerer
            items.extend([item(r, late=late) for r in rows[start : start + YIELD_EVERY]])
        return items

    async def fetch(
        self,
        conn: asyncpg.Connection,
        *,
        after: Sequence[str] | None,
        upto: Sequence[str] | None = None,
        limit: int | None = None,
        hash_eq: int | None = None,
    ) -> list[Row]:
        """Rows in ``(after, upto]`` in order (keyset), optionally only those with one row hash."""
        sql, args = self.plan.rows_query(after=after, upto=upto, limit=limit, hash_eq=hash_eq)
        return self.reader.rows(await conn.fetch(sql, *args, timeout=self.timeout))

    async def explain(self, conn: asyncpg.Connection, pos: list[str] | None, max_items: int) -> list[str]:
        sql, args = self.plan.rows_query(after=pos, limit=max_items + 1)
        return [str(r[0]) for r in await conn.fetch("EXPLAIN " + sql, *args, timeout=self.timeout)]

    async def last_position(
        self, conn: asyncpg.Connection, *, at_most_floor_of: Sequence[str] | None = None
    ) -> list[str] | None:
        """The largest position (optionally with first order value ``lookback`` behind a position)."""
        sql, args = self.plan.last_position_query(at_most_floor_of=at_most_floor_of)
        row = await conn.fetchrow(sql, *args, timeout=self.timeout)
        return None if row is None else [str(v) for v in row.values()]

    async def digests(
        self,
        conn: asyncpg.Connection,
        lo: list[str] | None,
        his: Sequence[list[str]],
        wanted: Sequence[bool],
        pos: Sequence[str],
    ) -> list[tuple[int, int, bool, bool]]:
        """``(count, sum of hashes, expired, checked)`` per segment, in one statement.

        A segment is expired when its upper bound's first order value is ``lookback`` or more
        behind ``pos``: no row in it can still be inside the window. Only ``wanted`` and expired
        segments are aggregated (``checked``); the others come back with zeros.
        """
        out: list[tuple[int, int, bool, bool]] = []
        wanted = list(wanted)
        his = list(his)
        if lo is None and his:
            # The window starts at the table's start: the first segment has no lower bound.
            sql, args = self.plan.first_segment_query(his[0], wanted[0], pos)
            row = await conn.fetchrow(sql, *args, timeout=self.timeout)
            expired = bool(row["expired"])
            out.append((int(row["n"]), wrap64(int(row["s"])), expired, wanted[0] or expired))
            lo, his, wanted = his[0], his[1:], wanted[1:]
        if his:
            assert lo is not None
            sql, args = self.plan.window_check_query(lo, his, wanted, pos)
            for row, want in zip(await conn.fetch(sql, *args, timeout=self.timeout), wanted, strict=True):
                expired = bool(row["expired"])
                out.append((int(row["n"]), wrap64(int(row["s"])), expired, want or expired))
        return out

    # -- baseline --------------------------------------------------------------------------------
    async def baseline(self, conn: asyncpg.Connection) -> dict[str, Any]:
        plan = self.plan
        cursor = self.empty_cursor()
        pos = await self.last_position(conn)
        cursor["pos"] = pos
        if pos is None or plan.lookback_kind is None:
            return cursor
        now = wall_clock()
        # The window (pos - lookback, pos]: the newest rows exactly, the rest as coarse segments.
        params = Params()
        floor = plan.floor_sql(params, pos)
        upto = params.position(pos, plan.types)
        where = [
            *plan.conditions(),
            f"src.{quote_ident(plan.order[0])} > {floor}",
            f"({plan.order_sql}) <= ({', '.join(upto)})",
        ]
        desc = ", ".join(f"src.{quote_ident(c)} DESC" for c in plan.order)
        sql = (
            f"SELECT {plan.position_texts()}, {plan.hash_sql} FROM {plan.relation} AS src WHERE {' AND '.join(where)} "
            f"ORDER BY {desc} LIMIT {MAX_EXACT_ROWS + 1}"
        )
        head = [_position_and_hash(r) for r in await conn.fetch(sql, *params.values, timeout=self.timeout)]
        lo = await self.last_position(conn, at_most_floor_of=pos)
        segments: list[Segment] = []
        exact = head[:MAX_EXACT_ROWS]
        if len(head) > MAX_EXACT_ROWS:
            edge = head[MAX_EXACT_ROWS][0]
            boundaries = await self._boundaries(conn, lo, edge)
            digests = await self.digests(conn, lo, boundaries, [True] * len(boundaries), pos)
            segments = [
                Segment(hi=b, n=n, s=total, b=now, c=now)
                for b, (n, total, _, _) in zip(boundaries, digests, strict=True)
            ]
        append_rows(segments, list(reversed(exact)), now)
        cursor["lo"] = compact_window(lo, segments)
        cursor["seg"] = [s.dump() for s in segments]
        return cursor

    async def _boundaries(self, conn: asyncpg.Connection, lo: list[str] | None, edge: list[str]) -> list[list[str]]:
        """Positions cutting ``(lo, edge]`` into about :data:`BASELINE_COARSE_SEGMENTS` equal parts."""
        plan = self.plan
        params = Params()
        where = plan.conditions()
        if lo is not None:
            where.append(f"({plan.order_sql}) > ({', '.join(params.position(lo, plan.types))})")
        where.append(f"({plan.order_sql}) <= ({', '.join(params.position(edge, plan.types))})")
        inner = (
            f"SELECT {plan.position_texts(alias=True)}, row_number() OVER (ORDER BY {plan.order_sql}) AS rn, "
            f"count(*) OVER () AS total FROM {plan.relation} AS src WHERE {' AND '.join(where)}"
        )
        outs = ", ".join(f"p{i}" for i in range(len(plan.order)))
        step = f"greatest(1, ceil(total::numeric / {BASELINE_COARSE_SEGMENTS}))"
        sql = f"SELECT {outs} FROM ({inner}) q WHERE rn % {step} = 0 OR rn = total ORDER BY rn"
        found = [[str(v) for v in r.values()] for r in await conn.fetch(sql, *params.values, timeout=self.timeout)]
        if not found or found[-1] != list(edge):
            found.append(list(edge))
        return found

    # -- poll ------------------------------------------------------------------------------------
    async def poll(self, conn: asyncpg.Connection, cursor: dict[str, Any], max_items: int) -> Batch:
        plan = self.plan
        now = wall_clock()
        pos: list[str] | None = cursor.get("pos")
        items: list[Item] = []
        more = False
        budget = max_items
        windowed = plan.lookback_kind is not None
        lo: list[str] | None = None
        segments: list[Segment] = []
        checked_rows = 0
        if windowed:
            if "seg" in cursor:
                try:
                    segments = [Segment.load(s) for s in cursor["seg"]]
                except ValueError as exc:
                    raise PermanentSourceError(
                        f"the stored cursor's window is damaged ({exc}); reset it with `trigger-kit state reset`"
                    ) from None
                lo = cursor.get("lo")
            else:
                lo = pos  # the watch just switched lookback on: the window starts at the cursor
        if segments and pos is not None:
            budget, more, checked_rows = await self._reconcile_window(conn, lo, segments, pos, items, budget, now)
        if budget > 0:
            rows = await self.fetch(conn, after=pos, limit=budget + 1)
            taken = rows[:budget]
            more = more or len(rows) > budget
            items.extend(await self.items(taken))
            if taken:
                pos = taken[-1].pos
                if windowed:
                    append_rows(segments, [(r.pos, r.hash) for r in taken], now)
        else:
            more = True
        new_cursor: dict[str, Any] = {"v": CURSOR_VERSION, "d": "watermark", "cols": plan.order, "pos": pos}
        stats: dict[str, JSON] = {}
        if windowed:
            lo = compact_window(lo, segments)
            if not segments:
                lo = pos  # nothing reported yet inside the window
            new_cursor["lo"] = lo
            new_cursor["seg"] = [s.dump() for s in segments]
            stats = {
                "window_segments": len(segments),
                "window_rows": sum(s.n for s in segments),
                "window_checked_rows": checked_rows,
                # Rows in the window get late-commit checks on a schedule that needs polls: a watch
                # woken by notifications keeps polling at poll_interval until the window empties.
                "checks_pending": bool(segments),
            }
        return Batch(items, new_cursor, more=more, stats=stats)

    async def _reconcile_window(
        self,
        conn: asyncpg.Connection,
        lo: list[str] | None,
        segments: list[Segment],
        pos: list[str],
        items: list[Item],
        budget: int,
        now: float,
    ) -> tuple[int, bool, int]:
        """Find rows that appeared inside the checked segments since their last check; report them first.

        Invariant kept (per segment): every row the segment's digest covers was reported, or the
        segment is pending a re-read. A digest that does not match therefore means rows appeared
        (late commits, moved watermarks) or disappeared. Returns the budget left, whether items
        were left out, and how many window rows the check aggregated (by the cursor's counts).
        """
        more = False
        wanted = checks_for(segments, now)
        digests = await self.digests(conn, lo, [seg.hi for seg in segments], wanted, pos)
        checked_rows = 0
        lower = lo
        for seg, (n, total, expired, checked) in zip(segments, digests, strict=True):
            seg_lo, lower = lower, seg.hi
            seg.expired = expired
            if not checked:
                continue
            checked_rows += seg.n
            if n == seg.n and total == seg.s:
                seg.checked(now)
                continue
            if seg.exact:
                if budget == 0:
                    seg.expired, more = False, True  # unchanged: it mismatches again next poll
                    continue
                rows = await self.fetch(conn, after=seg_lo, upto=seg.hi)
                seen = seg.hashes()
                keep: list[Row] = []
                complete = True
                for i, r in enumerate(rows):
                    if i and i % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                    if short_hash(r.hash) in seen:
                        keep.append(r)
                    elif budget > 0:
                        items.append(self.reader.item(r, late=True))
                        keep.append(r)
                        budget -= 1
                    else:
                        seg.expired, more, complete = False, True, False  # left out: it mismatches again
                seg.n, seg.s = len(keep), wrap64(sum(r.hash for r in keep))
                seg.h = "".join(short_hash(r.hash) for r in keep)
                if complete:
                    seg.checked(now)
            elif seg.p is None and n == seg.n + 1:
                # One row more, and the difference of the sums is a 64-bit hash: most likely that row.
                if budget == 0:
                    seg.expired, more = False, True
                    continue
                found = await self.fetch(conn, after=seg_lo, upto=seg.hi, hash_eq=wrap64(total - seg.s))
                if len(found) == 1:
                    items.append(self.reader.item(found[0], late=True))
                    budget -= 1
                else:
                    seg.p = True
                seg.n, seg.s = n, total
                seg.checked(now)
            else:
                seg.n, seg.s, seg.p = n, total, True
                seg.checked(now)
        lower = lo
        for seg in segments:
            seg_lo, lower = lower, seg.hi
            if seg.p is None:
                continue
            if budget == 0:
                more = True
                break
            start = seg.p if isinstance(seg.p, list) else seg_lo
            rows = await self.fetch(conn, after=start, upto=seg.hi, limit=budget + 1)
            taken = rows[:budget]
            items.extend(await self.items(taken, late=True))
            budget -= len(taken)
            if len(rows) > len(taken):
                seg.p = taken[-1].pos
                more = True
            else:
                seg.p = None
        return budget, more, checked_rows


def _position_and_hash(record: asyncpg.Record) -> tuple[list[str], int]:
    values = list(record.values())
    return [str(v) for v in values[:-1]], int(values[-1])
