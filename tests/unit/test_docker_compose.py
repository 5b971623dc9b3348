"""``docker-compose.yaml``, checked without a Docker engine (there is none where the tests run).

What can be known from the file itself and this checkout: the topology is the one the Celery
end-to-end scenario runs (CeleryExecutor, Redis, two triggerers, two workers, PostgreSQL for metadata
and state, MinIO, an init service that creates the connections); every variable it sets is one the
code reads (an Airflow option that exists, a ``[trigger_kit]`` option, a variable the example DAGs
read); every connection the init service creates is one the stack uses, and every one it uses is
created, with the right type; the Airflow image tag, the pinned ``apache-airflow`` and the supported
version agree; every file it references exists.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
ENV_DEFAULT = re.compile(r"^\$\{(\w+):-(.*)\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def airflow_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services built from the Airflow image (the ``x-airflow-common`` anchor)."""
    image = compose["x-airflow-common"]["image"]
    return {name: svc for name, svc in compose["services"].items() if svc.get("image") == image}


def value(raw: Any) -> str:
    """An environment value as the container sees it when nothing overrides ``${VAR:-default}``."""
    text = str(raw)
    match = ENV_DEFAULT.match(text)
    return match.group(2) if match else text


def airflow_env(compose: dict[str, Any]) -> dict[str, str]:
    return {k: value(v) for k, v in compose["x-airflow-common"]["environment"].items()}


def config_content(compose: dict[str, Any], name: str) -> str:
    content: str = compose["configs"][name]["content"]
    return content


def dag_env_reads() -> set[str]:
    """Variables the example DAGs read (``os.environ.get("X"...)``, ``os.environ["X"]``, ``getenv``)."""
    names: set[str] = set()
    for path in (ROOT / "dags").glob("*.py"):
        names |= set(re.findall(r"""(?:environ\.get|environ\[|getenv)\(?\s*["'](\w+)["']""", path.read_text()))
    return names


def option_descriptions() -> dict[str, Any]:
    from airflow.configuration import conf
    from airflow.providers_manager import ProvidersManager

    ProvidersManager().initialize_providers_configuration()  # the celery and trigger_kit sections
    description: dict[str, Any] = conf.configuration_description
    return description


# -- topology ------------------------------------------------------------------------------------------
def test_topology_mirrors_the_celery_end_to_end_scenario(compose: dict[str, Any]) -> None:
    services = compose["services"]
    airflow = airflow_services(compose)
    commands = {name: svc.get("command") for name, svc in airflow.items()}
    env = airflow_env(compose)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert sorted(n for n, c in commands.items() if c == "triggerer") == ["triggerer-1", "triggerer-2"]
    assert sorted(n for n, c in commands.items() if c == "celery worker") == ["celery-worker-1", "celery-worker-2"]
    for kind in ("api-server", "scheduler", "dag-processor"):
        assert kind in commands.values(), f"no {kind} service"
    assert services["redis"]["image"].startswith("redis:")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
    assert services["postgres"]["image"].startswith("postgres:")
    for option in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
        assert "@postgres:5432/" in env[option], f"{option} is not on the postgres service"
    assert services["minio"]["image"].startswith("minio/minio")
    init = services["airflow-init"]
    assert "airflow db migrate" in init["command"] and "airflow connections import" in init["command"]


def test_every_dependency_is_a_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        for dependency in svc.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency!r}"
            assert dependency != name, f"{name} depends on itself"


def test_airflow_commands_exist(compose: dict[str, Any]) -> None:
    from airflow.cli.cli_parser import get_parser
    from airflow.providers.celery.cli.definition import CELERY_COMMANDS

    parser = get_parser()
    for name, svc in airflow_services(compose).items():
        command = svc["command"]
        if name == "airflow-init":
            continue
        argv = shlex.split(command)
        if argv[0] == "celery":
            assert argv[1:] == ["worker"] and "worker" in {c.name for c in CELERY_COMMANDS}, command
            continue
        parser.parse_args(argv)  # raises SystemExit for an unknown command


# -- environment ------------------------------------------------------------------------------------------
def test_every_airflow_option_set_exists(compose: dict[str, Any]) -> None:
    described = option_descriptions()
    for name in airflow_env(compose):
        if not name.startswith("AIRFLOW__"):
            continue
        section, _, option = name.removeprefix("AIRFLOW__").lower().partition("__")
        assert section in described, f"{name}: Airflow has no [{section}] section"
        options = set(described[section]["options"])
        assert option in options, f"{name}: [{section}] has no option {option!r}"


def test_every_other_variable_is_read_by_the_example_dags(compose: dict[str, Any]) -> None:
    reads = dag_env_reads()
    others = [n for n in airflow_env(compose) if not n.startswith("AIRFLOW__")]
    assert others, "the example DAGs' variables are missing"
    for name in others:
        assert not name.startswith("AIRFLOW_CONN_"), f"{name}: connections come from airflow-init, not variables"
        assert name in reads, f"{name} is set but no example DAG reads it"


