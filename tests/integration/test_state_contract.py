"""One contract, every ProcessState backend: run unchanged against SQLite and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from airflow_trigger_kit.state import (
    InvalidStateInput,
    ProcessState,
    StateConflict,
    StateStoreUnavailable,
)
from airflow_trigger_kit.state.backends.base import StateBackend
from airflow_trigger_kit.state.backends.postgres import PostgresBackend
from airflow_trigger_kit.state.backends.sqlite import SQLiteBackend

pytestmark = pytest.mark.integration

BackendFactory = Callable[[], StateBackend]


def _pg_factory(dsn: str) -> BackendFactory:
    def make() -> StateBackend:
        async def kwargs() -> dict[str, Any]:
            return {"dsn": dsn}

        return PostgresBackend(kwargs, label="postgres test")

    return make


@pytest.fixture(params=["sqlite", "postgres"])
async def make_backend(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[BackendFactory]:
    created: list[StateBackend] = []
    if request.param == "sqlite":
        path = str(tmp_path / "state.db")

        def base() -> StateBackend:
            return SQLiteBackend(path)

    else:
        pg_db = request.getfixturevalue("pg_db")
        base = _pg_factory(pg_db.dsn)

    def make() -> StateBackend:
        backend = base()
        created.append(backend)
        return backend

    yield make
    for backend in created:
        await backend.aclose()


async def test_get_missing_returns_none(make_backend: BackendFactory) -> None:
    state = ProcessState("ns", "watch", backend=make_backend())
    assert await state.aget("cursor") is None


async def test_set_get_versions_and_metadata(make_backend: BackendFactory) -> None:
    state = ProcessState("ns", "watch", backend=make_backend(), updated_by="tester")
    assert await state.aset("cursor", {"hwm": 1, "files": ["a", "b"]}) == 1
    assert await state.aset("cursor", {"hwm": 2}) == 2
    entry = await state.aget("cursor")
    assert entry is not None
    assert entry.value == {"hwm": 2}
    assert entry.version == 2
    assert entry.updated_by == "tester"
    assert entry.updated_at.tzinfo is not None


@pytest.mark.parametrize("value", [None, True, 0, -3.5, "text ü", [], {"nested": {"list": [1, "x", None]}}])
async def test_any_json_value_round_trips(make_backend: BackendFactory, value: Any) -> None:
    state = ProcessState("ns", "values", backend=make_backend())
    await state.aset("k", value)
    entry = await state.aget("k")
    assert entry is not None and entry.value == value


async def test_compare_and_set(make_backend: BackendFactory) -> None:
    state = ProcessState("ns", "cas", backend=make_backend())
    assert await state.aset("k", "a", expected_version=0) == 1
    with pytest.raises(StateConflict) as info:
        await state.aset("k", "b", expected_version=0)
    assert (info.value.expected_version, info.value.actual_version) == (0, 1)
    assert "namespace='ns'" in str(info.value) and "key='k'" in str(info.value)
    assert await state.aset("k", "b", expected_version=1) == 2
    with pytest.raises(StateConflict) as info:
        await state.aset("k", "c", expected_version=1)
    assert (info.value.expected_version, info.value.actual_version) == (1, 2)
    entry = await state.aget("k")
    assert entry is not None and (entry.value, entry.version) == ("b", 2)


async def test_compare_and_set_on_missing_key_conflicts(make_backend: BackendFactory) -> None:
    state = ProcessState("ns", "cas", backend=make_backend())
    with pytest.raises(StateConflict) as info:
        await state.aset("absent", 1, expected_version=3)
    assert info.value.actual_version == 0
    assert await state.aget("absent") is None


async def test_delete_list_clear_are_scoped(make_backend: BackendFactory) -> None:
    backend = make_backend()
    a = ProcessState("ns", "a", backend=backend)
    b = ProcessState("ns", "b", backend=backend)
    other = ProcessState("other", "a", backend=backend)
    await a.aset("k1", 1)
    await a.aset("k2", 2)
    await b.aset("k1", 3)
    await other.aset("k1", 4)
    assert {k: e.value for k, e in (await a.alist()).items()} == {"k1": 1, "k2": 2}
    assert await a.adelete("k1") is True
    assert await a.adelete("k1") is False
    assert list(await a.alist()) == ["k2"]
    assert await a.aclear() == 1
    assert await a.alist() == {}
    assert (await b.aget("k1")) is not None and (await other.aget("k1")) is not None
    listed = await backend.list("ns", None)
    assert [(e.namespace, e.name, e.key) for e in listed] == [("ns", "b", "k1")]


async def test_bulk_get_put_delete_and_key_listing_are_scoped(make_backend: BackendFactory) -> None:
    """The bulk calls serve values kept in many keys (the S3 watch's snapshot chunks)."""
    backend = make_backend()
    a = ProcessState("ns", "a", backend=backend, max_value_bytes=200)
    b = ProcessState("ns", "b", backend=backend)
    keys = [f"chunk.{i:04d}" for i in range(1200)]  # more than one IN (...) list
    await a.aset_many({k: f"value {k}" for k in keys})
    await a.aset_many({"chunk.0000": {"rewritten": True}, "cursor": {"v": 1}})  # upsert: no compare-and-set
    await b.aset("chunk.0001", "b's own")
    assert await a.aset_many({}) is None and await a.aget_many([]) == {}
    got = await a.aget_many([*keys[:3], "chunk.missing"])
    assert got == {
        "chunk.0000": {"rewritten": True},
        "chunk.0001": "value chunk.0001",
        "chunk.0002": "value chunk.0002",
    }
    assert len(await a.aget_many(keys)) == 1200
    assert await a.alist_keys("chunk.") == keys
    assert await a.alist_keys() == [*keys, "cursor"]
    assert await a.alist_keys("chunk.00") == keys[:100]
    entry = await a.aget("chunk.0000")
    assert entry is not None and entry.version == 2  # a bulk write bumps versions like aset
    assert await a.adelete_many([*keys[:700], "chunk.missing"]) == 700
    assert await a.alist_keys("chunk.") == keys[700:]
    assert await b.aget_many(["chunk.0001"]) == {"chunk.0001": "b's own"}
    with pytest.raises(InvalidStateInput, match=r"over the limit of 200 bytes"):
        await a.aset_many({"chunk.ok": "x", "chunk.big": "x" * 300})
    assert await a.aget_many(["chunk.ok", "chunk.big"]) == {}  # nothing of a refused bulk write is stored
    with pytest.raises(InvalidStateInput, match="key must be a non-empty string"):
        await a.aget_many([""])


async def test_value_size_limit_and_validation(make_backend: BackendFactory) -> None:
    state = ProcessState("ns", "limits", backend=make_backend(), max_value_bytes=100)
    await state.aset("small", "x" * 50)
    with pytest.raises(InvalidStateInput, match=r"over the limit of 100 bytes"):
        await state.aset("big", "x" * 200)
    with pytest.raises(InvalidStateInput, match="not JSON-serializable"):
        await state.aset("bad", {1, 2})
    with pytest.raises(InvalidStateInput, match="key must be a non-empty string"):
        await state.aset("", 1)
    with pytest.raises(InvalidStateInput, match="at most 250 characters"):
        await state.aget("k" * 251)
    with pytest.raises(InvalidStateInput, match="expected_version"):
        await state.aset("k", 1, expected_version=-1)
    assert await state.aget("big") is None


async def test_race_twenty_writers_exactly_one_wins_per_version(make_backend: BackendFactory) -> None:
    """20 writers, each with its own connection, do read-then-CAS on one key until they succeed."""
    await ProcessState("ns", "race", backend=make_backend()).aset("k", [], expected_version=0)
    wins: dict[int, int] = {}
    conflicts = 0

    async def writer(i: int) -> None:
        nonlocal conflicts
        state = ProcessState("ns", "race", backend=make_backend())
        while True:
            entry = await state.aget("k")
            assert entry is not None
            await asyncio.sleep(0)  # let the others read the same version
            try:
                version = await state.aset("k", [*entry.value, i], expected_version=entry.version)
            except StateConflict:
                conflicts += 1
                continue
            assert version not in wins, f"version {version} won twice"
            wins[version] = i
            return

    await asyncio.gather(*(writer(i) for i in range(20)))
    final = await ProcessState("ns", "race", backend=make_backend()).aget("k")
    assert final is not None
    assert sorted(wins) == list(range(2, 22))
    assert final.version == 21
    assert sorted(final.value) == list(range(20)), "a successful write was lost"
    assert final.value == [wins[v] for v in range(2, 22)], "writes applied out of version order"
    assert conflicts > 0, "the writers never raced; the test proves nothing"


def test_sync_twins_use_the_same_store(make_backend: BackendFactory) -> None:
    backend = make_backend()
    state = ProcessState("ns", "sync", backend=backend)
    assert state.set("k", {"a": 1}) == 1
    assert state.set("k", {"a": 2}, expected_version=1) == 2
    with pytest.raises(StateConflict):
        state.set("k", {"a": 3}, expected_version=1)
    entry = state.get("k")
    assert entry is not None and entry.value == {"a": 2}
    assert list(state.list()) == ["k"]
    assert state.delete("k") is True
    state.set("k2", 1)
    assert state.clear() == 1


async def test_sync_api_refuses_to_block_a_running_loop(make_backend: BackendFactory) -> None:
    state = ProcessState("ns", "sync", backend=make_backend())
    with pytest.raises(RuntimeError, match="use the async twin"):
        state.get("k")


async def test_unreachable_postgres_is_unavailable_not_empty() -> None:
    from tests.services import free_port

    port = free_port()

    async def kwargs() -> dict[str, Any]:
        return {"dsn": f"postgresql://postgres@127.0.0.1:{port}/postgres", "timeout": 2}

    state = ProcessState("ns", "down", backend=PostgresBackend(kwargs))
    with pytest.raises(StateStoreUnavailable, match="unavailable"):
        await state.aget("cursor")
    with pytest.raises(StateStoreUnavailable):
        await state.aset("cursor", 1)


async def test_broken_sqlite_is_unavailable_not_empty(tmp_path: Any) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a sqlite database" * 100)
    state = ProcessState("ns", "broken", backend=SQLiteBackend(str(path)))
    with pytest.raises(StateStoreUnavailable, match=str(path)):
        await state.aget("cursor")


async def test_postgres_backend_from_airflow_connection(pg_db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """[trigger_kit] state_conn_id selects PostgreSQL through an Airflow connection id."""
    from airflow_trigger_kit.state import factory

    monkeypatch.setenv("AIRFLOW_CONN_TK_STATE", pg_db.dsn)
    monkeypatch.setenv("AIRFLOW__TRIGGER_KIT__STATE_CONN_ID", "tk_state")
    state = ProcessState("ns", "via_conn")
    assert isinstance(state.backend, PostgresBackend)
    assert "tk_state" in state.backend.describe() and "postgres@" not in state.backend.describe()
    try:
        await state.aset("k", {"v": 1})
        direct = ProcessState("ns", "via_conn", backend=_pg_factory(pg_db.dsn)())
        entry = await direct.aget("k")
        assert entry is not None and entry.value == {"v": 1}
        await direct.aclose()
    finally:
        await factory.aclose_backends()


def test_default_backend_is_sqlite_under_airflow_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__TRIGGER_KIT__STATE_CONN_ID", raising=False)
    state = ProcessState("ns", "default")
    assert isinstance(state.backend, SQLiteBackend)
    assert state.backend.path == os.environ["AIRFLOW__TRIGGER_KIT__STATE_SQLITE_PATH"]
    state.set("k", json.loads('{"x": 1}'))
    entry = state.get("k")
    assert entry is not None and entry.value == {"x": 1}
