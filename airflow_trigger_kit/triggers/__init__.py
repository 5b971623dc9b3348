"""Triggers: thin Airflow adapters over the sources in :mod:`airflow_trigger_kit.sources`."""

from airflow_trigger_kit.triggers.base import IncrementalTrigger
from airflow_trigger_kit.triggers.directory import MultiDirectoryTrigger
from airflow_trigger_kit.triggers.postgres import PostgresRowsTrigger
from airflow_trigger_kit.triggers.s3 import S3ObjectsTrigger

__all__ = ["IncrementalTrigger", "MultiDirectoryTrigger", "PostgresRowsTrigger", "S3ObjectsTrigger"]
