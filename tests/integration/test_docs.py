"""The documentation cannot drift: examples run, parameter tables match signatures, the API is documented.

See docs/documentation.md. The site itself is built strictly by ``make docs`` (part of ``make test``).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import itertools
import pkgutil
import re
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest

import airflow_trigger_kit
from devtools.docs_hooks import error_sites, python_blocks, raised_classes

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$')


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def public_modules() -> list[Any]:
    modules = [airflow_trigger_kit]
    for info in pkgutil.walk_packages(airflow_trigger_kit.__path__, "airflow_trigger_kit."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        modules.append(importlib.import_module(info.name))
    return modules


def docstring_blocks() -> list[tuple[str, str]]:
    """``(where, source)`` of every ``python`` block in a docstring of the package (the API reference)."""
    found: list[tuple[str, str]] = []
    for module in public_modules():
        objects: list[Any] = [module]
        for name, value in vars(module).items():
            if getattr(value, "__module__", None) == module.__name__ and not name.startswith("_"):
                objects.append(value)
                if inspect.isclass(value):
                    objects.extend(v for k, v in vars(value).items() if not k.startswith("_") and callable(v))
        for obj in objects:
            doc = inspect.getdoc(obj) or ""
            for line, source in python_blocks(doc):
                found.append((f"{module.__name__}:{getattr(obj, '__qualname__', module.__name__)}:{line}", source))
    return found


def run_blocks(blocks: list[tuple[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run blocks in order in one namespace, in ``tmp_path``, against a fresh SQLite ProcessState."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AIRFLOW__TRIGGER_KIT__STATE_SQLITE_PATH", str(tmp_path / "docs-state.db"))
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    for where, source in blocks:
        match = SNIPPET.match(source.strip())
        if match:  # an example DAG file included in the page: run it as a module
            path = ROOT / match.group(1)
            source, where = path.read_text(), str(path.relative_to(ROOT))
        try:
            code = compile(source, where, "exec")
            exec(code, namespace)
        except Exception as exc:
            pytest.fail(f"the example at {where} fails: {type(exc).__name__}: {exc}\n---\n{source}", pytrace=False)
    return len(blocks)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_python_example_on_the_page_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = [(f"{page_id(page)}:{line}", source) for line, source in python_blocks(page.read_text())]
    if not blocks:
        assert "```python" not in page.read_text(), f"{page_id(page)} has a python block the collector missed"
        return
    assert run_blocks(blocks, tmp_path, monkeypatch) == len(blocks)


def test_every_python_example_in_the_docstrings_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = docstring_blocks()
    assert len(blocks) >= 5, f"expected the docstring examples of assets, state and status, found {blocks}"
    run_blocks(blocks, tmp_path, monkeypatch)


# -- parameter tables ---------------------------------------------------------------------------------
def _signature_defaults(target: Callable[..., Any] | type) -> dict[str, Any]:
    if inspect.isclass(target) and hasattr(target, "__dataclass_fields__"):
        return {
            f.name: (inspect.Parameter.empty if f.default is MISSING else f.default)
            for f in fields(target)  # type: ignore[arg-type]
        }
    func = target.__init__ if inspect.isclass(target) else target  # type: ignore[misc]
    return {
        name: p.default
        for name, p in inspect.signature(func).parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name != "self"
    }


def _watch_signatures() -> dict[str, list[Callable[..., Any] | type]]:
    from airflow_trigger_kit.assets import directory_asset, postgres_asset, s3_asset
    from airflow_trigger_kit.sensors import MultiDirectorySensor, PostgresRowsSensor, S3ObjectsSensor
    from airflow_trigger_kit.settings import WatchSettings
    from airflow_trigger_kit.sources.directory import DirectoryWatchConfig
    from airflow_trigger_kit.triggers import MultiDirectoryTrigger, PostgresRowsTrigger, S3ObjectsTrigger

    return {
        "directory.md": [
            MultiDirectoryTrigger,
            MultiDirectorySensor,
            directory_asset,
            DirectoryWatchConfig.create,
            WatchSettings,
        ],
        "s3.md": [S3ObjectsTrigger, S3ObjectsSensor, s3_asset, WatchSettings],
        "postgres.md": [PostgresRowsTrigger, PostgresRowsSensor, postgres_asset, WatchSettings],
    }


ROW = re.compile(r"^\|\s*(`[^|]+`)\s*\|\s*([^|]*?)\s*\|")
REQUIRED = {"required", "*(required)*", "—"}


def _normalise(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_normalise(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value


def _parse_default(cell: str, count: int) -> list[Any] | None:
    """The default(s) written in a table cell as Python literals, or None for prose."""
    if not cell.startswith("`"):
        return None
    text = cell.replace("`", "")
    try:
        value = ast.literal_eval(f"({text},)" if count > 1 else text)
    except (ValueError, SyntaxError):
        return None
    return list(value) if count > 1 else [value]


def _overridden(name: str, signatures: dict[Any, dict[str, Any]]) -> bool:
    """``WatchSettings`` holds fallbacks: a watch that takes ``name`` itself sets its own default."""
    from airflow_trigger_kit.settings import WatchSettings

    return any(name in defaults for target, defaults in signatures.items() if target is not WatchSettings)


@pytest.mark.parametrize("page", ["directory.md", "s3.md", "postgres.md"])
def test_parameter_tables_match_the_signatures(page: str) -> None:
    from airflow_trigger_kit.settings import WatchSettings

    signatures = {t: _signature_defaults(t) for t in _watch_signatures()[page]}
    checked = 0
    problems: list[str] = []
    for number, line in enumerate((DOCS / page).read_text().splitlines(), 1):
        match = ROW.match(line)
        if not match:
            continue
        names = re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", match.group(1))
        cell = match.group(2)
        if not names or not any(name in defaults for name in names for defaults in signatures.values()):
            continue
        required = cell.strip() in REQUIRED
        values = None if required else _parse_default(cell, len(names))
        if not required and values is None:
            continue  # a default described in words ("all columns", "the primary key")
        for index, name in enumerate(names):
            for target, defaults in signatures.items():
                if name not in defaults or (target is WatchSettings and _overridden(name, signatures)):
                    continue
                actual = defaults[name]
                label = f"{page}:{number} `{name}` vs {getattr(target, '__qualname__', target)}"
                if required:
                    if actual is not inspect.Parameter.empty and actual is not None:
                        problems.append(f"{label}: the page says required, the code defaults to {actual!r}")
                elif values is not None and _normalise(values[index]) != _normalise(actual):
                    problems.append(f"{label}: the page says {values[index]!r}, the code says {actual!r}")
                checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 10, f"only {checked} parameter defaults of {page} were checked: did the table format change?"


# -- the public API -------------------------------------------------------------------------------------
INTERNAL_MODULES = re.compile(r"^airflow_trigger_kit\.(sources\.(directory|s3|postgres)|hub)(\.|$)")
"""Internal packages, declared so in docs/reference/sources.md: their ``__all__`` lists re-exports
between the package's own modules, not public API."""


