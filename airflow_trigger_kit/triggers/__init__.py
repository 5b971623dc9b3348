"""Triggers: thin Airflow adapters over the sources in :mod:`airflow_trigger_kit.sources`."""

from airflow_trigger_kit.triggers.base import IncrementalTrigger
from airflow_trigger_kit.triggers.directory import MultiDirectoryTrigger

__all__ = ["IncrementalTrigger", "MultiDirectoryTrigger"]
