"""MkDocs hooks for the documentation site: the error catalogue is generated from the code at build time.

``docs/errors.md`` holds the hand-written guidance (what each kind of error means and what to do)
and the marker :data:`MARKER`; :func:`on_page_markdown` replaces the marker with a table of every
``raise`` in ``airflow_trigger_kit`` — the message template as written in the code (``{...}`` are
the values filled in at run time), the exception class and where it is raised — so the catalogue
cannot drift from the code. ``tests/integration/test_docs.py`` checks that every exception class
raised has its guidance on the page.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = REPO_ROOT / "airflow_trigger_kit"
MARKER = "<!-- error-catalogue -->"

AREAS: list[tuple[str, str]] = [
    ("sources/directory", "Directory watch"),
    ("triggers/directory", "Directory watch"),
    ("sensors/directory", "Directory watch"),
    ("sources/s3", "S3 watch"),
    ("triggers/s3", "S3 watch"),
    ("sensors/s3", "S3 watch"),
    ("assets/s3", "S3 watch"),
    ("aws_connection", "S3 watch"),
    ("sources/postgres", "Postgres watch"),
    ("triggers/postgres", "Postgres watch"),
    ("sensors/postgres", "Postgres watch"),
    ("assets/postgres", "Postgres watch"),
    ("state", "ProcessState"),
    ("config", "ProcessState"),
    ("commit", "ProcessState"),
    ("plugins", "Watches page"),
    ("", "Every watch"),
]
"""Module path prefixes (relative to the package) and the catalogue section they belong to."""

INTERNAL = {"AssertionError"}
"""Classes raised only on impossible paths (an internal bug); left out of the catalogue."""


@dataclass(frozen=True)
class ErrorSite:
    module: str
    """Path relative to the repository, e.g. ``airflow_trigger_kit/sources/s3.py``."""
    line: int
    exc_class: str
    template: str
    """The message as written, ``{expression}`` for values filled in at run time."""

    @property
    def area(self) -> str:
        relative = self.module.removeprefix("airflow_trigger_kit/").removesuffix(".py")
        return next(label for prefix, label in AREAS if relative.startswith(prefix))


def _template(node: ast.expr | None) -> str:
    if node is None:
        return ""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                parts.append("{" + ast.unparse(value.value) + "}")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _template(node.left) + _template(node.right)
    return "{" + ast.unparse(node) + "}"


def _message_node(call: ast.Call) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg in ("detail", "message", "msg"):
            return keyword.value
    return call.args[0] if call.args else None


def error_sites(package: Path = PACKAGE) -> list[ErrorSite]:
    """Every ``raise SomeError(message)`` in the package, in module and line order."""
    sites: list[ErrorSite] = []
    trees = {
        path: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for path in sorted(package.rglob("*.py"))
    }
    # ``raise self._damaged(...)``: a function that builds the error; its return annotation names the class.
    factories = {
        node.name: ast.unparse(node.returns).rsplit(".", 1)[-1]
        for tree in trees.values()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None
    }
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            exc_class = ast.unparse(node.exc.func).rsplit(".", 1)[-1]
            exc_class = factories.get(exc_class, exc_class) if not exc_class[:1].isupper() else exc_class
            if exc_class in INTERNAL:
                continue
            module = path.relative_to(package.parent).as_posix()
            sites.append(ErrorSite(module, node.lineno, exc_class, _template(_message_node(node.exc))))
    return sorted(sites, key=lambda s: (s.module, s.line))


def _code(text: str) -> str:
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "&#124;")
    # Markdown still reads emphasis and code marks inside inline HTML: neutralise them.
    escaped = escaped.replace("_", "&#95;").replace("*", "&#42;").replace("`", "&#96;")
    return f"<code>{escaped}</code>"


def catalogue_markdown(sites: list[ErrorSite]) -> str:
    """The generated part of ``docs/errors.md``: one table per area."""
    out: list[str] = [f"The package raises {len(sites)} distinct errors; every one is listed here.\n"]
    areas: dict[str, list[ErrorSite]] = {}
    for site in sites:
        areas.setdefault(site.area, []).append(site)
    for area in sorted(areas, key=lambda a: [label for _, label in AREAS].index(a)):
        out.append(f"### {area}\n")
        out.append("| message (as written in the code) | raised as | where |")
        out.append("|---|---|---|")
        for site in areas[area]:
            template = site.template or "(the message of the error it wraps)"
            out.append(
                f"| {_code(template)} | [`{site.exc_class}`](#{site.exc_class.lower()}) | `{site.module}:{site.line}` |"
            )
        out.append("")
    return "\n".join(out)


def raised_classes(sites: list[ErrorSite]) -> set[str]:
    return {site.exc_class for site in sites}


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, catalogue_markdown(error_sites()))
    return markdown


def python_blocks(markdown: str) -> Iterator[tuple[int, str]]:
    """``(line, source)`` of every fenced ``python`` block (the examples the docs test runs)."""
    lines = markdown.splitlines()
    index = 0
    while index < len(lines):
        stripped = lines[index].strip()
        if stripped.startswith("```python") or stripped.startswith("```py "):
            start = index + 1
            end = start
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            indent = len(lines[index]) - len(lines[index].lstrip())
            yield start + 1, "\n".join(line[indent:] for line in lines[start:end])
            index = end
        index += 1