def test_every_public_name_has_a_docstring_and_is_in_the_api_reference() -> None:
    reference = "\n".join(p.read_text() for p in (DOCS / "reference").glob("*.md"))
    for internal in ("airflow_trigger_kit.sources.directory", "airflow_trigger_kit.hub"):
        assert f"`{internal}`" in reference, f"docs/reference must say that {internal} is internal"
    problems: list[str] = []
    for module in public_modules():
        if INTERNAL_MODULES.match(module.__name__):
            continue
        for name in getattr(module, "__all__", []):
            if name == "__version__":
                continue
            value = getattr(module, name)
            documented_as = f"{module.__name__}.{name}"
            is_code = callable(value) or inspect.isclass(value)
            if not (inspect.getdoc(value) if is_code else _attribute_doc(module, name)):
                problems.append(f"{documented_as} has no docstring")
            owner = getattr(value, "__module__", module.__name__)
            listed = (
                f"::: {documented_as}" in reference or f"- {name}" in reference or f"::: {owner}.{name}" in reference
            )
            if not listed:
                problems.append(f"{documented_as} is public (in __all__) but not in docs/reference/")
    assert not problems, "\n".join(problems)


def _attribute_doc(module: Any, name: str) -> str | None:
    """The docstring written under a module-level constant (what mkdocstrings renders)."""
    tree = ast.parse(inspect.getsource(module))
    body = tree.body
    for node, following in itertools.pairwise(body):
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        named = any(isinstance(t, ast.Name) and t.id == name for t in targets)
        if named and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            return str(following.value.value)
    source_module = importlib.import_module(getattr(getattr(module, name), "__module__", module.__name__))
    if source_module is not module and inspect.ismodule(source_module):
        return _attribute_doc(source_module, name)
    return None


# -- the error catalogue -----------------------------------------------------------------------------
def test_every_raised_exception_class_is_explained_on_the_errors_page() -> None:
    sites = error_sites()
    assert len(sites) >= 100, f"only {len(sites)} raise sites found: is the extractor broken?"
    page = (DOCS / "errors.md").read_text()
    missing = sorted(c for c in raised_classes(sites) if f"{{#{c.lower()}}}" not in page)
    assert not missing, f"docs/errors.md explains no {missing}: add a section for each"
    empty = [f"{s.module}:{s.line}" for s in sites if not s.template.strip()]
    assert not empty, f"errors raised without a message: {empty}"
