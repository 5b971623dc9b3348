"""Pure detection logic of the multi-directory watch: scans + cursor in, items + cursor out."""

from __future__ import annotations

import json

import pytest

from airflow_trigger_kit.sources.base import PermanentSourceError
from airflow_trigger_kit.sources.directory import (
    DirectoryScan,
    DirectoryWatchConfig,
    check_cursor,
    detect,
    empty_cursor,
    file_stat,
)

pytestmark = pytest.mark.unit

S = 1_000_000_000  # one second in ns
D = "/data/in"


def cfg(**kw: object) -> DirectoryWatchConfig:
    params: dict[str, object] = {"directories": [D], "settle_seconds": 5, "lookback_seconds": 60}
    params.update(kw)
    return DirectoryWatchConfig.create(**params)  # type: ignore[arg-type]


def scan(files: dict[str, tuple[int, int, int]], directory: str = D, exists: bool = True) -> DirectoryScan:
    """files: rel -> (inode, size, stamp_s); mtime equals the stamp unless the test says otherwise."""
    return DirectoryScan(
        directory,
        exists,
        {rel: file_stat(inode=i, size=sz, mtime_ns=t * S, stamp=t * S) for rel, (i, sz, t) in files.items()},
        0,
    )


def names(batch) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(i.data["relative_path"], i.data["kind"]) for i in batch.items]


def test_files_sharing_one_stamp_are_each_reported_once_across_truncated_batches() -> None:
    c = cfg()
    files = {f"f{n}.csv": (n, 10, 100) for n in range(5)}
    cursor = empty_cursor(c)
    seen: list[str] = []
    for _ in range(3):
        batch = detect(c, cursor, [scan(files)], max_items=2, now_ns=200 * S)
        seen += [i.data["relative_path"] for i in batch.items]
        cursor = batch.cursor
    assert sorted(seen) == sorted(files)
    again = detect(c, cursor, [scan(files)], max_items=2, now_ns=200 * S)
    assert again.items == [] and not again.more


def test_truncation_reports_more_and_oldest_first() -> None:
    c = cfg()
    files = {"late.csv": (1, 1, 150), "early.csv": (2, 1, 100), "mid.csv": (3, 1, 120)}
    batch = detect(c, empty_cursor(c), [scan(files)], max_items=2, now_ns=300 * S)
    assert names(batch) == [("early.csv", "created"), ("mid.csv", "created")]
    assert batch.more
    nxt = detect(c, batch.cursor, [scan(files)], max_items=2, now_ns=300 * S)
    assert names(nxt) == [("late.csv", "created")] and not nxt.more


def test_growing_file_is_reported_only_after_settling_with_its_final_size() -> None:
    c = cfg(settle_seconds=5)
    cursor = empty_cursor(c)
    for size, t_write, now in [(10, 100, 101), (20, 103, 104), (30, 106, 110)]:
        batch = detect(c, cursor, [scan({"big.csv": (7, size, t_write)})], 10, now * S)
        assert batch.items == [], f"reported while still being written at t={now}"
        assert batch.stats["unsettled"] == 1
        cursor = batch.cursor
    batch = detect(c, cursor, [scan({"big.csv": (7, 30, 106)})], 10, 111 * S)
    assert names(batch) == [("big.csv", "created")] and batch.items[0].data["size"] == 30


def test_copy_with_old_mtime_is_new_because_ctime_moved() -> None:
    c = cfg()
    first = detect(c, empty_cursor(c), [scan({"a.csv": (1, 5, 1000)})], 10, 2000 * S)
    assert names(first) == [("a.csv", "created")]
    copied = scan({"a.csv": (1, 5, 1000)})
    copied.files["old_copy.csv"] = file_stat(inode=2, size=5, mtime_ns=10 * S, stamp=1500 * S)
    batch = detect(c, first.cursor, [copied], 10, 2000 * S)
    assert names(batch) == [("old_copy.csv", "created")]


def test_replace_by_rename_is_created_again_and_inplace_change_is_modified() -> None:
    c = cfg(event_kinds="all")
    first = detect(c, empty_cursor(c), [scan({"a.csv": (1, 5, 100)})], 10, 200 * S)
    renamed = detect(c, first.cursor, [scan({"a.csv": (2, 5, 150)})], 10, 200 * S)
    assert names(renamed) == [("a.csv", "created")]
    assert renamed.items[0].dedup_id != first.items[0].dedup_id
    inplace = detect(c, renamed.cursor, [scan({"a.csv": (2, 9, 160)})], 10, 200 * S)
    assert names(inplace) == [("a.csv", "modified")]


