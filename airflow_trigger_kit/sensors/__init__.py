"""Deferrable sensors over the watches; each returns the detected items (XCom)."""

from airflow_trigger_kit.sensors.base import IncrementalSensor
from airflow_trigger_kit.sensors.directory import MultiDirectorySensor
from airflow_trigger_kit.sensors.postgres import PostgresRowsSensor
from airflow_trigger_kit.sensors.s3 import S3ObjectsSensor

__all__ = ["IncrementalSensor", "MultiDirectorySensor", "PostgresRowsSensor", "S3ObjectsSensor"]
