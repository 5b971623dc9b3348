"""The ``lookback`` window: segments of recently reported rows, their digests and check schedule (pure).

The window is the part of the table behind the cursor where a late commit may still appear: rows
whose first order value is within ``lookback`` of the cursor's. The cursor keeps it as up to
:data:`MAX_SEGMENTS` consecutive *segments* ``(previous hi, hi]``, each with the count ``n`` and
the sum ``s`` (mod 2**64) of the 64-bit hashes of the rows reported in it. A segment whose digest
in the table no longer matches holds rows that appeared (late commits, moved watermarks) or left.

Cost follows what is new. The digests are kept *incrementally*: a row is added to its segment's
digest by the client as it passes the cursor, never re-aggregated to build the window. The table
side of a digest is re-aggregated only when the segment is *checked*, and checks are scheduled so
that each row is checked a bounded number of times over its life in the window, not on every poll:

* **exact** segments — the newest :data:`MAX_EXACT_ROWS` reported rows, which also keep
  :data:`HASH_HEX` hex digits of each row hash so a late row there is identified alone — are
  checked on every poll (a bounded cost: about 1,000 rows). This is where late commits land.
* **coarse** segments — the older part of the window — are checked on a geometric schedule: a
  segment born (first read) at ``b`` and last verified at ``c`` is next due at
  ``c + max(FIRST_CHECK_SECONDS, c - b)``, so at ages of about 1, 2, 4, 8 ... seconds. A row that
  commits ``d`` seconds after rows later than it were read is therefore found within about ``d``
  seconds (at least :data:`FIRST_CHECK_SECONDS`, and later when checks are over budget); each row
  is checked about ``log2(age)`` times in all. Due checks take at most :data:`CHECK_ROWS_PER_POLL`
  rows per poll (the most overdue first; always at least one segment) or
  :data:`CHECK_ROWS_PER_SECOND` per second since the previous poll, whichever is more: this bounds
  the cost of any one poll, and keeps a window checked through however rarely the watch polls.
* a segment that leaves the window (its ``hi`` falls ``lookback`` behind the cursor) is checked in
  the very poll that drops it, whatever its schedule — this final check is what the guarantee rests
  on: a row committed after it has a value more than ``lookback`` older than its commit.
* pending segments (being re-read) are checked on every poll.

Invariants: a segment's ``n``/``s`` cover exactly the rows reported in it (or it is pending a
re-read); its ``c`` is only moved forward when the table's digest matched or the difference was
fully handled (reported, or turned into a pending re-read); a pending segment is never dropped;
merging keeps every row's count and hash and the most demanding schedule of the two.

Schedule times are this host's wall clock (epoch seconds). They only decide *when* a check runs,
never *whether* a row is reported: a wrong clock delays late rows, the final check still finds
them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_trigger_kit.sources.base import JSON

SEGMENT_ROWS = 64
"""Rows per exact window segment created from new rows."""
COARSE_ROWS = 4096
"""Rows per coarse segment cut from the older part of a large page of new rows."""
MAX_EXACT_ROWS = 1024
"""Most row hashes the cursor keeps; older exact segments become coarse beyond this."""
MAX_SEGMENTS = 48
"""Most window segments; the adjacent coarse pair with the fewest rows is merged beyond this."""
BASELINE_COARSE_SEGMENTS = 16
"""Coarse segments a baseline cuts the part of the window beyond the exact rows into."""
HASH_HEX = 10
"""Hex characters kept per row hash in exact segments (40 bits)."""
MAX_WINDOW_BYTES = 32 * 1024
"""Most bytes the window may take in the cursor (ProcessState values are limited to 64 KiB by default)."""
FIRST_CHECK_SECONDS = 1.0
"""Shortest time between two scheduled checks of a coarse segment."""
CHECK_ROWS_PER_POLL = 1024
"""Rows of coarse segments a poll may check on schedule (expiring and pending ones come on top) ..."""
CHECK_ROWS_PER_SECOND = 8192
"""... or this many per second since the previous poll, when that is more (rare polls check more)."""
MAX_CHECK_ELAPSED = 600.0
"""Seconds since the previous poll counted at most towards the check budget."""


_SHORT_MASK = (1 << (4 * HASH_HEX)) - 1
_SHORT_FORMAT = f"%0{HASH_HEX}x"


def short_hash(h: int) -> str:
    return _SHORT_FORMAT % (h & _SHORT_MASK)


def wrap64(value: int) -> int:
    """Reduce a sum of 64-bit hashes to a signed 64-bit value.

    Segment sums live in the cursor, which also travels in a deferred sensor's trigger kwargs;
    Airflow's serializer refuses integers outside 64 bits. Sums are compared and subtracted modulo
    2**64 on both sides (Python and the server's ``sum()``), so wrapping loses nothing: the
    difference of two wrapped sums that differ by one row is still that row's hash.
    """
    return ((value + (1 << 63)) % (1 << 64)) - (1 << 63)


@dataclass
class Segment:
    """Rows of the window in ``(previous segment's hi, hi]`` as of the last check.

    ``n``/``s`` are their count and the sum of their 64-bit hashes (exact integers). Exact segments (``h`` set)
    also keep :data:`HASH_HEX` hex characters of each hash; coarse ones may be pending a re-read
    (``p``: ``True`` for all of it, or the position up to which it was re-read). ``b`` is when its
    rows were first read and ``c`` when its digest last matched the table (epoch seconds; 0: never,
    as in cursors written before checks were scheduled, which makes the segment due at once).
    """

    hi: list[str]
    n: int
    s: int
    h: str | None = None
    p: bool | list[str] | None = None
    b: float = 0.0
    c: float = 0.0
    expired: bool = field(default=False, compare=False)

    @property
    def exact(self) -> bool:
        return self.h is not None

    def hashes(self) -> set[str]:
        h = self.h or ""
        return {h[i : i + HASH_HEX] for i in range(0, len(h), HASH_HEX)}

    def next_check(self) -> float:
        """When the schedule wants this segment checked again (see the module docstring)."""
        return self.c + max(FIRST_CHECK_SECONDS, self.c - self.b)

    def is_due(self, now: float) -> bool:
        # A last check "in the future" means this host's clock went back: check now rather than wait.
        return now >= self.next_check() or self.c > now

    def checked(self, now: float) -> None:
        """The table's digest of this segment matched (or its difference was handled) at ``now``."""
        if not self.b:
            self.b = now  # a segment from an older cursor: its schedule starts now
        self.c = now

    def dump(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {"hi": self.hi, "n": self.n, "s": self.s}
        if self.h is not None:
            out["h"] = self.h
        if self.p is not None:
            out["p"] = self.p
        if self.b:
            out["b"] = round(self.b, 3)
        if self.c:
            out["c"] = round(self.c, 3)
        return out

    @classmethod
    def load(cls, raw: Any) -> Segment:
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("hi"), list)
            or not isinstance(raw.get("n"), int)
            or not isinstance(raw.get("s"), int)
        ):
            raise ValueError(f"not a window segment: {str(raw)[:200]}")
        h = raw.get("h")
        p = raw.get("p")
        if h is not None and (not isinstance(h, str) or len(h) != HASH_HEX * raw["n"]):
            raise ValueError(f"exact segment with {raw['n']} rows has a hash string of the wrong length")
        if p is not None and p is not True and not isinstance(p, list):
            raise ValueError(f"bad pending marker {p!r}")
        times = [raw.get(k, 0) for k in ("b", "c")]
        if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in times):
            raise ValueError(f"bad check times {times!r}")
        return cls(hi=list(raw["hi"]), n=raw["n"], s=wrap64(raw["s"]), h=h, p=p, b=float(times[0]), c=float(times[1]))


