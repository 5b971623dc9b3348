"""Feeders: one per watched source, so every scenario is written once and runs for each source.

A feeder knows how to make data land in its source (write a file, put an object, insert a row),
which example DAGs watch that data (the asset-scheduled DAG and the deferrable-sensor DAG in
``dags/``), the environment and connections those DAGs read, how to recognise one of its items in
an event payload, and how to compare two of its watermarks. The end-to-end tests and ``make demo``
drive the same feeders.

Each item gets a caller-chosen *label* (``crash-0042``) that ends up in what identifies the item in
the payload (file name, object key, row key), so deliveries can be matched to what was fed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from devtools.airflow_stack import DAGS_FOLDER


@dataclass
class FeedLog:
    """What a feeder made land, and when (wall clock), by identity."""

    landed: dict[str, float] = field(default_factory=dict)
    by_label: dict[str, str] = field(default_factory=dict)
    sensor_items: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, identity: str, label: str, *, for_sensor: bool = False) -> str:
        with self.lock:
            self.landed[identity] = time.time()
            self.by_label[label] = identity
            if for_sensor:
                self.sensor_items.add(identity)
        return identity

    def has(self, label: str) -> bool:
        with self.lock:
            return label in self.by_label

    def identities(self, label_prefix: str = "") -> set[str]:
        """Identities of the items fed so far whose label starts with ``label_prefix``."""
        with self.lock:
            return {identity for label, identity in self.by_label.items() if label.startswith(label_prefix)}


class Feeder(ABC):
    """One source as the scenarios see it. Subclasses fill in the class attributes and hooks."""

    source: ClassVar[str]
    dag_files: ClassVar[tuple[str, ...]]
    asset_dag_id: ClassVar[str]
    asset_name: ClassVar[str]
    asset_task_id: ClassVar[str]
    sensor_dag_id: ClassVar[str]
    sensor_task_id: ClassVar[str]
    sensor_downstream_task_id: ClassVar[str]
    sensor_continuous: ClassVar[bool] = False
    """True when the sensor DAG is ``@continuous`` (unpausing starts its runs; no manual trigger)."""
    asset_sees_sensor_items: ClassVar[bool] = False
    """True when the asset's watcher also watches where sensor items land (one table for both)."""

    def __init__(self) -> None:
        self.log = FeedLog()

    # -- availability and wiring --------------------------------------------------------------
    @classmethod
    def missing(cls, dags_folder: Path = DAGS_FOLDER) -> str | None:
        """Why this source cannot run (its example DAG files are not there yet), or None."""
        absent = [f for f in cls.dag_files if not (dags_folder / f).exists()]
        if absent:
            return f"{cls.source}: example DAG file(s) {', '.join(absent)} not found in {dags_folder}"
        return None

    def stack_env(self) -> dict[str, str]:
        """Variables the example DAGs of this source read (directories, bucket, table, conn ids)."""
        return {}

    def connections(self) -> dict[str, str]:
        """Airflow connections (``conn_id -> URI or JSON``) the triggers and sensors use."""
        return {}

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Create what must exist before the DAGs run (directories, bucket, table)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients."""

    # -- data ---------------------------------------------------------------------------------
    @abstractmethod
    def add_asset_item(self, label: str) -> str:
        """Make one item land where the asset's watcher looks; return its identity."""

    @abstractmethod
    def add_sensor_item(self, label: str) -> str:
        """Make one item land where the sensor DAG looks; return its identity."""

    @abstractmethod
    def identity(self, item: dict[str, Any]) -> str:
        """The identity of a payload item, comparable with what ``add_*_item`` returned."""

    @abstractmethod
    def asset_task_identities(self, xcom: Any) -> set[str]:
        """Identities in the return value (XCom) of the asset DAG's task."""

    @abstractmethod
    def sensor_downstream_identities(self, xcom: Any) -> set[str]:
        """Identities in the return value (XCom) of the task downstream of the sensor."""

    @abstractmethod
    def watermark(self, cursor: Any) -> dict[str, tuple[int, ...]]:
        """The cursor's positions, per sub-watch (directory, prefix, ...), as comparable tuples.

        A later cursor must hold every sub-watch of an earlier one at an equal or greater position:
        that is what "the watermark never moves backwards" means for this source.
        """

    def asset_visible(self) -> set[str]:
        """Every identity fed so far that the asset's watcher must eventually deliver."""
        with self.log.lock:
            if self.asset_sees_sensor_items:
                return set(self.log.landed)
            return set(self.log.landed) - self.log.sensor_items

    def feed(self, labels: Iterable[str], interval: float, stop: threading.Event | None = None) -> list[str]:
        """Add asset items one per ``interval`` seconds (paced on a clock, so a slow add catches up)."""
        added: list[str] = []
        start = time.monotonic()
        for n, label in enumerate(labels):
            delay = start + n * interval - time.monotonic()
            if stop is not None and stop.wait(max(delay, 0)):
                break
            added.append(self.add_asset_item(label))
        return added


