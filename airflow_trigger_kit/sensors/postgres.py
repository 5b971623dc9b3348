"""PostgresRowsSensor: wait for new or changed rows without holding a worker slot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_trigger_kit.sensors.base import IncrementalSensor
from airflow_trigger_kit.sources.postgres import (
    DEFAULT_STATEMENT_TIMEOUT,
    PostgresWatchConfig,
    validate_notify_channel,
)
from airflow_trigger_kit.triggers.postgres import (
    DEFAULT_POSTGRES_CONN_ID,
    PostgresRowsTrigger,
    postgres_source_kwargs,
    validate_postgres_conn_id,
)


class PostgresRowsSensor(IncrementalSensor):
    """Succeeds when the watched table (or query) changed; returns the changes (XCom).

    With ``detection="watermark"`` the result's ``items`` are the new and updated rows
    (``item["row"]``, ``item["key"]``, ``item["watermark"]``, ``item["dedup_id"]``), at most
    ``max_items``; the rest come with the next run. Parameters as
    :class:`~airflow_trigger_kit.triggers.postgres.PostgresRowsTrigger` (``table``, ``detection``,
    ``columns``, ``watermark_columns``, ``key_columns``, ``filter``, ``query``, ``xid_column``,
    ``lookback``, ``statement_timeout``, ``postgres_conn_id``, ``notify_channel``) plus those of
    :class:`~airflow_trigger_kit.sensors.base.IncrementalSensor`. ``filter`` and ``query`` are
    templated.

    The watermark is committed in ``execute_complete`` with compare-and-set against the version
    the run started from (or by a downstream task with ``commit="manual"``), so a failed run makes
    the same rows come back.
    """

    trigger_class = PostgresRowsTrigger
    template_fields: tuple[str, ...] = (*IncrementalSensor.template_fields, "filter", "query")

    def __init__(
        self,
        *,
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.table = table
        self.detection = detection
        self.columns = columns
        self.watermark_columns = watermark_columns
        self.key_columns = key_columns
        self.filter = filter
        self.query = query
        self.xid_column = xid_column
        self.lookback = lookback
        self.statement_timeout = statement_timeout
        self.postgres_conn_id = validate_postgres_conn_id(postgres_conn_id)
        self.notify_channel = validate_notify_channel(notify_channel)
        if not _templated(filter) and not _templated(query):
            self.source_kwargs()  # validate at DAG parse time

    def source_kwargs(self) -> dict[str, Any]:
        config = PostgresWatchConfig.create(
            detection=self.detection,
            table=self.table,
            columns=self.columns,
            watermark_columns=self.watermark_columns,
            key_columns=self.key_columns,
            filter=self.filter,
            query=self.query,
            xid_column=self.xid_column,
            lookback=self.lookback,
            statement_timeout=self.statement_timeout,
        )
        return postgres_source_kwargs(config, self.postgres_conn_id, self.notify_channel)


def _templated(value: str | None) -> bool:
    return isinstance(value, str) and "{{" in value
