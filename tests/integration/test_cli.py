"""The ``trigger-kit`` console script, run as a real subprocess against both backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("trigger-kit"))


@pytest.fixture(params=["sqlite", "postgres"])
def cli_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__TRIGGER_KIT__")}
    env["AIRFLOW_HOME"] = str(tmp_path / "home")
    if request.param == "sqlite":
        env["AIRFLOW__TRIGGER_KIT__STATE_SQLITE_PATH"] = str(tmp_path / "cli-state.db")
    else:
        pg_db = request.getfixturevalue("pg_db")
        env["AIRFLOW_CONN_CLI_STATE"] = pg_db.dsn
        env["AIRFLOW__TRIGGER_KIT__STATE_CONN_ID"] = "cli_state"
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def run_json(env: dict[str, str], *args: str) -> Any:
    result = run(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_round_trip_set_get_list_reset(cli_env: dict[str, str]) -> None:
    """The installed console script, as a user runs it (each call is a fresh process)."""
    assert run_json(cli_env, "state", "set", "dags", "watch", "cursor", '{"hwm": 5}') == {"version": 1}
    got = run_json(cli_env, "state", "get", "dags", "watch", "cursor")
    assert got["value"] == {"hwm": 5} and got["version"] == 1 and got["updated_by"]
    listed = run_json(cli_env, "state", "list", "--namespace", "dags")
    assert [(r["name"], r["key"], r["value"]) for r in listed] == [("watch", "cursor", {"hwm": 5})]
    assert run_json(cli_env, "state", "reset", "dags", "watch") == {"deleted": 1}
    missing = run(cli_env, "state", "get", "dags", "watch", "cursor")
    assert missing.returncode == 1 and "no key 'cursor'" in missing.stderr


@pytest.fixture
def in_process(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Call ``main()`` in this process with the same configuration (fast; same code path)."""
    from airflow_trigger_kit._sync import run_sync
    from airflow_trigger_kit.cli import main
    from airflow_trigger_kit.state import factory

    for key in [k for k in os.environ if k.startswith("AIRFLOW__TRIGGER_KIT__")]:
        monkeypatch.delenv(key)
    for key, value in cli_env.items():
        if key.startswith(("AIRFLOW__TRIGGER_KIT__", "AIRFLOW_CONN_")):
            monkeypatch.setenv(key, value)
    yield main
    run_sync(factory.aclose_backends())