def append_rows(segments: list[Segment], rows: Sequence[tuple[list[str], int]], now: float = 0.0) -> None:
    """Add newly reported rows (ascending positions, 64-bit hashes) to the end of the window.

    The newest :data:`MAX_EXACT_ROWS` go into exact segments; older rows of a large page go straight
    into coarse segments of :data:`COARSE_ROWS` (keeping their hashes would only be undone by
    :func:`compact_window`). New segments are born, and verified, at ``now``: their rows were just
    read in the poll's snapshot.
    """
    coarse, exact = rows[: max(0, len(rows) - MAX_EXACT_ROWS)], rows[max(0, len(rows) - MAX_EXACT_ROWS) :]
    for start in range(0, len(coarse), COARSE_ROWS):
        chunk = coarse[start : start + COARSE_ROWS]
        segments.append(Segment(hi=list(chunk[-1][0]), n=len(chunk), s=wrap64(sum(h for _, h in chunk)), b=now, c=now))
    start = 0
    last = segments[-1] if segments else None
    if exact and last is not None and last.exact and last.p is None and last.n < SEGMENT_ROWS:
        start = min(SEGMENT_ROWS - last.n, len(exact))
        chunk = exact[:start]
        last.hi = list(chunk[-1][0])
        last.n += len(chunk)
        last.s = wrap64(last.s + sum(h for _, h in chunk))
        last.h = (last.h or "") + "".join([short_hash(h) for _, h in chunk])
    for first in range(start, len(exact), SEGMENT_ROWS):
        chunk = exact[first : first + SEGMENT_ROWS]
        segments.append(
            Segment(
                hi=list(chunk[-1][0]),
                n=len(chunk),
                s=wrap64(sum(h for _, h in chunk)),
                h="".join([short_hash(h) for _, h in chunk]),
                b=now,
                c=now,
            )
        )