def test_watermark_layout_replace_by_rename_within_and_beyond_lookback() -> None:
    c = cfg(lookback_seconds=60)
    first = detect(c, empty_cursor(c), [scan({"a.csv": (1, 5, 100)})], 10, 200 * S)
    within = detect(c, first.cursor, [scan({"a.csv": (2, 5, 130)})], 10, 200 * S)
    assert names(within) == [("a.csv", "created")]
    beyond = detect(c, within.cursor, [scan({"a.csv": (3, 5, 500)})], 10, 600 * S)
    assert names(beyond) == [("a.csv", "created")]


def test_inplace_modification_is_silent_when_only_created_is_watched() -> None:
    c = cfg()
    first = detect(c, empty_cursor(c), [scan({"a.csv": (1, 5, 100)})], 10, 200 * S)
    batch = detect(c, first.cursor, [scan({"a.csv": (1, 8, 120)})], 10, 200 * S)
    assert batch.items == []
    assert batch.cursor["dirs"][D]["edge"]["a.csv"] == [1, 120 * S]


def test_snapshot_reports_deletions_and_filters_kinds() -> None:
    c = cfg(event_kinds=["deleted"])
    first = detect(c, empty_cursor(c), [scan({"a.csv": (1, 5, 100), "b.csv": (2, 5, 100)})], 10, 200 * S)
    assert first.items == [], "created files are tracked silently when only deletions are watched"
    gone = detect(c, first.cursor, [scan({"b.csv": (2, 5, 100)})], 10, 200 * S)
    assert names(gone) == [("a.csv", "deleted")]
    assert gone.items[0].data["size"] == 5
    assert detect(c, gone.cursor, [scan({"b.csv": (2, 5, 100)})], 10, 200 * S).items == []


def test_missing_directory_forgets_nothing_and_reports_nothing() -> None:
    c = cfg(event_kinds="all")
    first = detect(c, empty_cursor(c), [scan({"a.csv": (1, 5, 100)})], 10, 200 * S)
    vanished = detect(c, first.cursor, [scan({}, exists=False)], 10, 200 * S)
    assert vanished.items == [] and vanished.cursor == first.cursor
    back = detect(c, vanished.cursor, [scan({"a.csv": (1, 5, 100)})], 10, 200 * S)
    assert back.items == []


def test_missing_directory_that_appears_later_reports_its_files() -> None:
    c = cfg(directories=[D, "/data/other"])
    baseline = detect(
        c, empty_cursor(c), [scan({"a.csv": (1, 5, 100)}), scan({}, "/data/other", False)], 10**9, 200 * S
    )
    later = detect(
        c, baseline.cursor, [scan({"a.csv": (1, 5, 100)}), scan({"x.csv": (9, 1, 50)}, "/data/other")], 10, 200 * S
    )
    assert [(i.data["directory"], i.data["relative_path"]) for i in later.items] == [("/data/other", "x.csv")]


def test_first_run_policies() -> None:
    c = cfg()
    files = {"old.csv": (1, 5, 100), "writing.csv": (2, 5, 198)}
    baseline = detect(c, empty_cursor(c), [scan(files)], 10**12, 200 * S)  # what start_from="now" stores
    assert detect(c, baseline.cursor, [scan(files)], 10, 200 * S).items == []
    # the file still being written at baseline time is reported once it settles
    assert names(detect(c, baseline.cursor, [scan(files)], 10, 210 * S)) == [("writing.csv", "created")]
    # start_from="beginning" reports everything that exists
    assert len(detect(c, empty_cursor(c), [scan(files)], 10, 210 * S).items) == 2


