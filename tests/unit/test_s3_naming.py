"""Bucket naming rules and prefix warnings of the S3 watch, checked at DAG parse time."""

from __future__ import annotations

import re
import warnings

import pytest

from airflow_trigger_kit.sources.s3 import S3WatchConfig
from airflow_trigger_kit.sources.s3.naming import S3PrefixWarning
from airflow_trigger_kit.triggers.s3 import S3ObjectsTrigger

pytestmark = pytest.mark.unit

OPT_OUT = "pass legacy_bucket_name=True"


@pytest.mark.parametrize(
    ("bucket", "problem"),
    [
        ("ab", "it must be 3 to 63 characters long, not 2"),
        ("a" * 64, "it must be 3 to 63 characters long, not 64"),
        ("Data-Lake", "it must not contain uppercase letters"),
        ("data_lake", "it may hold only lowercase letters, digits, '.' and '-', not '_'"),
        ("data lake!", "it may hold only lowercase letters, digits, '.' and '-', not ' ', '!'"),
        ("dätä-lake", "it may hold only lowercase letters, digits, '.' and '-', not 'ä'"),
        ("-data-lake", "it must start and end with a lowercase letter or a digit"),
        ("data-lake.", "it must start and end with a lowercase letter or a digit"),
        ("data..lake", "it must not contain two adjacent periods ('..')"),
        ("192.168.5.4", "it must not be formatted as an IP address"),
        ("xn--data-lake", "the prefix 'xn--' is reserved by AWS"),
        ("sthree-data", "the prefix 'sthree-' is reserved by AWS"),
        ("amzn-s3-demo-bucket", "the prefix 'amzn-s3-demo-' is reserved by AWS"),
        ("data-lake-s3alias", "the suffix '-s3alias' is reserved by AWS for access points and other bucket kinds"),
        ("data-lake--ol-s3", "the suffix '--ol-s3' is reserved by AWS for access points and other bucket kinds"),
        ("data-lake.mrap", "the suffix '.mrap' is reserved by AWS for access points and other bucket kinds"),
        ("data-lake--table-s3", "the suffix '--table-s3' is reserved by AWS for access points and other bucket kinds"),
        (
            "data.lake--x-s3",
            "a name ending in '--x-s3' must be a directory bucket name of the form 'base-name--zone-id--x-s3'",
        ),
    ],
)
def test_bucket_outside_the_naming_rules_is_rejected_naming_bucket_value_and_rule(bucket: str, problem: str) -> None:
    expected = f"bucket {bucket!r} is not a valid S3 bucket name: {problem}; {OPT_OUT}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        S3WatchConfig.create(bucket=bucket)
    with pytest.raises(ValueError, match=re.escape(expected)):
        S3ObjectsTrigger(bucket=bucket, namespace="ns", name="w")


@pytest.mark.parametrize(
    "bucket", ["abc", "data-lake", "my.data.lake", "a" * 63, "1data", "logs-2026", "data-lake--usw2-az1--x-s3"]
)
def test_valid_bucket_names_are_accepted(bucket: str) -> None:
    assert S3WatchConfig.create(bucket=bucket).bucket == bucket


def test_legacy_bucket_names_need_the_opt_out_which_is_threaded_through_trigger_sensor_and_asset() -> None:
    from airflow_trigger_kit.assets.s3 import s3_asset
    from airflow_trigger_kit.sensors.s3 import S3ObjectsSensor

    legacy = "Legacy_Bucket.2017"
    with pytest.raises(ValueError, match=re.escape(f"bucket {legacy!r} is not a valid S3 bucket name")):
        S3ObjectsSensor(task_id="t", bucket=legacy)
    with pytest.raises(ValueError, match=re.escape(f"bucket {legacy!r} is not a valid S3 bucket name")):
        s3_asset("legacy", bucket=legacy)

    trigger = S3ObjectsTrigger(bucket=legacy, namespace="ns", name="w", legacy_bucket_name=True)
    _, kwargs = trigger.serialize()
    assert kwargs["legacy_bucket_name"] is True
    assert S3ObjectsTrigger(**kwargs).config == trigger.config  # the triggerer re-creates it from kwargs
    sensor = S3ObjectsSensor(task_id="t", bucket=legacy, legacy_bucket_name=True)
    assert sensor.make_trigger("dag", "t").serialize()[1]["legacy_bucket_name"] is True
    (watcher,) = s3_asset("legacy", bucket=legacy, legacy_bucket_name=True).watchers
    assert watcher.trigger.serialize()[1]["legacy_bucket_name"] is True
    # Ordinary watches keep their kwargs (and so their trigger hash) unchanged.
    assert "legacy_bucket_name" not in S3ObjectsTrigger(bucket="data-lake", namespace="ns", name="w").serialize()[1]


def test_legacy_opt_out_still_rejects_what_no_s3_bucket_ever_was() -> None:
    with pytest.raises(ValueError, match=re.escape("even with legacy_bucket_name=True, got 'a'")):
        S3WatchConfig.create(bucket="a", legacy_bucket_name=True)
    with pytest.raises(ValueError, match=re.escape("legacy_bucket_name must be True or False, got 'yes'")):
        S3WatchConfig.create(bucket="data-lake", legacy_bucket_name="yes")  # type: ignore[arg-type]


def test_lexicographic_order_is_refused_for_a_directory_bucket() -> None:
    with pytest.raises(
        ValueError, match=r"key_order='lexicographic' cannot watch the directory bucket 'lake--use1-az4--x-s3'"
    ):
        S3WatchConfig.create(bucket="lake--use1-az4--x-s3", key_order="lexicographic")


@pytest.mark.parametrize(
    ("prefix", "hint"),
    [
        ("landing/../raw/", "'..' is not resolved: S3 keys are literal strings"),
        ("landing//2026/", "'//' matches only keys with an empty path segment (did you mean 'landing/2026/'?)"),
        ("/landing/", "S3 keys rarely start with '/' (did you mean 'landing/'?)"),
    ],
)
def test_suspicious_prefixes_warn_at_parse_time_naming_parameter_and_value(prefix: str, hint: str) -> None:
    from airflow_trigger_kit.sensors.s3 import S3ObjectsSensor

    with pytest.warns(S3PrefixWarning) as caught:
        config = S3WatchConfig.create(bucket="data-lake", prefixes=["ok/", prefix])
    assert config.prefixes == ("ok/", prefix)  # legal keys: a warning, not an error
    (warning,) = caught
    message = str(warning.message)
    assert message.startswith(f"prefixes: {prefix!r} is a legal S3 prefix but probably not the intended one: ")
    assert hint in message
    with pytest.warns(S3PrefixWarning, match=re.escape(hint)):
        S3ObjectsSensor(task_id="t", bucket="data-lake", prefixes=prefix)


def test_ordinary_prefixes_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        S3WatchConfig.create(bucket="data-lake", prefixes=["landing/", "a.b/c-d/", "x"])
