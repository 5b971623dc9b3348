"""Who got what: match fed items with the asset events (and DAG runs) that delivered them.

An item counts as *delivered* when an asset event of its source's asset carries it in
``extra["payload"]["items"]`` and that event is linked to at least one DAG run
(``created_dagruns``): that is "delivered to a DAG run", read back through the REST API, exactly as
Airflow recorded it. A *duplicate* is any delivery of an item after its first; every delivery of
one item must carry the same ``dedup_id`` (the package's promise for repeats after a crash).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime

from devtools.airflow_stack import AirflowApi
from devtools.feeders import Feeder
from devtools.services import wait_for
from devtools.state_reader import StateReader

ASSET_STATE_NAMESPACE = "assets"
"""ProcessState namespace of every watcher built by ``airflow_trigger_kit.assets``."""


@dataclass(frozen=True)
class Delivery:
    identity: str
    dedup_id: str
    event_id: int
    event_time: datetime
    run_ids: tuple[str, ...]


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def deliveries(api: AirflowApi, feeder: Feeder, asset_id: int) -> list[Delivery]:
    """Every item in every asset event of ``asset_id``, oldest event first."""
    found: list[Delivery] = []
    for event in api.asset_events(asset_id):
        payload = (event.get("extra") or {}).get("payload") or {}
        runs = tuple(run["run_id"] for run in event.get("created_dagruns") or [])
        for item in payload.get("items", []):
            found.append(
                Delivery(
                    identity=feeder.identity(item),
                    dedup_id=str(item["dedup_id"]),
                    event_id=int(event["id"]),
                    event_time=parse_time(event["timestamp"]),
                    run_ids=runs,
                )
            )
    found.sort(key=lambda d: (d.event_time, d.event_id))
    return found


def wait_delivered(
    api: AirflowApi,
    feeder: Feeder,
    asset_id: int,
    expected: Collection[str],
    *,
    timeout: float,
    check: Callable[[], object] | None = None,
    diagnose: Callable[[], str] | None = None,
    require_runs: bool = True,
) -> list[Delivery]:
    """Wait until every identity in ``expected`` was delivered to a DAG run; return all deliveries.

    ``check`` (optional) is called on every round, so a dead Airflow component fails the wait at once;
    ``diagnose`` (optional) adds context to a timeout (for example the triggerers' last errors).
    ``require_runs=False`` waits only until each identity is in an asset event.
    """
    wanted = set(expected)

    def complete() -> list[Delivery] | None:
        if check is not None:
            check()
        found = deliveries(api, feeder, asset_id)
        delivered = {d.identity for d in found if d.run_ids or not require_runs}
        return found if wanted <= delivered else None

    target = "DAG runs" if require_runs else "asset events"
    try:
        return wait_for(
            complete, timeout, interval=1.0, what=f"{len(wanted)} {feeder.source} item(s) to reach {target}"
        )
    except TimeoutError as exc:
        found = deliveries(api, feeder, asset_id)
        in_events = {d.identity for d in found}
        in_runs = {d.identity for d in found if d.run_ids}
        missing = sorted(wanted - in_events)
        runless = sorted((wanted & in_events) - in_runs)
        context = diagnose() if diagnose is not None else ""
        raise TimeoutError(
            f"{exc}: {len(missing)} never in an asset event (first: {missing[:5]}), "
            f"{len(runless)} in events without a DAG run (first: {runless[:5]})"
            + (f"; last trigger errors:\n{context}" if context else "")
        ) from None


@dataclass
class DeliveryCounts:
    """The crash scenario's verdict for one source."""

    source: str
    fed: int
    delivered: int
    missing: list[str]
    duplicates: int
    inconsistent: dict[str, list[str]] = field(default_factory=dict)
    """Identities delivered with more than one dedup id (must be empty)."""

    def line(self, scenario: str) -> str:
        verdict = (
            "all duplicates share their first delivery's dedup_id"
            if not self.inconsistent
            else f"{len(self.inconsistent)} item(s) delivered with DIFFERENT dedup ids"
        )
        return (
            f"{scenario} {self.source}: fed={self.fed} delivered={self.delivered} missing={len(self.missing)} "
            f"duplicates={self.duplicates} ({verdict})"
        )


def count_deliveries(source: str, fed: Collection[str], found: list[Delivery]) -> DeliveryCounts:
    """Delivered / missing / duplicate counts of the ``fed`` identities among ``found`` deliveries."""
    wanted = set(fed)
    by_identity: dict[str, list[Delivery]] = defaultdict(list)
    for delivery in found:
        if delivery.identity in wanted and delivery.run_ids:
            by_identity[delivery.identity].append(delivery)
    duplicates = sum(len(ds) - 1 for ds in by_identity.values())
    inconsistent = {
        identity: [d.dedup_id for d in ds] for identity, ds in by_identity.items() if len({d.dedup_id for d in ds}) > 1
    }
    return DeliveryCounts(
        source=source,
        fed=len(wanted),
        delivered=len(by_identity),
        missing=sorted(wanted - set(by_identity)),
        duplicates=duplicates,
        inconsistent=inconsistent,
    )


def activate_watchers(
    api: AirflowApi, feeders: Collection[Feeder], state: StateReader, *, timeout: float = 180
) -> dict[str, int]:
    """Make every feeder's asset watcher live and baselined; return asset ids by source.

    An ``AssetWatcher``'s trigger exists only while a DAG scheduled on its asset is unpaused, and is
    registered when the dag-processor parses that DAG: so unpause, request a parse, and wait for
    the watcher to appear on the asset. With ``start_from="now"`` the watcher then stores a
    baseline (its first ProcessState row); only items that land after that row exists are new, so
    the baseline row is the fact to wait for before feeding.
    """
    for feeder in feeders:
        api.wait_dag(feeder.asset_dag_id, timeout=timeout)
        api.wait_dag(feeder.sensor_dag_id, timeout=timeout)
    for feeder in feeders:
        api.set_paused(feeder.asset_dag_id, False)
        api.reparse(feeder.asset_dag_id)
    asset_ids = {f.source: int(api.wait_watcher(f.asset_name, timeout=timeout)["id"]) for f in feeders}
    for feeder in feeders:

        def baselined(name: str = feeder.asset_name) -> bool:
            return state.get(ASSET_STATE_NAMESPACE, name) is not None

        wait_for(baselined, timeout, interval=0.5, what=f"the {feeder.source} watcher's baseline in ProcessState")
    return asset_ids