def watermark_not_behind(earlier: dict[str, tuple[int, ...]], later: dict[str, tuple[int, ...]]) -> list[str]:
    """Sub-watches whose position in ``later`` is behind (or missing from) ``earlier``'s."""
    return [key for key, position in earlier.items() if key not in later or later[key] < position]


# -- directories ------------------------------------------------------------------------------------
class DirectoryFeeder(Feeder):
    """Files in the client upload directories of ``dags/directory_*_dag.py``.

    Files are published the way careful writers do: written under an ignored temporary name
    (``.name.tmp``) and renamed into place, so the watch never sees half a file.
    """

    source = "directory"
    dag_files = ("directory_asset_dag.py", "directory_sensor_dag.py")
    asset_dag_id = "trigger_kit_directory_asset"
    asset_name = "trigger_kit_client_uploads"
    asset_task_id = "process_files"
    sensor_dag_id = "trigger_kit_directory_sensor"
    sensor_task_id = "wait_for_uploads"
    sensor_downstream_task_id = "validate_files"
    clients = ("acme", "globex", "initech", "umbrella", "wayne")

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.where: dict[str, str] = {}
        """File name -> the client directory it was dropped into."""
        self._count = 0
        self._lock = threading.Lock()

    def stack_env(self) -> dict[str, str]:
        return {"TRIGGER_KIT_DEMO_ROOT": str(self.root)}

    def setup(self) -> None:
        for kind in ("asset_uploads", "sensor_uploads"):
            for client in self.clients:
                (self.root / kind / client).mkdir(parents=True, exist_ok=True)

    def _publish(self, kind: str, label: str, suffix: str, body: str, *, for_sensor: bool = False) -> str:
        with self._lock:
            client = self.clients[self._count % len(self.clients)]
            self._count += 1
        name = f"{label}{suffix}"
        directory = self.root / kind / client
        tmp = directory / f".{name}.tmp"
        tmp.write_text(body)
        os.rename(tmp, directory / name)
        self.where[name] = client
        return self.log.record(name, label, for_sensor=for_sensor)

    def add_asset_item(self, label: str) -> str:
        return self._publish("asset_uploads", label, ".csv", f"id,label\n1,{label}\n")

    def add_sensor_item(self, label: str) -> str:
        return self._publish("sensor_uploads", label, ".json", f'{{"label": "{label}"}}\n', for_sensor=True)

    def identity(self, item: dict[str, Any]) -> str:
        return str(item["name"])

    def asset_task_identities(self, xcom: Any) -> set[str]:
        return {os.path.basename(entry["path"]) for entry in xcom}

    def sensor_downstream_identities(self, xcom: Any) -> set[str]:
        return {entry["file"] for entry in xcom["valid"]}

    def watermark(self, cursor: Any) -> dict[str, tuple[int, ...]]:
        return {directory: (int(state.get("hwm", 0)),) for directory, state in (cursor or {}).get("dirs", {}).items()}


