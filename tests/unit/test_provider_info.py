from __future__ import annotations

import json
from importlib.metadata import entry_points
from importlib.resources import files
from pathlib import Path

import pytest

from airflow_trigger_kit.config import DEFAULTS
from airflow_trigger_kit.provider_info import get_provider_info

pytestmark = pytest.mark.unit


def test_provider_info_is_valid_against_airflows_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")  # a hard dependency of apache-airflow
    schema = json.loads(files("airflow").joinpath("provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    assert info["package-name"] == "airflow-trigger-kit"
    integrations = {i["integration-name"] for i in info["integrations"]}
    for section in ("triggers", "sensors"):
        for entry in info.get(section, []):
            assert entry["integration-name"] in integrations


def test_every_config_option_is_documented() -> None:
    options = get_provider_info()["config"]["trigger_kit"]["options"]
    assert set(options) == set(DEFAULTS)
    docs = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    for name in DEFAULTS:
        assert f"`{name}`" in docs, f"docs/configuration.md does not document {name}"


def test_entry_point_is_registered() -> None:
    eps = entry_points(group="apache_airflow_provider")
    assert any(ep.value == "airflow_trigger_kit.provider_info:get_provider_info" for ep in eps)
