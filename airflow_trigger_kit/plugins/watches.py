"""The Watches page: every watch's cursor, deliveries and last error in Airflow's UI, and rewind.

Design. An Airflow 3 plugin with two parts: a FastAPI app mounted by the api-server under
:data:`URL_PREFIX` (a small HTML page and a JSON API), and an *external view* that puts the page in
Airflow's navigation (Browse → Trigger Kit watches), where Airflow shows it in an iframe. The
provider registers it both ways Airflow loads provider plugins: the ``plugins`` entry of its provider
info and the ``airflow.plugins`` entry point (Airflow 3.3 reads the former only with ``[core]
lazy_discover_providers = False``).

Data: the page reads the very ProcessState the watches and ``trigger-kit watches`` use
(:func:`airflow_trigger_kit.status.alist_watches`), with the async API on the api-server's loop.

Security: every endpoint authenticates with Airflow's own ``get_user`` (the UI's session cookie or a
bearer token) and authorises through the configured auth manager:

* reading needs read access to assets (``is_authorized_asset(method="GET")``);
* rewinding a watcher (namespace ``assets``) needs edit access to assets
  (``is_authorized_asset(method="PUT")``); rewinding a sensor's watch needs edit access to its DAG
  (``is_authorized_dag(method="PUT")``). With the simple auth manager: viewers read, ops and admins
  rewind watchers, users and above rewind sensors.

A rewind must carry ``{"confirm": "<the watch's name>"}`` as a JSON body: the page asks the user to
type it, and the JSON content type makes a cross-site form post impossible.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Annotated, Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from airflow_trigger_kit.payload import CURSOR_KEY
from airflow_trigger_kit.state import InvalidStateInput, ProcessState, StateStoreUnavailable

log = logging.getLogger(__name__)

URL_PREFIX = "/trigger-kit"
PAGE_PATH = "/watches"
URL_ROUTE = "trigger-kit-watches"
PLUGIN_NAME = "trigger_kit_watches"
ASSETS_NAMESPACE = "assets"


async def current_user(request: Request) -> Any:
    """The signed-in user, by Airflow's own ``get_user`` (session cookie or bearer token)."""
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    credentials = await bearer_scheme(request)
    return await get_user(request, None, credentials)


def _auth_manager() -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


def can_read(user: Any) -> bool:
    return bool(_auth_manager().is_authorized_asset(method="GET", user=user))


def can_rewind(user: Any, namespace: str, status: dict[str, Any]) -> bool:
    """Whether ``user`` may rewind this watch (see the module docstring)."""
    manager = _auth_manager()
    if namespace == ASSETS_NAMESPACE or status.get("kind") == "watcher":
        return bool(manager.is_authorized_asset(method="PUT", user=user))
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    dag_id = status.get("dag_id") or namespace
    return bool(manager.is_authorized_dag(method="PUT", details=DagDetails(id=dag_id), user=user))


def _require_read(user: Any) -> None:
    if not can_read(user):
        raise HTTPException(status_code=403, detail="reading watches needs read access to assets")


async def _backend() -> Any:
    from airflow_trigger_kit.state.factory import configured_backend

    return configured_backend()


User = Annotated[Any, Depends(current_user)]

app = FastAPI(title="airflow-trigger-kit watches", docs_url=None, redoc_url=None, openapi_url=None)


@app.exception_handler(StateStoreUnavailable)
async def _store_unavailable(request: Request, exc: StateStoreUnavailable) -> JSONResponse:
    return JSONResponse(status_code=503, content={"detail": f"the ProcessState store is unavailable: {exc}"})


@app.exception_handler(InvalidStateInput)
async def _bad_input(request: Request, exc: InvalidStateInput) -> JSONResponse:
    return JSONResponse(status_code=400, content={"detail": str(exc)})


@app.get(PAGE_PATH, response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request) -> Any:
    """The page itself; without a session, a redirect to Airflow's login."""
    try:
        user = await current_user(request)
    except HTTPException:
        login = _auth_manager().get_url_login(next_url=str(request.url))
        return RedirectResponse(login, status_code=303)
    _require_read(user)
    html = resources.files(__package__).joinpath("watches.html").read_text(encoding="utf-8")
    return HTMLResponse(html)


@app.get("/api/watches")
async def list_watches(user: User) -> dict[str, Any]:
    """Every watch, as ``trigger-kit watches --json`` shows it, plus whether this user may rewind it."""
    from airflow_trigger_kit.status import alist_watches

    _require_read(user)
    watches = await alist_watches(await _backend())
    rows = [{**w.to_json(), "can_rewind": can_rewind(user, w.namespace, w.status)} for w in watches]
    return {"watches": rows, "user": user.get_name()}


@app.get("/api/watches/{namespace}/{name}")
async def watch_detail(namespace: str, name: str, user: User) -> dict[str, Any]:
    """One watch: its row, the cursor (JSON) and the status record with its commit history."""
    from airflow_trigger_kit.status import alist_watches

    _require_read(user)
    for watch in await alist_watches(await _backend(), namespace):
        if watch.name == name:
            return {
                **watch.to_json(),
                "cursor": watch.cursor.value if watch.cursor else None,
                "status": watch.status,
                "history": watch.status.get("history") or [],
                "can_rewind": can_rewind(user, namespace, watch.status),
            }
    raise HTTPException(status_code=404, detail=f"no watch namespace={namespace!r} name={name!r}")


@app.post("/api/watches/{namespace}/{name}/rewind")
async def rewind(namespace: str, name: str, request: Request, user: User) -> dict[str, Any]:
    """Rewind (reset) a watch, as ``trigger-kit state reset``; needs edit rights and a typed confirmation."""
    from airflow_trigger_kit.status import STATUS_KEY, arewind

    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPException(status_code=415, detail='send {"confirm": "<watch name>"} as application/json')
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(status_code=400, detail="the body is not valid JSON") from None
    state = ProcessState(namespace, name, backend=await _backend())
    status_entry = await state.aget(STATUS_KEY)
    status = status_entry.value if status_entry is not None and isinstance(status_entry.value, dict) else {}
    if not can_rewind(user, namespace, status):
        raise HTTPException(status_code=403, detail=f"{user.get_name()} may not rewind {namespace}/{name}")
    if not isinstance(body, dict) or body.get("confirm") != name:
        raise HTTPException(status_code=400, detail=f'confirm by sending {{"confirm": "{name}"}}')
    if status_entry is None and await state.aget(CURSOR_KEY) is None:
        raise HTTPException(status_code=404, detail=f"no watch namespace={namespace!r} name={name!r}")
    deleted = await arewind(state, by=f"{user.get_name()} (Watches page)")
    log.warning("watch %s/%s rewound by %s: %d key(s) deleted", namespace, name, user.get_name(), deleted)
    return {"rewound": f"{namespace}/{name}", "deleted": deleted}


class TriggerKitWatchesPlugin(AirflowPlugin):  # type: ignore[misc]
    """Registers the Watches page (FastAPI app + a navigation entry) with Airflow 3."""

    name = PLUGIN_NAME
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Trigger Kit watches"}]
    external_views = [
        {
            "name": "Trigger Kit watches",
            "href": f"{URL_PREFIX}{PAGE_PATH}",
            "destination": "nav",
            "category": "browse",
            "url_route": URL_ROUTE,
        }
    ]
