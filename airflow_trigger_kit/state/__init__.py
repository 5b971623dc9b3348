"""ProcessState: where watchers and sensors keep their watermarks.

``ProcessState(namespace, name)`` is a versioned ``key -> JSON value`` store with compare-and-set
writes, async methods (``aget``/``aset``/``adelete``/``alist``/``aclear``) and sync twins
(``get``/``set``/``delete``/``list``/``clear``). The backend (SQLite by default, PostgreSQL when
``[trigger_kit] state_conn_id`` names a connection) is chosen from configuration.
"""

from __future__ import annotations

from airflow_trigger_kit.state.model import (
    InvalidStateInput,
    StateConflict,
    StateEntry,
    StateStoreUnavailable,
    StoredEntry,
)
from airflow_trigger_kit.state.process_state import ProcessState, alist_all, list_all

__all__ = [
    "InvalidStateInput",
    "ProcessState",
    "StateConflict",
    "StateEntry",
    "StateStoreUnavailable",
    "StoredEntry",
    "alist_all",
    "list_all",
]
