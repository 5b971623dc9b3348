"""Bad input is refused at DAG parse time with a message naming the parameter and the value.

Each case builds what a DAG file builds (a trigger, a sensor, an asset) and checks the message; none
of them may touch ProcessState, which the last test checks for all of them at once.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import pytest

from airflow_trigger_kit.assets import directory_asset
from airflow_trigger_kit.sensors import MultiDirectorySensor
from airflow_trigger_kit.sensors.postgres import PostgresRowsSensor
from airflow_trigger_kit.sensors.s3 import S3ObjectsSensor
from airflow_trigger_kit.sources.globs import check_globs, glob_problem
from airflow_trigger_kit.state import list_all
from airflow_trigger_kit.state.factory import configured_backend
from airflow_trigger_kit.triggers import MultiDirectoryTrigger
from airflow_trigger_kit.triggers.s3 import S3ObjectsTrigger

pytestmark = pytest.mark.unit

WATCH = {"namespace": "bad-input", "name": "w"}


# -- globs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("[", "'[' has a '[' at position 0 that is never closed"),
        ("data[.csv", "'data[.csv' has a '[' at position 4 that is never closed"),
        ("[!]", "'[!]' has a '[' at position 0 that is never closed"),
        ("[]", "'[]' has a '[' at position 0 that is never closed"),
        ("report].csv", "'report].csv' has a ']' at position 6 that closes no '['"),
        ("[a]].csv", "'[a]].csv' has a ']' at position 3 that closes no '['"),
        ("[z-a].csv", "'[z-a].csv' has the reversed range 'z-a'"),
        ("a\x00.csv", "'a\\x00.csv' contains a NUL character"),
    ],
)
def test_globs_that_cannot_match_as_intended_are_refused(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^patterns: {re.escape(message)}"):
        check_globs("patterns", [pattern])


@pytest.mark.parametrize(
    "pattern", ["*", "*.csv", "a[bc].csv", "[!a]*", "[]]", "[[]", "[]a]*", "[a-]", "*[0-9][0-9].json", "?.txt"]
)
def test_sound_globs_and_the_literal_bracket_forms_pass(pattern: str) -> None:
    assert glob_problem(pattern) is None
    fnmatch.translate(pattern)  # and fnmatch reads them as classes, not literals


def test_the_literal_forms_the_message_suggests_do_match_brackets() -> None:
    assert fnmatch.fnmatchcase("[", "[[]") and fnmatch.fnmatchcase("]", "[]]")


@pytest.mark.parametrize(
    ("kwargs", "param", "value"),
    [
        ({"patterns": "["}, "patterns", "["),
        ({"patterns": ["*.csv", "in[.json"]}, "patterns", "in[.json"),
        ({"ignore_patterns": ["*.tmp", "]"]}, "ignore_patterns", "]"),
    ],
)
def test_directory_patterns_are_checked(kwargs: dict[str, Any], param: str, value: str) -> None:
    with pytest.raises(ValueError, match=rf"^{param}: {re.escape(repr(value))}"):
        MultiDirectoryTrigger(directories=["/data/in"], **kwargs, **WATCH)
    with pytest.raises(ValueError, match=rf"^{param}: {re.escape(repr(value))}"):
        MultiDirectorySensor(task_id="t", directories=["/data/in"], **kwargs)


@pytest.mark.parametrize("glob", ["[", ["*.csv", "landing/[2026.csv"], "x]"])
def test_s3_glob_is_checked(glob: str | list[str]) -> None:
    bad = glob if isinstance(glob, str) else glob[-1]
    with pytest.raises(ValueError, match=rf"^glob: {re.escape(repr(bad))}"):
        S3ObjectsTrigger(bucket="data-lake", glob=glob, **WATCH)
    with pytest.raises(ValueError, match=rf"^glob: {re.escape(repr(bad))}"):
        S3ObjectsSensor(task_id="t", bucket="data-lake", glob=glob)


# -- paths -------------------------------------------------------------------------------------------
def test_nul_in_a_directory_is_refused_naming_directories() -> None:
    bad = "/data/in\x00/acme"
    for build in (
        lambda: MultiDirectoryTrigger(directories=["/data/ok", bad], **WATCH),
        lambda: MultiDirectorySensor(task_id="t", directories=[bad]),
        lambda: directory_asset("uploads", directories=[bad]),
    ):
        with pytest.raises(ValueError, match=r"^directories must not contain NUL characters .*'/data/in\\x00/acme'"):
            build()


# -- sensors name their own parameters -----------------------------------------------------------------
SENSORS: list[tuple[type, dict[str, Any]]] = [
    (MultiDirectorySensor, {"directories": ["/data/in"]}),
    (S3ObjectsSensor, {"bucket": "data-lake"}),
    (PostgresRowsSensor, {"postgres_conn_id": "orders", "table": "orders", "watermark_columns": ["updated_at"]}),
]


@pytest.mark.parametrize(("sensor", "kwargs"), SENSORS, ids=lambda v: getattr(v, "__name__", ""))
def test_sensors_say_poke_interval_not_the_triggers_poll_interval(sensor: type, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"^poke_interval must be a number of seconds > 0 .*got 0$") as error:
        sensor(task_id="t", poke_interval=0, **kwargs)
    assert "poll_interval" not in str(error.value).split("(")[0]


@pytest.mark.parametrize(("sensor", "kwargs"), SENSORS, ids=lambda v: getattr(v, "__name__", ""))
def test_sensors_name_state_namespace_and_state_name(sensor: type, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"^state_name must be at most 250 characters, got 300"):
        sensor(task_id="t", state_name="x" * 300, **kwargs)
    with pytest.raises(ValueError, match=r"^state_namespace must be a non-empty string, got ' '"):
        sensor(task_id="t", state_namespace=" ", **kwargs)


def test_templated_state_names_are_left_for_run_time() -> None:
    MultiDirectorySensor(task_id="t", directories=["/data/in"], state_name="{{ ds }}-" + "x" * 300)


def test_none_of_the_refusals_wrote_process_state() -> None:
    before = list_all(configured_backend())
    for build in (
        lambda: MultiDirectorySensor(task_id="t", directories=["/data/in"], patterns="["),
        lambda: S3ObjectsSensor(task_id="t", bucket="data-lake", glob="["),
        lambda: MultiDirectorySensor(task_id="t", directories=["/x\x00"]),
        lambda: MultiDirectorySensor(task_id="t", directories=["/data/in"], poke_interval=0),
    ):
        with pytest.raises(ValueError):
            build()
    assert list_all(configured_backend()) == before
