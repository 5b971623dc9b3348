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


def test_watches_plugin_is_registered_through_provider_info_and_entry_point() -> None:
    """Provider info for ``lazy_discover_providers = False``; the entry point for the default."""
    plugin_classes = {p["plugin-class"] for p in get_provider_info()["plugins"]}
    assert plugin_classes == {"airflow_trigger_kit.plugins.watches:TriggerKitWatchesPlugin".replace(":", ".")}
    eps = {ep.name: ep for ep in entry_points(group="airflow.plugins")}
    plugin = eps["trigger_kit_watches"].load()
    assert plugin.name == "trigger_kit_watches"
    assert [v["href"] for v in plugin.external_views] == ["/trigger-kit/watches"]
    assert [a["url_prefix"] for a in plugin.fastapi_apps] == ["/trigger-kit"]
