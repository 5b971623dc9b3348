"""Airflow connections, resolved at run time by conn id so no secret is ever serialized.

Triggers run in the triggerer's subprocess, which has no metadata-database access: connections come
through the supervisor, so inside an event loop they must be fetched with the async API. Tasks and
the CLI use the sync API (environment variables, secrets backends, or the API server).
"""

from __future__ import annotations

import asyncio
from typing import Any

PG_SSL_EXTRAS = ("sslmode", "sslrootcert", "sslcert", "sslkey")


async def aget_connection(conn_id: str) -> Any:
    """Fetch an Airflow connection without blocking the running event loop."""
    from airflow.sdk import BaseHook

    aget = getattr(BaseHook, "aget_connection", None)
    if aget is not None:
        return await aget(conn_id)
    return await asyncio.to_thread(BaseHook.get_connection, conn_id)


def postgres_connect_kwargs(conn: Any, *, application_name: str = "airflow-trigger-kit") -> dict[str, Any]:
    """asyncpg ``connect()`` keyword arguments from an Airflow Postgres connection.

    Honours host, port, login, password, schema (the database, as in Airflow's Postgres provider)
    and the extras ``sslmode``/``sslrootcert``/``sslcert``/``sslkey``, ``connect_timeout`` and
    ``options`` (passed as server settings).
    """
    extra: dict[str, Any] = dict(getattr(conn, "extra_dejson", None) or {})
    kwargs: dict[str, Any] = {
        "host": conn.host or "localhost",
        "port": int(conn.port or 5432),
        "user": conn.login or None,
        "password": conn.password or None,
        "database": conn.schema or extra.get("dbname") or None,
        "server_settings": {"application_name": application_name},
    }
    if "connect_timeout" in extra:
        kwargs["timeout"] = float(extra["connect_timeout"])
    ssl = _ssl_from_extras(extra)
    if ssl is not None:
        kwargs["ssl"] = ssl
    return {k: v for k, v in kwargs.items() if v is not None}


def _ssl_from_extras(extra: dict[str, Any]) -> Any:
    sslmode = extra.get("sslmode")
    if not any(extra.get(k) for k in PG_SSL_EXTRAS):
        return None
    if not any(extra.get(k) for k in ("sslrootcert", "sslcert", "sslkey")):
        return sslmode  # asyncpg accepts libpq's mode names: disable, prefer, require, verify-ca, ...
    import ssl as ssl_module

    ctx = ssl_module.create_default_context(cafile=extra.get("sslrootcert"))
    if extra.get("sslcert"):
        ctx.load_cert_chain(extra["sslcert"], extra.get("sslkey"))
    if sslmode in ("require", "prefer", "allow"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl_module.CERT_NONE
    elif sslmode == "verify-ca":
        ctx.check_hostname = False
    return ctx