def test_watermark_cursor_stays_bounded_on_a_directory_that_grows_for_years() -> None:
    c = cfg(lookback_seconds=60)
    cursor = empty_cursor(c)
    files: dict[str, tuple[int, int, int]] = {}
    sizes = []
    day = 86_400
    for n in range(2_000):  # one file every 12 hours: ~3 years
        files[f"2023/{n:05d}.csv"] = (n + 1, 100, n * day // 2)
        batch = detect(c, cursor, [scan(files)], 100, (n * day // 2 + 10) * S)
        assert len(batch.items) == 1
        cursor = batch.cursor
        sizes.append(len(json.dumps(cursor)))
    assert len(cursor["dirs"][D]["edge"]) == 1
    assert max(sizes[100:]) == max(sizes[1000:]) < 300


def test_dedup_id_is_stable_for_the_same_change() -> None:
    c = cfg()
    files = {"a.csv": (1, 5, 100)}
    one = detect(c, empty_cursor(c), [scan(files)], 10, 200 * S)
    two = detect(c, empty_cursor(c), [scan(files)], 10, 300 * S)
    assert one.items[0].dedup_id == two.items[0].dedup_id


def test_input_cursor_is_never_mutated() -> None:
    c = cfg()
    first = detect(c, empty_cursor(c), [scan({"a.csv": (1, 5, 100)})], 10, 200 * S)
    frozen = json.dumps(first.cursor, sort_keys=True)
    detect(c, first.cursor, [scan({"a.csv": (1, 5, 100), "b.csv": (2, 5, 150)})], 10, 200 * S)
    assert json.dumps(first.cursor, sort_keys=True) == frozen


def test_cursor_layout_mismatch_is_a_clear_permanent_error() -> None:
    created_only = cfg()
    with pytest.raises(PermanentSourceError, match="event_kinds changed"):
        check_cursor(cfg(event_kinds="all"), empty_cursor(created_only))
    with pytest.raises(PermanentSourceError, match="not a directory-watch cursor"):
        check_cursor(created_only, {"hwm": 3})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"directories": []}, "directories must name at least one directory"),
        ({"directories": ["relative/dir"]}, "directories must be absolute paths.*'relative/dir'"),
        ({"directories": ["/a", "/a/"]}, "directories lists '/a/' twice"),
        ({"directories": ["/a"], "patterns": []}, "patterns must hold at least one"),
        ({"directories": ["/a"], "patterns": ["sub/*.csv"]}, "patterns match file names.*'sub/\\*.csv'"),
        ({"directories": ["/a"], "event_kinds": ["renamed"]}, "event_kinds must be 'all' or a list of"),
        ({"directories": ["/a"], "settle_seconds": -1}, "settle_seconds must be a number >= 0, got -1"),
        ({"directories": ["/a"], "recursive": "yes"}, "recursive must be True or False, got 'yes'"),
        ({"directories": "/a", "patterns": [3]}, "patterns must hold non-empty strings, got 3"),
    ],
)
def test_invalid_configuration_names_parameter_and_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DirectoryWatchConfig.create(**kwargs)  # type: ignore[arg-type]


def test_a_burst_keeps_the_cursor_bounded_and_loses_nothing() -> None:
    """50,000 files land within one second: batches of 5,000, edge capped, every file once."""
    from airflow_trigger_kit.sources.directory import EDGE_LIMIT

    c = cfg(lookback_seconds=60)
    files = {f"{n:06d}.csv": (n + 1, 10, 100 * S + n * 20_000) for n in range(50_000)}
    the_scan = DirectoryScan(D, True, {rel: file_stat(i, sz, t, t) for rel, (i, sz, t) in files.items()}, 0)
    cursor = empty_cursor(c)
    reported: list[str] = []
    sizes = []
    while True:
        batch = detect(c, cursor, [the_scan], max_items=5_000, now_ns=300 * S)
        reported += [i.data["relative_path"] for i in batch.items]
        cursor = batch.cursor
        sizes.append(len(json.dumps(cursor)))
        if not batch.items:
            break
    assert sorted(reported) == sorted(files), "a file was lost or repeated"
    assert len(cursor["dirs"][D]["edge"]) <= EDGE_LIMIT
    assert max(sizes) < 40_000, f"cursor grew to {max(sizes)} bytes"


def test_floor_never_swallows_unreported_files_sharing_the_hwm_tick() -> None:
    from airflow_trigger_kit.sources.directory import EDGE_LIMIT

    c = cfg()
    n_files = EDGE_LIMIT + 300  # more files on one clock tick than the edge may hold
    files = {f"f{n:05d}.csv": (n + 1, 1, 100) for n in range(n_files)}
    cursor = empty_cursor(c)
    reported: set[str] = set()
    for _ in range(10):
        batch = detect(c, cursor, [scan(files)], max_items=200, now_ns=200 * S)
        reported |= {i.data["relative_path"] for i in batch.items}
        cursor = batch.cursor
    assert reported == set(files)