# -- S3 -------------------------------------------------------------------------------------------------
class S3Feeder(Feeder):
    """Objects in a bucket of an S3 endpoint (moto's server in tests and the demo).

    ``dags/s3_asset_dag.py`` watches ``events/*.parquet``; ``dags/s3_sensor_dag.py`` (``@continuous``)
    waits for ``landing/*.csv|*.json`` of at least one byte. With ``notifications`` (the default),
    :meth:`setup` also creates an SQS queue and sends the bucket's object events to it, and the
    asset DAG is woken through it (``TRIGGER_KIT_S3_SQS_QUEUE_URL``).
    """

    source = "s3"
    dag_files = ("s3_asset_dag.py", "s3_sensor_dag.py")
    asset_dag_id = "trigger_kit_s3_asset"
    asset_name = "trigger_kit_s3_landing_objects"
    asset_task_id = "load"
    sensor_dag_id = "trigger_kit_s3_sensor"
    sensor_task_id = "wait_for_objects"
    sensor_downstream_task_id = "process"
    sensor_continuous = True
    conn_id = "trigger_kit_s3"
    asset_prefix = "events/"
    sensor_prefix = "landing/"

    def __init__(
        self, endpoint_url: str, bucket: str = "trigger-kit-e2e", poke_interval: float = 2.0, notifications: bool = True
    ) -> None:
        super().__init__()
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.poke_interval = poke_interval
        self.notifications = notifications
        self.queue_url: str | None = None
        """The SQS queue the bucket's events go to (set by :meth:`setup` with ``notifications``)."""
        self._client: Any = None
        self._lock = threading.Lock()

    def stack_env(self) -> dict[str, str]:
        interval = f"{self.poke_interval:g}"
        return {
            "TRIGGER_KIT_S3_BUCKET": self.bucket,
            "TRIGGER_KIT_S3_ASSET_PREFIX": self.asset_prefix,
            "TRIGGER_KIT_S3_PREFIX": self.sensor_prefix,
            "TRIGGER_KIT_S3_CONN_ID": self.conn_id,
            "TRIGGER_KIT_S3_POKE_INTERVAL": interval,
            **({"TRIGGER_KIT_S3_SQS_QUEUE_URL": self.queue_url} if self.queue_url else {}),
        }

    def connections(self) -> dict[str, str]:
        import json

        return {
            self.conn_id: json.dumps(
                {
                    "conn_type": "aws",
                    "login": "testing",
                    "password": "testing",
                    "extra": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
                }
            )
        }

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3  # type: ignore[import-untyped]

                self._client = boto3.client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    aws_access_key_id="testing",
                    aws_secret_access_key="testing",
                    region_name="us-east-1",
                )
            return self._client

    def setup(self) -> None:
        with contextlib.suppress(self.client.exceptions.BucketAlreadyOwnedByYou):
            self.client.create_bucket(Bucket=self.bucket)
        if self.notifications:
            self.queue_url = self._notify_queue(f"{self.bucket}-events")

    def _notify_queue(self, name: str) -> str:
        """A queue for the bucket's object events, and the bucket's notification configuration sending them."""
        import boto3

        sqs = boto3.client(
            "sqs",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        try:
            url = str(sqs.create_queue(QueueName=name)["QueueUrl"])
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        finally:
            sqs.close()
        self.client.put_bucket_notification_configuration(
            Bucket=self.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]
            },
        )
        return url

    def add_asset_item(self, label: str) -> str:
        key = f"{self.asset_prefix}{label}.parquet"
        self.client.put_object(Bucket=self.bucket, Key=key, Body=f"PAR1 {label}".encode())
        return self.log.record(key, label)

    def add_sensor_item(self, label: str) -> str:
        key = f"{self.sensor_prefix}{label}.csv"
        self.client.put_object(Bucket=self.bucket, Key=key, Body=f"id,label\n1,{label}\n".encode())
        return self.log.record(key, label, for_sensor=True)

    def identity(self, item: dict[str, Any]) -> str:
        return str(item["key"])

    def asset_task_identities(self, xcom: Any) -> set[str]:
        prefix = f"s3://{self.bucket}/"
        return {uri.removeprefix(prefix) for uri in xcom}

    def sensor_downstream_identities(self, xcom: Any) -> set[str]:
        return set(xcom)

    def watermark(self, cursor: Any) -> dict[str, tuple[int, ...]]:
        positions: dict[str, tuple[int, ...]] = {}
        for prefix, state in (cursor or {}).get("prefixes", {}).items():
            if isinstance(state, dict):  # window layout: floor and newest LastModified seen
                hwm = state.get("hwm")
                positions[prefix] = (int(state.get("floor", 0)), -1 if hwm is None else int(hwm))
        return positions

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# -- Postgres ----------------------------------------------------------------------------------------
ORDERS_DDL = """
CREATE TABLE IF NOT EXISTS public.orders (
    id bigserial PRIMARY KEY,
    customer text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    status text NOT NULL DEFAULT 'new',
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS orders_updated_at_id ON public.orders (updated_at, id);
"""
"""The table of ``dags/postgres_sensor_dag.py``'s docstring, watched by both Postgres example DAGs."""

