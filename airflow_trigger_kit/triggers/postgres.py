"""PostgresRowsTrigger: new and changed rows, row counts or query results of a Postgres database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from typing_extensions import Unpack

from airflow_trigger_kit.settings import CommonTriggerKwargs, WatchSettings
from airflow_trigger_kit.sources.base import PermanentSourceError, Source
from airflow_trigger_kit.sources.postgres import (
    DEFAULT_STATEMENT_TIMEOUT,
    PostgresSource,
    PostgresWatchConfig,
    validate_notify_channel,
)
from airflow_trigger_kit.triggers.base import IncrementalTrigger
from airflow_trigger_kit.triggers.session import Subscription

DEFAULT_POSTGRES_CONN_ID = "postgres_default"
APPLICATION_NAME = "airflow-trigger-kit-watch"


class PostgresRowsTrigger(IncrementalTrigger):
    """Fires when rows of a table are inserted or updated, its row count changes, or a query's result changes.

    Neither Airflow's ``common.sql`` nor its Postgres provider has a deferrable or event-driven
    incremental SQL watch (``SqlSensor`` holds a worker slot while it pokes). This trigger keeps a
    cursor, so each row is reported once, and it reads through one asyncpg connection per run.

    :param table: ``"schema.table"`` (SQL spelling: unquoted names fold to lower case), ``"table"``
        (schema ``public``) or an exact ``(schema, table)`` pair. Not with ``query_change``.
    :param detection: ``"watermark"`` (new and changed rows, keyset pagination over
        ``watermark_columns``), ``"row_count"`` (``count(*)`` changes) or ``"query_change"`` (the
        result of ``query`` changes).
    :param columns: the columns put in each reported row (default: all). Exact names.
    :param watermark_columns: ordered columns whose values only grow for new or changed rows, such
        as ``["updated_at", "id"]``; the key columns are appended to make the order total.
    :param key_columns: columns identifying a row (default: the primary key); used for the order
        and the dedup ids.
    :param filter: an SQL boolean expression limiting the rows watched (``"status = 'paid'"``); runs
        in a read-only transaction; a single expression only.
    :param query: ``query_change`` only: a SELECT whose result is fingerprinted.
    :param xid_column: an ``xid8`` column stamped with ``pg_current_xact_id()``: exact handling of
        late commits (see ``docs/postgres.md``).
    :param lookback: the late-commit window on the first watermark column when ``xid_column`` is not
        used: seconds for timestamp and date columns, values for numeric ones (default: 300 s or
        10,000; ``0`` turns it off).
    :param statement_timeout: seconds any single statement may run.
    :param postgres_conn_id: the Airflow connection, looked up when the trigger runs; its password
        never enters the trigger's kwargs or logs.
    :param notify_channel: a channel a trigger on the table notifies (``pg_notify``) after each write:
        the triggerer listens to it (one connection per conn id) and polls as soon as a notification
        arrives, and only every ``reconcile_interval`` otherwise. Off (``None``) by default; see
        "Change notifications" in ``docs/postgres.md``.

    The common parameters (``namespace``, ``name``, ``mode``, ``start_from``, ``poll_interval``,
    ``max_items``, retries) are those of :class:`~airflow_trigger_kit.settings.WatchSettings`. The
    design, cursor layouts and guarantees are in :mod:`airflow_trigger_kit.sources.postgres`.

    Errors: an unknown table or column, a missing privilege, rejected credentials, an unknown
    connection id or SQL the server rejects fail the trigger with a message naming them; a lost
    connection or a restarting server is retried with exponential backoff.
    """

    source_kind = "postgres"

    def __init__(
        self,
        *,
        namespace: str,
        name: str,
        table: str | Sequence[str] | None = None,
        detection: str = "watermark",
        columns: str | Sequence[str] | None = None,
        watermark_columns: str | Sequence[str] | None = None,
        key_columns: str | Sequence[str] | None = None,
        filter: str | None = None,
        query: str | None = None,
        xid_column: str | None = None,
        lookback: float | None = None,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
        postgres_conn_id: str = DEFAULT_POSTGRES_CONN_ID,
        notify_channel: str | None = None,
        poll_interval: float = 30.0,
        **common: Unpack[CommonTriggerKwargs],
    ) -> None:
        self.config = PostgresWatchConfig.create(
            detection=detection,
            table=table,
            columns=columns,
            watermark_columns=watermark_columns,
            key_columns=key_columns,
            filter=filter,
            query=query,
            xid_column=xid_column,
            lookback=lookback,
            statement_timeout=statement_timeout,
        )
        self.postgres_conn_id = validate_postgres_conn_id(postgres_conn_id)
        self.notify_channel = validate_notify_channel(notify_channel)
        settings = WatchSettings(namespace=namespace, name=name, poll_interval=poll_interval, **common)
        super().__init__(
            source_kwargs=postgres_source_kwargs(self.config, self.postgres_conn_id, self.notify_channel),
            settings=settings,
        )

    def build_source(self) -> Source:
        conn_id = self.postgres_conn_id

        async def connect_kwargs() -> dict[str, Any]:
            return await aconnect_kwargs(conn_id)

        return PostgresSource(self.config, connect_kwargs, label=f"postgres_conn_id={conn_id!r}")

    def build_shared_source(self) -> Source:
        """The hub's source for this watch: connections from the process's pool for the conn id."""
        from airflow_trigger_kit.hub import get_hub

        conn_id = self.postgres_conn_id

        async def connect_kwargs() -> dict[str, Any]:
            return await aconnect_kwargs(conn_id)

        connector = get_hub().postgres_pools.connector(conn_id, connect_kwargs)
        return PostgresSource(self.config, label=f"postgres_conn_id={conn_id!r}", connector=connector)

    async def subscribe(self) -> Subscription:
        """The hub's channel of this watch; with ``notify_channel``, hinted by the conn id's listener too."""
        from airflow_trigger_kit.hub import get_hub

        hub = get_hub()
        subscription = hub.channels.subscribe(self.source_identity(), self.build_shared_source)
        if self.notify_channel is None:
            return subscription
        conn_id = self.postgres_conn_id

        async def connect_kwargs() -> dict[str, Any]:
            return await aconnect_kwargs(conn_id)

        pools = hub.postgres_pools
        return pools.listen(subscription, conn_id, self.notify_channel, connect_kwargs, hub.channels.ticker)


def postgres_source_kwargs(config: PostgresWatchConfig, conn_id: str, notify_channel: str | None) -> dict[str, Any]:
    """The serialized source parameters (the source identity): ``notify_channel`` only when set.

    Left out when ``None``, so watches serialized before the parameter existed keep their identity.
    """
    kwargs: dict[str, Any] = {**config.to_kwargs(), "postgres_conn_id": conn_id}
    if notify_channel is not None:
        kwargs["notify_channel"] = notify_channel
    return kwargs


async def aconnect_kwargs(conn_id: str) -> dict[str, Any]:
    """asyncpg connect kwargs for ``conn_id``, looked up now; a missing connection is permanent."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    from airflow_trigger_kit.connections import aget_connection, postgres_connect_kwargs

    try:
        conn = await aget_connection(conn_id)
    except AirflowNotFoundException:
        raise PermanentSourceError(
            f"postgres_conn_id={conn_id!r}: no such Airflow connection; create it (conn type 'postgres') or set "
            f"AIRFLOW_CONN_{conn_id.upper()}"
        ) from None
    return postgres_connect_kwargs(conn, application_name=APPLICATION_NAME)


def validate_postgres_conn_id(conn_id: str) -> str:
    if not isinstance(conn_id, str) or not conn_id.strip():
        raise ValueError(f"postgres_conn_id must be an Airflow connection id, got {conn_id!r}")
    return conn_id