def test_listing_text_and_json(in_process: Any, capsys: pytest.CaptureFixture[str]) -> None:
    main = in_process
    assert main(["state", "set", "dags", "watch", "cursor", '{"hwm": 5}']) == 0
    assert main(["state", "set", "dags", "watch", "seen", '["a.csv"]']) == 0
    assert main(["state", "set", "other", "w", "cursor", "1"]) == 0
    capsys.readouterr()
    assert main(["state", "list", "--namespace", "dags", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["key"], r["value"]) for r in rows] == [
        ("watch", "cursor", {"hwm": 5}),
        ("watch", "seen", ["a.csv"]),
    ]
    assert main(["state", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        'dags\twatch\tcursor\tv1\t{"hwm": 5}',
        'dags\twatch\tseen\tv1\t["a.csv"]',
        "other\tw\tcursor\tv1\t1",
    ]
    assert main(["state", "get", "dags", "watch", "cursor"]) == 0
    assert json.loads(capsys.readouterr().out) == {"hwm": 5}
    assert main(["state", "reset", "dags", "watch", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": 2}


def test_conflict_delete_and_usage_errors(in_process: Any, capsys: pytest.CaptureFixture[str]) -> None:
    main = in_process
    assert main(["state", "set", "n", "w", "k", '"a"']) == 0
    assert main(["state", "set", "n", "w", "k", '"b"', "--expected-version", "0"]) == 1
    assert "expected version 0, found version 1" in capsys.readouterr().err
    assert main(["state", "set", "n", "w", "k", '"b"', "--expected-version", "1"]) == 0
    assert capsys.readouterr().out.strip() == "version 2"

    assert main(["state", "delete", "n", "w", "k"]) == 0
    assert main(["state", "delete", "n", "w", "k"]) == 1

    assert main(["state", "set", "n", "w", "k", "{not json"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    for argv in (["state", "frobnicate"], ["state", "get", "n", "w"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert main(["state", "get", "n", "w", ""]) == 2
    assert "key must be a non-empty string" in capsys.readouterr().err


def test_unavailable_store_exits_3(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["AIRFLOW_HOME"] = str(tmp_path / "home")
    env["AIRFLOW_CONN_DOWN"] = "postgresql://postgres@127.0.0.1:1/postgres"
    env["AIRFLOW__TRIGGER_KIT__STATE_CONN_ID"] = "down"
    result = run(env, "state", "get", "n", "w", "k")
    assert result.returncode == 3, result.stderr
    assert "unavailable" in result.stderr and "conn_id='down'" in result.stderr


def test_state_conn_id_naming_no_connection_is_an_unavailable_store(tmp_path: Path) -> None:
    """The docs promise StateStoreUnavailable: one line naming the option and the value, exit 3."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__TRIGGER_KIT__"))}
    env["AIRFLOW_HOME"] = str(tmp_path / "home")
    env["AIRFLOW__TRIGGER_KIT__STATE_CONN_ID"] = "no_such_state_conn"
    result = run(env, "state", "get", "n", "w", "k")
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    assert lines[0].startswith("trigger-kit: ProcessState store unavailable: [trigger_kit] state_conn_id=")
    assert "'no_such_state_conn' names no Airflow connection" in lines[0]


def test_state_conn_id_naming_no_connection_fails_every_command_with_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from airflow_trigger_kit._sync import run_sync
    from airflow_trigger_kit.cli import main
    from airflow_trigger_kit.state.factory import aclose_backends

    monkeypatch.setenv("AIRFLOW__TRIGGER_KIT__STATE_CONN_ID", "no_such_state_conn")
    try:
        for argv in (["state", "list"], ["state", "set", "n", "w", "k", "1"], ["state", "reset", "n", "w"]):
            assert main(argv) == 3
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "state_conn_id='no_such_state_conn' names no Airflow connection" in err[0]
    finally:
        run_sync(aclose_backends())


async def test_state_conn_id_naming_no_connection_raises_state_store_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow_trigger_kit.state import ProcessState, StateStoreUnavailable
    from airflow_trigger_kit.state.factory import aclose_backends

    monkeypatch.setenv("AIRFLOW__TRIGGER_KIT__STATE_CONN_ID", "no_such_state_conn")
    state = ProcessState("n", "w")
    try:
        for attempt in (state.aget("k"), state.aset("k", 1)):
            with pytest.raises(StateStoreUnavailable, match="state_conn_id='no_such_state_conn' names no Airflow"):
                await attempt
    finally:
        await aclose_backends()


def test_watches_lists_cursor_and_status_as_table_and_json(
    in_process: Any, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``trigger-kit watches``: only (namespace, name) pairs with a cursor or status are watches."""
    main = in_process
    status = {
        "kind": "watcher",
        "source": "directory",
        "target": "asset uploads",
        "items_delivered": 7,
        "last_detection_at": "2026-01-01T00:00:00+00:00",
        "last_error": {
            "message": "PermissionError: /data/in is unreadable",
            "at": "2026-01-01T00:00:00Z",
            "transient": False,
        },
    }
    assert main(["state", "set", "assets", "uploads", "cursor", '{"hwm": 5}']) == 0
    assert main(["state", "set", "assets", "uploads", "status", json.dumps(status)]) == 0
    assert main(["state", "set", "mine", "notes", "last_file", '"a.csv"']) == 0
    capsys.readouterr()
    assert main(["watches", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["namespace"], r["name"]) for r in rows] == [("assets", "uploads")]
    row = rows[0]
    assert (row["kind"], row["source"], row["target"], row["cursor_version"], row["items_delivered"]) == (
        "watcher",
        "directory",
        "asset uploads",
        1,
        7,
    )
    assert row["healthy"] is False and row["seconds_since_detection"] > 0
    text = run(cli_env, "watches")  # the console script itself, as a user runs it
    assert text.returncode == 0, text.stderr
    header, line = text.stdout.splitlines()
    assert header.split()[:4] == ["WATCH", "MODE", "SOURCE", "TARGET"]
    assert line.startswith("assets/uploads") and "v1" in line and "[FAILED] PermissionError" in line
