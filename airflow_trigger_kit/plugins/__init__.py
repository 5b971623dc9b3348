"""Airflow plugins this provider registers: the Watches page (:mod:`airflow_trigger_kit.plugins.watches`)."""
