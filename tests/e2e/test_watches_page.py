"""The Watches page in a real browser against the live api-server: list, detail, rewind, and a read-only user.

Runs after the scenarios (file order) on the same stack, so the example DAGs' watchers have
delivered and committed. The admin and the viewer sign in with tokens from ``POST /auth/token``
set as Airflow's session cookie; the page is opened inside Airflow's own UI (``/plugin/<route>``,
an iframe), as a user finds it in the navigation.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from devtools.deliveries import ASSET_STATE_NAMESPACE, wait_delivered
from devtools.services import wait_for
from devtools.state_reader import StateRow
from tests.e2e.browser import chromium
from tests.e2e.conftest import E2E

pytestmark = pytest.mark.e2e

PAGE_ROUTE = "/plugin/trigger-kit-watches"
SCREENSHOT = Path(os.environ.get("TRIGGER_KIT_SCREENSHOT", "/tmp/trigger-kit-watches-page.png"))
TIMEOUT_MS = 30_000


def read_state(e2e: E2E, name: str, key: str = "cursor") -> StateRow | None:
    """A ProcessState row, read on another thread: Playwright's sync API runs an event loop in this one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(e2e.state.get, ASSET_STATE_NAMESPACE, name, key).result()


def signed_in_page(browser: Any, e2e: E2E, username: str) -> Any:
    context = browser.new_context(viewport={"width": 1500, "height": 900})
    context.add_cookies([{"name": "_token", "value": e2e.stack.api.token(username), "url": e2e.stack.base_url}])
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page


def watches_frame(page: Any, e2e: E2E) -> Any:
    """Open the page from Airflow's navigation route and return the plugin's iframe."""
    page.goto(f"{e2e.stack.base_url}{PAGE_ROUTE}")
    frame = page.frame_locator("iframe")
    frame.locator("[data-testid=watch-row]").first.wait_for()
    return frame


def row(frame: Any, watch: str) -> Any:
    return frame.locator(f'[data-testid=watch-row][data-watch="{watch}"]')


def test_watches_page_lists_rewinds_and_refuses_a_viewer(e2e: E2E) -> None:
    feeder = e2e.feeder("directory")
    fed = {feeder.add_asset_item("watches-page")}
    wait_delivered(e2e.stack.api, feeder, e2e.asset_ids["directory"], fed, timeout=120, check=e2e.stack.check_alive)
    watch = f"{ASSET_STATE_NAMESPACE}/{feeder.asset_name}"

    def status_counts_delivery() -> bool:
        status = read_state(e2e, feeder.asset_name, "status")
        return status is not None and status.value.get("items_delivered", 0) >= 1

    wait_for(status_counts_delivery, 60, interval=0.5, what=f"the status record of {watch} to count a delivery")

    with chromium() as browser:
        # -- a read-only user: sees every example watcher, may not rewind -----------------------------
        viewer = signed_in_page(browser, e2e, "viewer")
        frame = watches_frame(viewer, e2e)
        for source in e2e.feeders.values():
            assert row(frame, f"{ASSET_STATE_NAMESPACE}/{source.asset_name}").count() == 1, source.asset_name
        frame.locator(f'[data-watch="{watch}"] button[data-action=detail]').click()
        assert frame.locator("[data-testid=rewind]").is_disabled()
        cursor_before = read_state(e2e, feeder.asset_name)
        assert cursor_before is not None
        # Even a hand-made request is refused by the server, with the viewer's own session.
        refused = viewer.frames[-1].evaluate(
            """async ([url, name]) => {
                 const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                             body: JSON.stringify({confirm: name})});
                 return [r.status, (await r.json()).detail];
               }""",
            [f"/trigger-kit/api/watches/{watch}/rewind", feeder.asset_name],
        )
        assert refused[0] == 403 and "may not rewind" in refused[1], refused
        after_refusal = read_state(e2e, feeder.asset_name)
        assert after_refusal is not None and after_refusal.version >= cursor_before.version
        viewer.context.close()

        # -- an admin: the list with deliveries, the cursor, and a confirmed rewind ---------------------
        admin = signed_in_page(browser, e2e, "admin")
        frame = watches_frame(admin, e2e)
        delivered = int(row(frame, watch).locator("[data-testid=items-delivered]").inner_text())
        assert delivered >= 1
        assert row(frame, watch).locator("[data-testid=cursor-version]").inner_text().startswith("v")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        admin.screenshot(path=str(SCREENSHOT), full_page=True)
        e2e.report(f"WATCHES PAGE screenshot: {SCREENSHOT}")

        frame.locator(f'[data-watch="{watch}"] button[data-action=detail]').click()
        assert '"dirs"' in frame.locator("[data-testid=cursor-json]").inner_text()
        frame.locator("[data-testid=rewind]").click()
        confirm = frame.locator("[data-testid=confirm-rewind]")
        assert confirm.is_disabled(), "the rewind must wait for the typed confirmation"
        frame.locator("[data-testid=confirm-input]").fill(feeder.asset_name)
        confirm.click()
        frame.get_by_text(f"Rewound {watch}").wait_for()
        assert read_state(e2e, feeder.asset_name) is None, "the cursor is still there"
        status = read_state(e2e, feeder.asset_name, "status")
        assert status is not None and status.value["rewound_by"].startswith("admin")
        admin.context.close()

    # The running watcher applies the rewind at its next commit: its compare-and-set fails, it restarts
    # and takes a new baseline (start_from="now"), stored as version 1.
    started = time.monotonic()
    fed_after = {feeder.add_asset_item("after-rewind")}
    wait_delivered(
        e2e.stack.api, feeder, e2e.asset_ids["directory"], fed_after, timeout=120, check=e2e.stack.check_alive
    )

    def rebaselined() -> bool:
        cursor = read_state(e2e, feeder.asset_name)
        return cursor is not None and cursor.version >= 1

    wait_for(rebaselined, 120, interval=0.5, what=f"{watch} to store a new cursor after the rewind")
    e2e.report(f"WATCHES PAGE rewind applied by the running watcher in {time.monotonic() - started:.0f}s")