def test_the_variables_the_example_dags_read_without_a_sensible_default_are_set(compose: dict[str, Any]) -> None:
    env = airflow_env(compose)
    for name in ("TRIGGER_KIT_DEMO_ROOT", "TRIGGER_KIT_S3_CONN_ID", "TRIGGER_KIT_DEMO_PG_CONN_ID"):
        assert name in env, f"{name} is read by the example DAGs and must be set for this stack"


# -- connections ----------------------------------------------------------------------------------------------
def test_connections_created_are_exactly_those_used(compose: dict[str, Any], tmp_path: Path) -> None:
    from airflow.secrets.local_filesystem import load_connections_dict

    path = tmp_path / "connections.json"
    path.write_text(config_content(compose, "connections"))
    created = load_connections_dict(str(path))  # what `airflow connections import` parses
    env = airflow_env(compose)
    used = {
        env["AIRFLOW__TRIGGER_KIT__STATE_CONN_ID"]: "postgres",
        env["TRIGGER_KIT_DEMO_PG_CONN_ID"]: "postgres",
        env["TRIGGER_KIT_S3_CONN_ID"]: "aws",
    }
    assert {k: c.conn_type for k, c in created.items()} == used
    init_configs = {c["target"]: c["source"] for c in compose["services"]["airflow-init"]["configs"]}
    target = next(t for t in init_configs if t in compose["services"]["airflow-init"]["command"])
    assert init_configs[target] == "connections", "airflow-init imports another file than the connections config"


def test_connections_point_at_the_stacks_services(compose: dict[str, Any], tmp_path: Path) -> None:
    from airflow.secrets.local_filesystem import load_connections_dict

    from airflow_trigger_kit.connections import postgres_connect_kwargs

    path = tmp_path / "connections.json"
    path.write_text(config_content(compose, "connections"))
    created = load_connections_dict(str(path))
    databases = set(re.findall(r"CREATE DATABASE (\w+);", config_content(compose, "init-sql")))
    for conn in created.values():
        if conn.conn_type == "postgres":
            kwargs = postgres_connect_kwargs(conn)  # what the state store and the Postgres watch use
            assert kwargs["host"] == "postgres" and kwargs["database"] in databases, kwargs
    s3 = created[airflow_env(compose)["TRIGGER_KIT_S3_CONN_ID"]]
    assert s3.extra_dejson["endpoint_url"] == "http://minio:9000"
    bucket = airflow_env(compose)["TRIGGER_KIT_S3_BUCKET"]
    assert f"local/{bucket}" in compose["services"]["minio-init"]["entrypoint"], "the watched bucket is never created"


# -- versions and files -----------------------------------------------------------------------------------------
def dockerfile(compose: dict[str, Any]) -> str:
    text: str = compose["x-airflow-common"]["build"]["dockerfile_inline"]
    return text


def test_image_tag_pin_and_supported_airflow_version_agree(compose: dict[str, Any]) -> None:
    from importlib.metadata import requires, version

    text = dockerfile(compose)
    tag = re.search(r"^FROM apache/airflow:(\S+)$", text, re.M)
    pin = re.search(r'"apache-airflow==([^"]+)"', text)
    assert tag and pin, text
    assert tag.group(1) == pin.group(1), "the image tag and the pip pin of apache-airflow differ"
    declared = [Requirement(r) for r in requires("airflow-trigger-kit") or []]
    requirement = next(r for r in declared if r.name == "apache-airflow" and r.marker is None)
    assert Version(tag.group(1)) in requirement.specifier, f"{tag.group(1)} is outside {requirement}"
    tested = Version(version("apache-airflow"))
    assert Version(tag.group(1)).release[:2] == tested.release[:2], f"image {tag.group(1)}, tests run {tested}"


def referenced_host_paths(compose: dict[str, Any]) -> Iterator[str]:
    for svc in [compose["x-airflow-common"], *compose["services"].values()]:
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                yield source
        build = svc.get("build")
        if isinstance(build, dict):
            yield build["context"]
    for config in compose.get("configs", {}).values():
        if "file" in config:
            yield config["file"]
    for line in dockerfile(compose).splitlines():
        if line.startswith(("COPY ", "ADD ")):
            yield from [p for p in line.split()[1:-1] if not p.startswith("--")]


def test_every_referenced_file_exists(compose: dict[str, Any]) -> None:
    paths = list(referenced_host_paths(compose))
    assert "./dags" in paths and "airflow_trigger_kit" in paths
    for path in paths:
        assert (ROOT / path).exists(), f"docker-compose.yaml references {path}, which does not exist"


def test_the_upload_directories_are_those_the_example_dags_watch(compose: dict[str, Any]) -> None:
    from devtools.feeders import DirectoryFeeder

    command = compose["services"]["airflow-init"]["command"]
    root = airflow_env(compose)["TRIGGER_KIT_DEMO_ROOT"]
    clients = re.search(r"\{(acme[^}]*)\}", command)
    assert clients and tuple(clients.group(1).split(",")) == DirectoryFeeder.clients
    assert f"{root}/{{asset,sensor}}_uploads/" in command
    assert json.loads(config_content(compose, "passwords")) == {"admin": "admin"}
