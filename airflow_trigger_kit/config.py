"""The ``[trigger_kit]`` configuration section, read in one place.

Every option is documented in :mod:`airflow_trigger_kit.provider_info` (the provider's ``config``
section) and in ``docs/configuration.md``; environment variables ``AIRFLOW__TRIGGER_KIT__<OPTION>``
override the file as for any Airflow option.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SECTION = "trigger_kit"

DEFAULTS: dict[str, str] = {
    "state_conn_id": "",
    "state_sqlite_path": "",
    "state_max_value_bytes": "65536",
    "state_table": "trigger_kit_process_state",
    "postgres_pool_size": "4",
}


def get_option(option: str) -> str:
    """Return ``[trigger_kit] option`` as a string, falling back to the documented default."""
    from airflow.configuration import conf

    value = conf.get(SECTION, option, fallback=DEFAULTS[option])
    return str(value).strip()


def airflow_home() -> Path:
    from airflow.configuration import AIRFLOW_HOME

    return Path(os.path.expanduser(str(AIRFLOW_HOME)))


@dataclass(frozen=True)
class StateSettings:
    """The resolved state-store settings; a change of any field selects a different backend."""

    conn_id: str
    sqlite_path: str
    max_value_bytes: int
    table: str

    @classmethod
    def from_config(cls) -> StateSettings:
        raw_limit = get_option("state_max_value_bytes")
        try:
            limit = int(raw_limit)
        except ValueError:
            raise ValueError(f"[trigger_kit] state_max_value_bytes must be an integer, got {raw_limit!r}") from None
        if limit <= 0:
            raise ValueError(f"[trigger_kit] state_max_value_bytes must be positive, got {limit}")
        table = get_option("state_table")
        if not table.replace("_", "").isalnum() or table[0].isdigit():
            raise ValueError(
                f"[trigger_kit] state_table must be a plain SQL identifier (letters, digits, _), got {table!r}"
            )
        sqlite_path = get_option("state_sqlite_path") or str(airflow_home() / "trigger_kit_state.db")
        return cls(
            conn_id=get_option("state_conn_id"),
            sqlite_path=sqlite_path,
            max_value_bytes=limit,
            table=table,
        )


def postgres_pool_size() -> int:
    """``[trigger_kit] postgres_pool_size``: most connections of one process to one Postgres connection."""
    raw = get_option("postgres_pool_size")
    try:
        size = int(raw)
    except ValueError:
        raise ValueError(f"[trigger_kit] postgres_pool_size must be an integer, got {raw!r}") from None
    if size < 1:
        raise ValueError(f"[trigger_kit] postgres_pool_size must be at least 1, got {size}")
    return size