ORDERS_NOTIFY_SQL = """
CREATE OR REPLACE FUNCTION public.trigger_kit_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS orders_trigger_kit_notify ON public.orders;
CREATE TRIGGER orders_trigger_kit_notify
    AFTER INSERT OR UPDATE ON public.orders
    FOR EACH STATEMENT EXECUTE FUNCTION public.trigger_kit_notify('trigger_kit_orders');
"""
"""The notify trigger of docs/postgres.md ("Change notifications") for ``notify_channel="trigger_kit_orders"``
of ``dags/postgres_asset_dag.py`` (a test keeps the two equal)."""


class PostgresFeeder(Feeder):
    """Order rows in ``public.orders``, watched by ``dags/postgres_asset_dag.py`` and ``postgres_sensor_dag.py``.

    An item's identity is its ``customer`` column, set to the item's label. Rows for the asset are
    inserted with ``status='cancelled'``: the asset DAG's task returns only a count plus the ids of
    cancelled orders, so that is how its XCom names the rows it processed (and the sensor DAG
    filters cancelled rows out). Rows for the sensor are ``status='new'``; the asset's watcher sees
    them too (:attr:`asset_sees_sensor_items`). The sensor's downstream task returns totals per
    customer. The demo passes ``asset_status="new"``: it shows timings, not XCom contents.
    """

    source = "postgres"
    dag_files = ("postgres_asset_dag.py", "postgres_sensor_dag.py")
    asset_dag_id = "trigger_kit_postgres_asset"
    asset_name = "trigger_kit_order_rows"
    asset_task_id = "load_orders"
    sensor_dag_id = "trigger_kit_postgres_sensor"
    sensor_task_id = "wait_for_orders"
    sensor_downstream_task_id = "process_orders"
    conn_id = "trigger_kit_orders"
    asset_sees_sensor_items = True

    def __init__(self, dsn: str, *, asset_status: str = "cancelled") -> None:
        super().__init__()
        self.dsn = dsn
        self.asset_status = asset_status
        self._ids: dict[str, str] = {}
        self._ids_lock = threading.Lock()

    def _fetchval(self, sql: str, *args: Any, script: bool = False) -> Any:
        """One statement (or a ``script``) on a fresh connection: feeders run in threads, each needs its loop."""
        import asyncio

        import asyncpg

        async def run() -> Any:
            conn = await asyncpg.connect(self.dsn)
            try:
                return await (conn.execute(sql) if script else conn.fetchval(sql, *args))
            finally:
                await conn.close()

        return asyncio.run(run())

    def stack_env(self) -> dict[str, str]:
        return {"TRIGGER_KIT_DEMO_PG_CONN_ID": self.conn_id}

    def connections(self) -> dict[str, str]:
        return {self.conn_id: self.dsn}

    def setup(self) -> None:
        self._fetchval(ORDERS_DDL + ORDERS_NOTIFY_SQL, script=True)

    def _insert(self, label: str, status: str, *, for_sensor: bool = False) -> str:
        row_id = self._fetchval(
            "INSERT INTO public.orders (customer, amount, status) VALUES ($1, $2, $3) RETURNING id",
            label,
            Decimal("12.50"),
            status,
        )
        with self._ids_lock:
            self._ids[str(row_id)] = label
        return self.log.record(label, label, for_sensor=for_sensor)

    def add_asset_item(self, label: str) -> str:
        return self._insert(label, self.asset_status)

    def add_sensor_item(self, label: str) -> str:
        return self._insert(label, "new", for_sensor=True)

    def identity(self, item: dict[str, Any]) -> str:
        return str(item["row"]["customer"])

    def asset_task_identities(self, xcom: Any) -> set[str]:
        with self._ids_lock:
            return {self._ids.get(str(row_id), f"id {row_id} (not fed here)") for row_id in xcom["cancelled"]}

    def sensor_downstream_identities(self, xcom: Any) -> set[str]:
        return set(xcom["totals"])

    def watermark(self, cursor: Any) -> dict[str, tuple[int, ...]]:
        if not isinstance(cursor, dict) or cursor.get("d") != "watermark" or not cursor.get("pos"):
            return {}
        return {"(" + ", ".join(cursor["cols"]) + ")": tuple(_order_value(v) for v in cursor["pos"])}


def _order_value(text: str) -> int:
    """A keyset cursor value (integer or timestamp text) as an integer that sorts the same way."""
    try:
        return int(text)
    except ValueError:
        moment = datetime.fromisoformat(text)
        return int(moment.timestamp() * 1_000_000)


FeederFactory = Callable[[], Feeder]
