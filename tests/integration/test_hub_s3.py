"""S3 waits through the hub: one listing chain per prefix and tick, whatever the cursors of the waits.

Real triggers (sensor mode) in one event loop against moto's S3 server over HTTP; the counts are the
hub's own (listing chains made, polls made) and the ListObjectsV2 requests the shared client sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from airflow_trigger_kit.hub import get_hub
from airflow_trigger_kit.sources.s3 import S3Source
from tests.s3_support import ListCounter, create_bucket, s3_client, trigger, unique_bucket, use_connection
from tests.triggerer_harness import first_payload, wait_until

pytestmark = pytest.mark.integration

PREFIXES = ["in/", "other/"]


@pytest.fixture(autouse=True)
def s3_connection(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_connection(monkeypatch, s3_endpoint)


async def test_waits_of_different_polls_share_one_listing_chain_per_prefix_and_tick(s3_endpoint: str) -> None:
    """90 waits in three kinds — two globs (two shared sources) and two batch sizes (two polls at one
    cursor) — make three polls per tick, and those polls make one listing chain per prefix."""
    bucket = unique_bucket("hub")
    await create_bucket(s3_endpoint, bucket, [f"in/old-{n}.csv" for n in range(30)] + ["other/old.csv"])
    kinds: list[dict[str, Any]] = [
        {"glob": "*.csv", "max_items": 500},
        {"glob": "*.csv", "max_items": 100},
        {"glob": "*old*"},
    ]
    cursors = []
    for kind in kinds:  # each kind of sensor's committed cursor
        src = trigger(bucket, prefixes=PREFIXES, **kind).build_source()
        try:
            cursors.append(await src.baseline())
        finally:
            await src.aclose()
    waits = [
        asyncio.ensure_future(
            first_payload(
                trigger(
                    bucket,
                    prefixes=PREFIXES,
                    poll_interval=0.3,
                    cursor=cursors[n % 3],
                    cursor_version=1,
                    **kinds[n % 3],
                )
            )
        )
        for n in range(90)
    ]
    hub = get_hub()
    await wait_until(lambda: len(hub.channels.channels) == 2, what="one shared source per glob")
    channels = list(hub.channels.channels.values())
    await wait_until(lambda: all(c.polls > 0 for c in channels), what="first polls")
    counters = []
    for channel in channels:
        assert isinstance(channel.source, S3Source)
        counters.append(await ListCounter.attach(channel.source))
    ticks, fetches, polls = hub.channels.ticker.ticks, hub.s3_listings.fetches, sum(c.polls for c in channels)
    await wait_until(lambda: hub.channels.ticker.ticks >= ticks + 5, what="five more ticks")
    await asyncio.sleep(0.2)  # let the last tick's polls finish
    ticked = hub.channels.ticker.ticks - ticks
    made = hub.s3_listings.fetches - fetches
    assert 0 < made <= len(PREFIXES) * (ticked + 1), f"{made} listing chains in {ticked} ticks"
    assert sum(c.polls for c in channels) - polls >= 3 * (ticked - 1), "each tick makes three polls"
    sent = sum(counter.take() for counter in counters)
    assert sent <= len(PREFIXES) * (ticked + 1), f"{sent} LIST requests in {ticked} ticks: one per prefix and tick"
    assert not any(w.done() for w in waits)

    async with s3_client(s3_endpoint) as client:
        await client.put_object(Bucket=bucket, Key="in/old-new.csv", Body=b"x")
    payloads = await asyncio.wait_for(asyncio.gather(*waits), 30)
    assert all([i["key"] for i in p["items"]] == ["in/old-new.csv"] for p in payloads)
    assert len({p["items"][0]["dedup_id"] for p in payloads}) == 1, "one change, one dedup id"
