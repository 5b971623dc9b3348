"""The installed distribution registers as an Airflow provider."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_airflow_providers_list_shows_the_provider(tmp_path: Path) -> None:
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path / "home"))
    airflow = str(Path(sys.executable).with_name("airflow"))
    result = subprocess.run(
        [airflow, "providers", "list", "-o", "json"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    providers = {p["package_name"]: p for p in json.loads(result.stdout)}
    assert "airflow-trigger-kit" in providers, sorted(providers)

    config = subprocess.run(
        [airflow, "config", "get-value", "trigger_kit", "state_max_value_bytes"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert config.returncode == 0, config.stderr[-2000:]
    assert config.stdout.strip() == "65536"
