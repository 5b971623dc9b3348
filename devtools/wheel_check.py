"""``make wheel-check``: build the sdist and the wheel, install the wheel into a fresh virtualenv, use it.

What a user gets from ``pip install airflow-trigger-kit`` is checked here, not the editable
checkout: the wheel holds ``airflow_trigger_kit`` only (with its Watches page template), and in a
new virtualenv with nothing but the wheel and its dependencies, ``airflow providers list`` shows the
provider, ``airflow plugins`` the Watches page, the ``trigger-kit`` console script runs and
``import airflow_trigger_kit`` works from outside the checkout. uv installs the dependencies from
its cache, so this takes seconds once the project's own virtualenv exists.

Exit status 0 when every check passes; each failure is printed with what was expected.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "build" / "wheel-check"
PACKAGE = "airflow_trigger_kit"


def run(*argv: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=600, check=False
    )
    if result.returncode != 0:
        raise SystemExit(
            f"wheel-check: `{' '.join(map(str, argv))}` failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


def check(condition: bool, message: str, failures: list[str]) -> None:
    print(("ok    " if condition else "FAIL  ") + message)
    if not condition:
        failures.append(message)


def main() -> int:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        raise SystemExit("wheel-check: uv not found; run `make install`")
    shutil.rmtree(OUT, ignore_errors=True)
    dist = OUT / "dist"
    run(uv, "build", "--sdist", "--wheel", "--out-dir", dist, REPO)
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    failures: list[str] = []
    check(
        len(wheels) == 1 and len(sdists) == 1,
        f"one wheel and one sdist built: {[p.name for p in dist.iterdir()]}",
        failures,
    )
    wheel, sdist = wheels[0], sdists[0]

    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    unexpected = sorted(t for t in top if t != PACKAGE and not t.endswith(".dist-info"))
    check(not unexpected, f"the wheel holds {PACKAGE} only (found also: {unexpected or 'nothing'})", failures)
    check(f"{PACKAGE}/plugins/watches.html" in names, "the Watches page template is in the wheel", failures)
    check(f"{PACKAGE}/py.typed" in names, "py.typed is in the wheel", failures)

    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    check(
        any(m.endswith("/README.md") for m in members) and any("/docs/" in m for m in members),
        "the sdist carries README.md and docs/",
        failures,
    )
    check(
        not any("/.venv/" in m or "/devtools/" in m for m in members),
        "the sdist leaves .venv and devtools out",
        failures,
    )

    venv = OUT / "venv"
    run(uv, "venv", "--quiet", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    run(uv, "pip", "install", "--quiet", "--python", python, wheel)

    with tempfile.TemporaryDirectory(prefix="wheel-check-home-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHONPATH", "VIRTUAL_ENV"))}
        env.update({"AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
        outside = Path(home)  # not the checkout: only the installed wheel can be imported
        imported = run(python, "-c", f"import {PACKAGE}, sys; print({PACKAGE}.__file__)", env=env, cwd=outside)
        check(
            str(venv) in imported and str(REPO / PACKAGE) not in imported,
            f"import {PACKAGE} loads the installed wheel ({imported.strip()})",
            failures,
        )
        devtools = subprocess.run(
            [str(python), "-c", "import devtools"], env=env, cwd=outside, capture_output=True, check=False
        )
        check(devtools.returncode != 0, "no top-level devtools package is installed", failures)
        providers = json.loads(run(venv / "bin" / "airflow", "providers", "list", "-o", "json", env=env, cwd=outside))
        check(
            any(p.get("package_name") == "airflow-trigger-kit" for p in providers),
            "`airflow providers list` shows airflow-trigger-kit",
            failures,
        )
        plugins = run(venv / "bin" / "airflow", "plugins", "-o", "json", env=env, cwd=outside)
        check('"trigger_kit_watches"' in plugins, "`airflow plugins` shows the Watches page", failures)
        help_text = run(venv / "bin" / "trigger-kit", "--help", env=env, cwd=outside)
        check("watches" in help_text and "state" in help_text, "the trigger-kit console script runs", failures)
        listed = run(venv / "bin" / "trigger-kit", "watches", "--json", env=env, cwd=outside)
        check(json.loads(listed) == [], "`trigger-kit watches --json` works on an empty store", failures)

    print(f"wheel-check: {len(failures)} failed" if failures else f"wheel-check: all passed ({wheel.name})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
