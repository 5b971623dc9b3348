"""Deferrable sensors over the watches; each returns the detected items (XCom)."""

from airflow_trigger_kit.sensors.base import IncrementalSensor
from airflow_trigger_kit.sensors.directory import MultiDirectorySensor

__all__ = ["IncrementalSensor", "MultiDirectorySensor"]
