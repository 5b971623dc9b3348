"""Postgres watch: pure logic — JSON-safe values, error classes, the lookback window, fingerprints."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import ipaddress
import json
import uuid
from typing import Any

import asyncpg
import pytest

from airflow_trigger_kit.retry import is_transient
from airflow_trigger_kit.sources.base import PermanentSourceError, TransientSourceError
from airflow_trigger_kit.sources.postgres import (
    HASH_HEX,
    MAX_EXACT_ROWS,
    MAX_SEGMENTS,
    MAX_WINDOW_BYTES,
    SEGMENT_ROWS,
    Segment,
    append_rows,
    classify_error,
    compact_window,
    describe_target,
    result_fingerprint,
    row_digest,
    short_hash,
    to_json_safe,
    window_bytes,
    wrap64,
)

pytestmark = pytest.mark.unit


def test_values_become_json_safe() -> None:
    tz = dt.timezone(dt.timedelta(hours=2))
    value = {
        "ts": dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=tz),
        "d": dt.date(2026, 1, 2),
        "t": dt.time(3, 4, 5),
        "iv": dt.timedelta(minutes=1, microseconds=500000),
        "dec": decimal.Decimal("12.50"),
        "nan": float("nan"),
        "inf": float("-inf"),
        "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "b": b"\x00\x01\xff",
        "arr": [[1, 2], [3, None]],
        "ip": ipaddress.ip_network("10.0.0.0/8"),
        "range": asyncpg.Range(1, 5, upper_inc=True),
        "bits": asyncpg.BitString("101"),
        "j": {"nested": [1, "x"]},
    }
    safe = to_json_safe(value)
    assert json.loads(json.dumps(safe, allow_nan=False)) == safe
    assert safe == {
        "ts": "2026-01-02T03:04:05.123456+02:00",
        "d": "2026-01-02",
        "t": "03:04:05",
        "iv": 60.5,
        "dec": "12.50",
        "nan": "NaN",
        "inf": "-Infinity",
        "u": "12345678-1234-5678-1234-567812345678",
        "b": "AAH/",
        "arr": [[1, 2], [3, None]],
        "ip": "10.0.0.0/8",
        "range": {"lower": 1, "upper": 5, "lower_inc": True, "upper_inc": True, "empty": False},
        "bits": "101",
        "j": {"nested": [1, "x"]},
    }


# -- error classes ---------------------------------------------------------------------------------------
def _pg_error(cls: type[asyncpg.PostgresError], message: str) -> asyncpg.PostgresError:
    return cls(message)


@pytest.mark.parametrize(
    ("exc", "kind", "fragment"),
    [
        (_pg_error(asyncpg.InvalidPasswordError, "password authentication failed"), PermanentSourceError, "password"),
        (
            _pg_error(asyncpg.InvalidAuthorizationSpecificationError, 'role "x" does not exist'),
            PermanentSourceError,
            "login",
        ),
        (_pg_error(asyncpg.InvalidCatalogNameError, 'database "x" does not exist'), PermanentSourceError, "3D000"),
        (
            _pg_error(asyncpg.InsufficientPrivilegeError, "permission denied"),
            PermanentSourceError,
            "grant the role SELECT",
        ),
        (_pg_error(asyncpg.UndefinedColumnError, "no column"), PermanentSourceError, "42703"),
        (_pg_error(asyncpg.ReadOnlySQLTransactionError, "read-only"), PermanentSourceError, "25006"),
        (_pg_error(asyncpg.QueryCanceledError, "statement timeout"), TransientSourceError, "statement_timeout"),
        (_pg_error(asyncpg.AdminShutdownError, "terminating connection"), TransientSourceError, "57P01"),
        (_pg_error(asyncpg.CannotConnectNowError, "starting up"), TransientSourceError, "57P03"),
        (_pg_error(asyncpg.TooManyConnectionsError, "too many"), TransientSourceError, "53300"),
        (_pg_error(asyncpg.SerializationError, "serialize"), TransientSourceError, "40001"),
        (asyncpg.ConnectionDoesNotExistError("closed in the middle"), TransientSourceError, "08003"),
        (ConnectionRefusedError(111, "refused"), TransientSourceError, "ConnectionRefusedError"),
        (asyncio.TimeoutError(), TransientSourceError, "TimeoutError"),
    ],
)
def test_errors_are_classified(exc: BaseException, kind: type[Exception], fragment: str) -> None:
    """Rejected credentials are permanent; asserted here because the test cluster trusts every login."""
    error = classify_error(exc, context="postgres watch of public.orders via postgres_conn_id='db'")
    assert isinstance(error, kind)
    assert "public.orders" in str(error) and fragment in str(error)
    assert is_transient(error) is (kind is TransientSourceError)


def test_bugs_are_not_classified_as_source_errors() -> None:
    assert classify_error(KeyError("x"), context="c") is None
    assert classify_error(asyncpg.InterfaceError("another operation is in progress"), context="c") is None
    closed = classify_error(asyncpg.InterfaceError("connection is closed"), context="c", connection_closed=True)
    assert isinstance(closed, TransientSourceError)
    # A backend killed between two statements: asyncpg's protocol is left mid-error until it sees
    # the socket close; once the connection is known closed, this is a lost connection too.
    desync = asyncpg.exceptions.InternalClientError("cannot switch to state 11; another operation (2) is in progress")
    assert classify_error(desync, context="c") is None
    assert isinstance(classify_error(desync, context="c", connection_closed=True), TransientSourceError)


def test_target_description_never_shows_the_password() -> None:
    assert describe_target({"dsn": "postgresql://bob:s3cret@db.example:6432/sales"}) == "bob@db.example:6432/sales"
    described = describe_target({"host": "h", "port": 5433, "user": "u", "password": "pw", "database": "d"})
    assert described == "u@h:5433/d" and "pw" not in described


# -- fingerprints ----------------------------------------------------------------------------------------
def test_fingerprint_ignores_row_order_but_not_multiplicity_or_columns() -> None:
    rows = [[1, "a"], [2, "b"], [2, "b"]]

    def fp(columns: list[str], rs: list[list[Any]]) -> str:
        return result_fingerprint(columns, sum(row_digest(r) for r in rs), len(rs))

    assert fp(["id", "v"], rows) == fp(["id", "v"], list(reversed(rows)))
    assert fp(["id", "v"], rows) != fp(["id", "v"], rows[:2])
    assert fp(["id", "v"], rows) != fp(["id", "w"], rows)
    assert fp(["id", "v"], [[1, "a"]]) != fp(["id", "v"], [[1, "b"]])


# -- the lookback window ----------------------------------------------------------------------------------
def rows(start: int, count: int) -> list[tuple[list[str], int]]:
    return [([str(i)], (i * 0x9E3779B97F4A7C15) % (1 << 63) - (1 << 62)) for i in range(start, start + count)]


def test_new_rows_fill_exact_segments_of_bounded_size() -> None:
    segments: list[Segment] = []
    append_rows(segments, rows(1, SEGMENT_ROWS * 2 + 3))
    assert [s.n for s in segments] == [SEGMENT_ROWS, SEGMENT_ROWS, 3]
    assert all(s.exact and len(s.h or "") == s.n * HASH_HEX for s in segments)
    assert segments[-1].hi == [str(SEGMENT_ROWS * 2 + 3)]
    first = rows(1, SEGMENT_ROWS)
    assert segments[0].s == sum(h for _, h in first)
    assert segments[0].hashes() == {short_hash(h) for _, h in first}


def test_compaction_bounds_exact_hashes_and_segments_without_losing_rows() -> None:
    segments: list[Segment] = []
    total = 20_000
    append_rows(segments, rows(1, total))
    lo = compact_window(None, segments)
    assert lo is None
    assert len(segments) <= MAX_SEGMENTS
    assert sum(s.n for s in segments if s.exact) <= MAX_EXACT_ROWS
    assert sum(s.n for s in segments) == total, "merging keeps every row's count"
    assert wrap64(sum(s.s for s in segments)) == wrap64(sum(h for _, h in rows(1, total))), "sums kept mod 2**64"
    assert segments[-1].exact, "the newest rows, where late commits land, stay exact"
    his = [int(s.hi[0]) for s in segments]
    assert his == sorted(his) and his[-1] == total
    cursor = [s.dump() for s in segments]
    assert len(json.dumps(cursor)) < 20_000


def test_expired_segments_leave_the_front_but_pending_ones_stay() -> None:
    segments: list[Segment] = []
    append_rows(segments, rows(1, SEGMENT_ROWS * 4))
    for s in segments[:3]:
        s.expired = True
    segments[1].h, segments[1].p = None, True  # pending a re-read
    lo = compact_window(["0"], segments)
    assert lo == [str(SEGMENT_ROWS)], "only the first segment went: the second still owes a re-read"
    assert [s.p for s in segments[:2]] == [True, None]


def test_merging_a_pending_segment_keeps_the_obligation_as_a_whole() -> None:
    segments = [Segment(hi=[str(i)], n=1, s=i, p=["x"] if i == 0 else True) for i in range(MAX_SEGMENTS + 1)]
    compact_window(None, segments)
    assert len(segments) == MAX_SEGMENTS
    assert all(s.p is not None for s in segments)
    assert any(s.p is True and s.n == 2 for s in segments)


def test_segments_round_trip_and_reject_damage() -> None:
    s = Segment(hi=["2026-01-01 00:00:00+00", "7"], n=1, s=-5, h="0123456789")
    assert Segment.load(json.loads(json.dumps(s.dump()))) == s
    with pytest.raises(ValueError, match="wrong length"):
        Segment.load({"hi": ["1"], "n": 2, "s": 0, "h": "0123456789"})
    with pytest.raises(ValueError, match="not a window segment"):
        Segment.load({"hi": "1", "n": 1, "s": 0})


def test_wide_order_values_shrink_the_window_to_its_byte_budget() -> None:
    segments: list[Segment] = []
    wide = [([f"{'k' * 900}-{i:06d}"], i * 7919) for i in range(5000)]
    append_rows(segments, wide)
    compact_window(None, segments)
    assert window_bytes(segments) <= MAX_WINDOW_BYTES
    assert sum(s.n for s in segments) == 5000 and segments[-1].hi == wide[-1][0]


def test_dedup_id_parts_cannot_run_into_each_other() -> None:
    from airflow_trigger_kit.sources.postgres import _joined

    assert _joined(["a|1:b"]) != _joined(["a", "b"])
    assert _joined(["ab", "c"]) != _joined(["a", "bc"])
    assert _joined(["2026-01-01 00:00:00+00", "7"]) == "22:2026-01-01 00:00:00+00|1:7"


def test_window_sums_stay_within_64_bits_and_still_identify_one_added_row() -> None:
    """Cursors travel in trigger kwargs, which Airflow serializes only with 64-bit integers."""
    from airflow_trigger_kit.sources.postgres import append_rows, wrap64

    big = (1 << 63) - 1
    segments: list = []
    append_rows(segments, [([str(n)], big - n) for n in range(50)])
    assert all(-(1 << 63) <= seg.s < (1 << 63) for seg in segments)
    total_before = segments[0].s
    late_row_hash = -(1 << 62) + 12345
    total_after = wrap64(total_before + late_row_hash)
    assert wrap64(total_after - total_before) == late_row_hash
    import json

    json.dumps([seg.dump() for seg in segments])  # and the dump is plain JSON ints


# -- the window's check schedule: cost follows what is new ---------------------------------------------
def test_large_pages_go_straight_to_coarse_segments_and_keep_every_row() -> None:
    from airflow_trigger_kit.sources.postgres import COARSE_ROWS

    segments: list[Segment] = []
    page = rows(1, COARSE_ROWS + MAX_EXACT_ROWS + 10)
    append_rows(segments, page, now=100.0)
    coarse = [s for s in segments if not s.exact]
    assert [s.n for s in coarse] == [COARSE_ROWS, 10], "the part older than the exact rows, in coarse chunks"
    assert sum(s.n for s in segments if s.exact) == MAX_EXACT_ROWS
    assert sum(s.n for s in segments) == len(page)
    assert wrap64(sum(s.s for s in segments)) == wrap64(sum(h for _, h in page))
    assert all(s.b == 100.0 and s.c == 100.0 for s in segments), "born and verified when read"


def test_coarse_segments_are_checked_on_a_geometric_schedule_within_a_budget() -> None:
    from airflow_trigger_kit.sources.postgres import CHECK_ROWS_PER_POLL, FIRST_CHECK_SECONDS
    from airflow_trigger_kit.sources.postgres.window import checks_for

    exact = Segment(hi=["9"], n=3, s=0, h="0" * 30, b=0.5, c=10.0)
    young = Segment(hi=["5"], n=1000, s=0, b=10.0, c=10.0)
    old = Segment(hi=["3"], n=1000, s=0, b=0.0 + 1, c=9.0)  # born at 1, verified at 9: next due at 17
    assert young.next_check() == 10.0 + FIRST_CHECK_SECONDS
    assert old.next_check() == 17.0
    window = [old, young, exact]
    assert checks_for(window, now=10.5) == [False, False, True], "only the exact rows: nothing is due yet"
    assert checks_for(window, now=11.0) == [False, True, True]
    assert checks_for(window, now=17.0) == [True, True, True]
    young.checked(11.0)
    assert young.next_check() == 12.0 and young.is_due(12.0) and not young.is_due(11.9)
    young.checked(12.0)
    assert young.next_check() == 14.0, "the gap doubles with the segment's age"
    # Over budget: the most overdue first, and always at least one segment.
    big = [Segment(hi=[str(i)], n=CHECK_ROWS_PER_POLL, s=0, b=1.0, c=2.0 + i) for i in range(3)]
    assert checks_for(big, now=100.0, budget=CHECK_ROWS_PER_POLL) == [True, False, False]
    assert checks_for(big, now=100.0, budget=10) == [True, False, False]


def test_the_check_budget_grows_with_the_time_since_the_previous_poll() -> None:
    from airflow_trigger_kit.sources.postgres import CHECK_ROWS_PER_POLL
    from airflow_trigger_kit.sources.postgres.window import CHECK_ROWS_PER_SECOND, check_budget

    window = [Segment(hi=["1"], n=10, s=0, b=1.0, c=100.0)]
    assert check_budget(window, now=100.1) == CHECK_ROWS_PER_POLL
    assert check_budget(window, now=130.0) == 30 * CHECK_ROWS_PER_SECOND
    assert check_budget([Segment(hi=["1"], n=10, s=0)], now=130.0) == CHECK_ROWS_PER_POLL, "an old cursor"


def test_segments_of_older_cursors_are_due_at_once_and_then_scheduled() -> None:
    loaded = Segment.load({"hi": ["1"], "n": 1, "s": 5})
    assert (loaded.b, loaded.c) == (0.0, 0.0) and loaded.is_due(1_000.0)
    loaded.checked(1_000.0)
    assert loaded.b == 1_000.0 and loaded.next_check() == 1_001.0
    assert Segment.load(json.loads(json.dumps(loaded.dump()))) == loaded
    assert Segment(hi=["1"], n=1, s=0, b=5.0, c=2_000.0).is_due(1_000.0), "a clock that went back checks now"
    with pytest.raises(ValueError, match="bad check times"):
        Segment.load({"hi": ["1"], "n": 1, "s": 5, "c": "soon"})


def test_merged_segments_keep_the_most_demanding_schedule() -> None:
    segments = [Segment(hi=[str(i)], n=1, s=i, b=10.0 + i, c=20.0 - i) for i in range(MAX_SEGMENTS + 1)]
    compact_window(None, segments)
    assert len(segments) == MAX_SEGMENTS and segments[0].n == 2
    assert (segments[0].b, segments[0].c) == (11.0, 19.0), "the younger birth, the older verification"


# -- rows to items ------------------------------------------------------------------------------------------
def test_the_fast_row_path_gives_the_documented_payload_and_dedup_id() -> None:
    from airflow_trigger_kit.sources.base import stable_id
    from airflow_trigger_kit.sources.postgres.plan import Plan
    from airflow_trigger_kit.sources.postgres.rows import RowReader

    plan = Plan(
        relation='"public"."orders"',
        selected=["id", "note", "amount", "at"],
        order=["at", "id"],
        key=["id"],
        types=["timestamp with time zone", "bigint"],
        selected_types=["bigint", "text", "numeric", "timestamp with time zone"],
    )
    at = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.timezone.utc)
    record = (7, "a|b", decimal.Decimal("10.50"), at, "2026-03-01 10:00:00+00", "7", -42)
    reader = RowReader(plan, "public.orders")
    [row] = reader.rows([record])
    assert (row.pos, row.hash) == (["2026-03-01 10:00:00+00", "7"], -42)
    item = reader.item(row, late=True)
    assert item.data == {
        "kind": "row",
        "table": "public.orders",
        "row": {"id": 7, "note": "a|b", "amount": "10.50", "at": "2026-03-01T10:00:00+00:00"},
        "key": {"id": "7"},
        "watermark": {"at": "2026-03-01 10:00:00+00", "id": "7"},
        "late": True,
    }
    from airflow_trigger_kit.sources.postgres import _joined

    assert item.dedup_id == stable_id("postgres", "public.orders", _joined(["7"]), _joined(row.pos))
    two_keys = RowReader(
        Plan(relation="r", selected=["a"], order=["a", "b"], key=["a", "b"], types=["int", "int"]), "t"
    )
    [row2] = two_keys.rows([(1, "1", "2", 5)])
    assert two_keys.item(row2).dedup_id == stable_id("postgres", "t", _joined(["1", "2"]), _joined(["1", "2"]))


# -- backlogs are taken in large batches -------------------------------------------------------------------
class _Numbers:
    """A pure stand-in source over the numbers 1..total (cursor: the last number reported)."""

    kind = "numbers"

    def __init__(self, total: int) -> None:
        self.total = total
        self.pages: list[int] = []

    async def poll(self, cursor: Any, max_items: int) -> Any:
        from airflow_trigger_kit.sources.base import Batch, Item

        self.pages.append(max_items)
        start = cursor or 0
        taken = list(range(start + 1, min(self.total, start + max_items) + 1))
        return Batch(
            [Item(str(n), {"n": n}) for n in taken], taken[-1] if taken else start, more=start + max_items < self.total
        )


async def test_a_backlog_is_taken_in_large_batches_up_to_the_bound() -> None:
    from airflow_trigger_kit.sources.base import poll_batch

    source = _Numbers(total=1234)
    first = await poll_batch(source, None, 100, 1000)  # type: ignore[arg-type]
    assert [i.data["n"] for i in first.items] == list(range(1, 1001)) and first.cursor == 1000 and first.more
    assert source.pages == [100, 900], "a first page of max_items; then the rest of the bound at once"
    rest = await poll_batch(source, first.cursor, 100, 1000)  # type: ignore[arg-type]
    assert [i.data["n"] for i in rest.items] == list(range(1001, 1235)) and not rest.more
    caught_up = _Numbers(total=50)
    small = await poll_batch(caught_up, None, 100, 1000)  # type: ignore[arg-type]
    assert len(small.items) == 50 and caught_up.pages == [100], "no backlog: one page"
    off = _Numbers(total=1234)
    assert len((await poll_batch(off, None, 100, 100)).items) == 100  # type: ignore[arg-type]