def check_budget(segments: Sequence[Segment], now: float) -> int:
    """Rows of coarse segments this poll may check on schedule (see the module docstring)."""
    last = max((s.c for s in segments), default=0.0)
    elapsed = min(max(now - last, 0.0), MAX_CHECK_ELAPSED) if last else 0.0
    return max(CHECK_ROWS_PER_POLL, int(CHECK_ROWS_PER_SECOND * elapsed))


def checks_for(segments: Sequence[Segment], now: float, budget: int | None = None) -> list[bool]:
    """Which segments a poll checks (the server adds those that expire; see the module docstring)."""
    if budget is None:
        budget = check_budget(segments, now)
    wanted = [s.exact or s.p is not None for s in segments]
    due = sorted((s.next_check(), i) for i, s in enumerate(segments) if not wanted[i] and s.is_due(now))
    spent = 0
    for _, i in due:
        rows = segments[i].n
        if spent and spent + rows > budget:
            break
        wanted[i] = True
        spent += rows
    return wanted


def window_bytes(segments: Sequence[Segment]) -> int:
    """The JSON size of the window's segments in the cursor."""
    return len(json.dumps([s.dump() for s in segments], separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def compact_window(lo: list[str] | None, segments: list[Segment]) -> list[str] | None:
    """Drop expired segments, bound the exact hashes, the segment count and the bytes; return the new ``lo``.

    Never drops or loses a pending segment's obligation: pending segments stay until re-read, and a
    merge that involves one keeps the merged segment pending as a whole (more repeats, no skips).
    Long order values (wide text keys) make positions big: the window then keeps fewer exact rows
    and fewer segments so that it stays within :data:`MAX_WINDOW_BYTES`.
    """
    while segments and segments[0].expired and segments[0].p is None:
        lo = segments.pop(0).hi
    exact_rows = sum(s.n for s in segments if s.exact)
    for s in segments:
        if exact_rows <= MAX_EXACT_ROWS:
            break
        if s.exact:
            exact_rows -= s.n
            s.h = None
    while len(segments) > MAX_SEGMENTS:
        _merge_cheapest_pair(segments)
    while len(segments) > 1 and window_bytes(segments) > MAX_WINDOW_BYTES:
        oldest_exact = next((s for s in segments if s.exact), None)
        if oldest_exact is not None and oldest_exact is not segments[-1]:
            oldest_exact.h = None
        else:
            _merge_cheapest_pair(segments)
    return lo


def _merge_cheapest_pair(segments: list[Segment]) -> None:
    """Merge the adjacent pair that costs least: not pending, not exact, fewest rows.

    The merged segment keeps the younger birth and the older verification of the two, so it is
    checked at least as often as either would have been.
    """

    def cost(i: int) -> tuple[int, int, int]:
        a, b = segments[i], segments[i + 1]
        return (int(a.p is not None or b.p is not None), int(a.exact or b.exact), a.n + b.n)

    i = min(range(len(segments) - 1), key=cost)
    a, b = segments[i], segments[i + 1]
    segments[i : i + 2] = [
        Segment(
            hi=b.hi,
            n=a.n + b.n,
            s=wrap64(a.s + b.s),
            h=(a.h or "") + (b.h or "") if a.exact and b.exact else None,
            p=True if (a.p is not None or b.p is not None) else None,
            b=max(a.b, b.b),
            c=min(a.c, b.c),
            expired=a.expired and b.expired,
        )
    ]
