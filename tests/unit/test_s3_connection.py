"""AWS connection -> client settings, and the S3 trigger / sensor / asset as Airflow sees them."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from airflow.sdk.definitions.connection import Connection
from airflow.triggers.base import BaseEventTrigger

from airflow_trigger_kit.aws_connection import (
    AwsClientConfig,
    aresolve_client_config,
    client_config_from_connection,
    redact_url,
)
from airflow_trigger_kit.sources.base import PermanentSourceError
from airflow_trigger_kit.triggers.s3 import S3ObjectsTrigger

pytestmark = pytest.mark.unit

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLE-session-token"
URI = (
    f"aws://AKIAIOSFODNN7EXAMPLE:{SECRET}@/?endpoint_url=http%3A%2F%2F127.0.0.1%3A5000"
    f"&region_name=eu-west-1&aws_session_token={TOKEN}"
)


def kwargs_without_config(config: AwsClientConfig) -> dict[str, Any]:
    return {k: v for k, v in config.client_kwargs.items() if k != "config"}


def test_uri_form_parses_into_credentials_and_extras() -> None:
    conn = Connection.from_uri(URI, conn_id="lake")
    assert conn.extra_dejson == {
        "endpoint_url": "http://127.0.0.1:5000",
        "region_name": "eu-west-1",
        "aws_session_token": TOKEN,
    }
    config = client_config_from_connection(conn, conn_id="lake")
    assert kwargs_without_config(config) == {
        "aws_access_key_id": "AKIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key": SECRET,
        "aws_session_token": TOKEN,
        "region_name": "eu-west-1",
        "endpoint_url": "http://127.0.0.1:5000",
    }
    assert config.credential_source == "connection login/password with a session token"
    # Nothing secret in what may be logged or printed.
    for text in (repr(config), config.describe(), str(config)):
        assert SECRET not in text and TOKEN not in text and "AKIAIOSFODNN7EXAMPLE" not in text
    assert "aws_conn_id='lake'" in config.describe() and "http://127.0.0.1:5000" in config.describe()


def test_keys_from_extras_and_client_options() -> None:
    conn = Connection(
        conn_id="x",
        conn_type="aws",
        extra=json.dumps(
            {
                "aws_access_key_id": "AKIAEXTRA",
                "aws_secret_access_key": SECRET,
                "service_config": {"s3": {"endpoint_url": "https://minio.internal:9000"}},
                "endpoint_url": "https://not-used-for-s3",
                "verify": "false",
                "profile_name": "analytics",
                "config_kwargs": {"s3": {"addressing_style": "path"}, "read_timeout": 5},
            }
        ),
    )
    config = client_config_from_connection(conn, conn_id="x")
    kwargs = kwargs_without_config(config)
    assert kwargs["aws_access_key_id"] == "AKIAEXTRA"
    assert kwargs["endpoint_url"] == "https://minio.internal:9000"
    assert kwargs["verify"] is False
    assert config.profile_name == "analytics"
    botocore_config = config.client_kwargs["config"]
    assert botocore_config.s3 == {"addressing_style": "path"}
    assert botocore_config.read_timeout == 5
    assert botocore_config.connect_timeout == 10  # package default kept
    assert botocore_config.retries == {"mode": "standard", "max_attempts": 3}


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("s3.example.com", None, "https://s3.example.com"),
        ("http://127.0.0.1", 9000, "http://127.0.0.1:9000"),
        ("http://127.0.0.1:9000", 9000, "http://127.0.0.1:9000"),
    ],
)
def test_connection_host_is_the_endpoint_when_no_extra_names_one(host: str, port: int | None, expected: str) -> None:
    conn = Connection(conn_id="x", conn_type="aws", host=host, port=port)
    assert client_config_from_connection(conn, conn_id="x").endpoint_url == expected


def test_legacy_extra_host_is_an_endpoint() -> None:
    conn = Connection(conn_id="x", conn_type="aws", extra=json.dumps({"host": "http://localhost:4566"}))
    assert client_config_from_connection(conn, conn_id="x").endpoint_url == "http://localhost:4566"


def test_empty_connection_uses_the_default_chain_but_keeps_region_and_endpoint() -> None:
    conn = Connection(conn_id="x", conn_type="aws", extra=json.dumps({"region_name": "us-west-2"}))
    config = client_config_from_connection(conn, conn_id="x")
    assert kwargs_without_config(config) == {"region_name": "us-west-2"}
    assert config.credential_source == "botocore default chain"


@pytest.mark.parametrize(
    ("conn", "message"),
    [
        (Connection(conn_id="x", conn_type="aws", login="AKIA"), "its password \\(secret access key\\) is empty"),
        (Connection(conn_id="x", conn_type="aws", password=SECRET), "its login \\(access key id\\) is empty"),
        (
            Connection(conn_id="x", conn_type="aws", extra=json.dumps({"aws_access_key_id": "AKIA"})),
            "only one of 'aws_access_key_id' and 'aws_secret_access_key'",
        ),
        (
            Connection(conn_id="x", conn_type="aws", extra=json.dumps({"aws_session_token": TOKEN})),
            "'aws_session_token' needs an access key id",
        ),
        (
            Connection(conn_id="x", conn_type="aws", extra=json.dumps({"role_arn": "arn:aws:iam::1:role/r"})),
            "'role_arn' \\(assume role\\) is not supported",
        ),
        (
            Connection(conn_id="x", conn_type="aws", extra=json.dumps({"config_kwargs": "[1]"})),
            "'config_kwargs' must be an object",
        ),
        (
            Connection(conn_id="x", conn_type="aws", extra=json.dumps({"config_kwargs": {"bogus_option": 1}})),
            "invalid 'config_kwargs'",
        ),
        (Connection(conn_id="x", conn_type="aws", extra=json.dumps({"verify": 3})), "'verify' must be true, false"),
    ],
)
def test_bad_connections_fail_naming_conn_id_and_field_without_values(conn: Connection, message: str) -> None:
    with pytest.raises(PermanentSourceError, match=message) as info:
        client_config_from_connection(conn, conn_id="x")
    assert "aws_conn_id='x'" in str(info.value)
    assert SECRET not in str(info.value) and TOKEN not in str(info.value)


def test_redact_url_drops_user_info() -> None:
    assert redact_url("https://user:pw@minio:9000/base") == "https://minio:9000/base"


async def test_connection_is_resolved_from_the_environment_at_run_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_S3_UNIT_LAKE", URI)
    with caplog.at_level(logging.INFO):
        config = await aresolve_client_config("s3_unit_lake")
    assert config.client_kwargs["aws_secret_access_key"] == SECRET
    assert config.region_name == "eu-west-1"
    assert SECRET not in caplog.text and TOKEN not in caplog.text


async def test_missing_aws_default_falls_back_to_the_default_chain_but_other_ids_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_AWS_DEFAULT", raising=False)
    config = await aresolve_client_config("aws_default")
    assert kwargs_without_config(config) == {}
    assert (await aresolve_client_config(None)).conn_id is None
    with pytest.raises(PermanentSourceError, match="aws_conn_id='no_such_conn_xyz': no such Airflow connection"):
        await aresolve_client_config("no_such_conn_xyz")


# --------------------------------------------------------------------------------------------------
# trigger serialization
# --------------------------------------------------------------------------------------------------
def _json_safe(value: Any) -> bool:
    return json.loads(json.dumps(value)) == value


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bucket": "data-lake", "namespace": "ns", "name": "w"},
        {
            "bucket": "data-lake",
            "prefixes": ["in/a/", "in/b/"],
            "glob": ["*.csv", "*.json"],
            "min_size": 1,
            "event_kinds": "all",
            "lookback_seconds": 120,
            "aws_conn_id": "lake",
            "namespace": "ns",
            "name": "w",
            "mode": "sensor",
            "cursor": {"v": 1, "layout": "snapshot", "prefixes": {}},
            "cursor_version": 3,
            "poll_interval": 7.5,
            "max_items": 20,
        },
        {
            "bucket": "data-lake",
            "prefixes": "logs/2026/",
            "regex": r"\.gz$",
            "key_order": "lexicographic",
            "aws_conn_id": None,
            "namespace": "ns",
            "name": "w",
            "start_from": "beginning",
        },
    ],
)
def test_trigger_serialization_round_trip_is_json_safe_and_secret_free(
    kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_LAKE", URI)
    trigger = S3ObjectsTrigger(**kwargs)
    path, serialized = trigger.serialize()
    assert path == "airflow_trigger_kit.triggers.s3.S3ObjectsTrigger"
    assert S3ObjectsTrigger(**serialized).serialize() == (path, serialized)
    assert _json_safe(serialized)
    text = json.dumps(serialized)
    assert SECRET not in text and TOKEN not in text and "AKIA" not in text
    assert serialized["aws_conn_id"] == kwargs.get("aws_conn_id", "aws_default")


def test_trigger_rejects_bad_parameters_at_construction() -> None:
    with pytest.raises(ValueError, match=r"aws_conn_id must be an Airflow connection id or None .*, got ''"):
        S3ObjectsTrigger(bucket="data-lake", namespace="ns", name="w", aws_conn_id="")
    with pytest.raises(ValueError, match="needs key_order='any'"):
        S3ObjectsTrigger(bucket="data-lake", namespace="ns", name="w", key_order="lexicographic", event_kinds="deleted")
    with pytest.raises(ValueError, match="max_items must be an integer >= 1"):
        S3ObjectsTrigger(bucket="data-lake", namespace="ns", name="w", max_items=0)


def test_watchers_with_equal_kwargs_share_a_stream_key() -> None:
    a = S3ObjectsTrigger(bucket="data-lake", prefixes="in/", namespace="assets", name="landing")
    b = S3ObjectsTrigger(bucket="data-lake", prefixes="in/", namespace="assets", name="landing")
    assert a.shared_stream_key() == b.shared_stream_key() is not None
    sensor_mode = S3ObjectsTrigger(bucket="data-lake", namespace="ns", name="w", mode="sensor")
    assert not isinstance(sensor_mode, BaseEventTrigger)  # a deferral trigger: no shared stream


# --------------------------------------------------------------------------------------------------
# sensor and asset helper
# --------------------------------------------------------------------------------------------------
def test_sensor_validates_at_parse_time_and_builds_the_trigger() -> None:
    from airflow_trigger_kit.sensors.s3 import S3ObjectsSensor

    with pytest.raises(ValueError, match="bucket must be a bare bucket name"):
        S3ObjectsSensor(task_id="t", bucket="s3://data-lake/in/")
    with pytest.raises(ValueError, match="overlap"):
        S3ObjectsSensor(task_id="t", bucket="data-lake", prefixes=["in/", "in/x/"])
    templated = S3ObjectsSensor(task_id="t", bucket="{{ var.value.bucket }}", prefixes="in/{{ ds }}/")
    assert templated.bucket == "{{ var.value.bucket }}"
    sensor = S3ObjectsSensor(
        task_id="t", bucket="data-lake", prefixes="in/", glob="*.csv", aws_conn_id="lake", poke_interval=15
    )
    trigger = sensor.make_trigger("dag", "t", cursor={"v": 1}, version=2)
    assert isinstance(trigger, S3ObjectsTrigger)
    _, kwargs = trigger.serialize()
    assert kwargs["mode"] == "sensor" and kwargs["cursor_version"] == 2 and kwargs["poll_interval"] == 15.0
    assert kwargs["aws_conn_id"] == "lake" and kwargs["glob"] == ["*.csv"]


def test_s3_asset_wires_a_watcher_trigger() -> None:
    from airflow_trigger_kit.assets.s3 import s3_asset

    asset = s3_asset("landing", bucket="data-lake", prefixes=["in/a/", "in/b/"], glob="*.parquet", poll_interval=10)
    assert asset.name == "landing"
    (watcher,) = asset.watchers
    trigger = watcher.trigger
    assert isinstance(trigger, S3ObjectsTrigger)
    assert (trigger.namespace, trigger.name, trigger.settings.mode) == ("assets", "landing", "watcher")
    assert trigger.serialize()[1]["prefixes"] == ["in/a/", "in/b/"]
    with pytest.raises(ValueError, match="give glob or regex, not both"):
        s3_asset("x", bucket="data-lake", glob="*.csv", regex="csv$")


async def test_an_endpoint_that_is_not_a_url_fails_permanently_at_client_creation() -> None:
    from airflow_trigger_kit.sources.s3 import S3Source, S3WatchConfig

    async def resolve() -> AwsClientConfig:
        return AwsClientConfig(conn_id="odd", client_kwargs={"endpoint_url": "not a url", "region_name": "us-east-1"})

    src = S3Source(S3WatchConfig.create(bucket="data-lake", prefixes="in/"), resolve, "odd")
    try:
        with pytest.raises(PermanentSourceError, match=r"cannot create an S3 client for aws_conn_id='odd'.*'in/'"):
            await src.poll(None, 10)
    finally:
        await src.aclose()


def test_creating_clients_never_changes_the_default_retry_budget() -> None:
    """botocore edits a Config's retries dict in place; the package default must not drift."""
    from airflow_trigger_kit.aws_connection import DEFAULT_CONFIG, _aio_config

    async def make_clients() -> None:
        from aiobotocore.session import get_session

        for _ in range(3):
            async with get_session().create_client(
                "s3",
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=_aio_config(DEFAULT_CONFIG),
            ):
                pass

    import asyncio

    asyncio.run(make_clients())
    assert DEFAULT_CONFIG["retries"] == {"mode": "standard", "max_attempts": 3}
    assert _aio_config(DEFAULT_CONFIG).retries == {"mode": "standard", "max_attempts": 3}


def test_clients_share_one_aiobotocore_session_per_event_loop_and_profile() -> None:
    """A new session reloads botocore's service model (~0.1 CPU s per client); 1,000 waits must not."""
    import asyncio

    from airflow_trigger_kit.aws_connection import shared_session

    async def sessions() -> tuple[Any, Any, Any]:
        return shared_session(None), shared_session(None), shared_session("analytics")

    first, again, profiled = asyncio.run(sessions())
    assert first is again and profiled is not first
    assert profiled.get_config_variable("profile") == "analytics"
    other_loop, _, _ = asyncio.run(sessions())
    assert other_loop is not first  # credential refresh locks belong to one loop
