"""Select the ProcessState backend from ``[trigger_kit]`` configuration, in one place."""

from __future__ import annotations

import logging
import threading
from typing import Any

from airflow_trigger_kit.config import StateSettings
from airflow_trigger_kit.state.backends.base import StateBackend

log = logging.getLogger(__name__)

_lock = threading.Lock()
_backends: dict[StateSettings, StateBackend] = {}
_warned_per_host = False


def backend_for(settings: StateSettings) -> StateBackend:
    """The backend for these settings; one instance per distinct settings per process."""
    with _lock:
        backend = _backends.get(settings)
        if backend is None:
            backend = _build(settings)
            _backends[settings] = backend
        return backend


def configured_backend() -> StateBackend:
    """The backend named by the current ``[trigger_kit]`` configuration."""
    return backend_for(StateSettings.from_config())


def _build(settings: StateSettings) -> StateBackend:
    if settings.conn_id:
        from airflow_trigger_kit.connections import aget_connection, postgres_connect_kwargs
        from airflow_trigger_kit.state.backends.postgres import PostgresBackend

        conn_id = settings.conn_id

        async def connect_kwargs() -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowNotFoundException

            from airflow_trigger_kit.state.model import StateStoreUnavailable

            # A missing or malformed connection is an unavailable store like any other (the caller
            # retries or fails loudly), never a reason to fall back to another store or to no state.
            try:
                conn = await aget_connection(conn_id)
            except AirflowNotFoundException:
                raise StateStoreUnavailable(
                    f"ProcessState store unavailable: [trigger_kit] state_conn_id={conn_id!r} names no Airflow "
                    f"connection; define it (AIRFLOW_CONN_{conn_id.upper()}, a secrets backend or `airflow "
                    "connections add`), or leave state_conn_id empty for the SQLite store"
                ) from None
            try:
                return postgres_connect_kwargs(conn, application_name="airflow-trigger-kit-state")
            except (TypeError, ValueError) as exc:
                raise StateStoreUnavailable(
                    f"ProcessState store unavailable: the connection of [trigger_kit] state_conn_id={conn_id!r} "
                    f"is malformed: {type(exc).__name__}: {exc}"
                ) from exc

        return PostgresBackend(connect_kwargs, table=settings.table, label=f"postgres conn_id={conn_id!r}")

    from airflow_trigger_kit.state.backends.sqlite import SQLiteBackend

    _warn_if_state_is_per_host()
    return SQLiteBackend(settings.sqlite_path, table=settings.table)


def _warn_if_state_is_per_host() -> None:
    global _warned_per_host
    if _warned_per_host:
        return
    _warned_per_host = True
    try:
        from airflow.configuration import conf

        executor = str(conf.get("core", "executor", fallback="LocalExecutor"))
    except Exception:  # pragma: no cover - airflow config unreadable
        return
    if executor.split(",")[0].strip() not in ("LocalExecutor", "SequentialExecutor", ""):
        log.warning(
            "airflow-trigger-kit keeps ProcessState in a SQLite file on this host, but the executor is %s: "
            "state is per host, so a watcher or sensor on another host starts from its own state. Set "
            "[trigger_kit] state_conn_id to a Postgres connection to share state.",
            executor,
        )


async def aclose_backends() -> None:
    """Close the running loop's connections of every backend built so far, and forget them."""
    with _lock:
        backends = list(_backends.values())
        _backends.clear()
    for backend in backends:
        await backend.aclose()
