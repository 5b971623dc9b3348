"""DirectorySource: one watch's directories, listed through a listing cache, compared with a cursor.

In the triggerer, watches do not poll their own source: the hub
(:mod:`airflow_trigger_kit.hub.directories`) lists each directory once for every watch on it and
calls :func:`~airflow_trigger_kit.sources.directory.detect.detect` per cursor. This class is the
same logic for one watch on its own (a sensor's check on a worker, a baseline, tests).
"""

from __future__ import annotations

import asyncio
import time

from airflow_trigger_kit.sources.base import JSON, Batch, Source
from airflow_trigger_kit.sources.directory.config import DirectoryWatchConfig
from airflow_trigger_kit.sources.directory.detect import check_cursor, detect, empty_cursor
from airflow_trigger_kit.sources.directory.listing import (
    DirectoryListings,
    DirectoryScan,
    FileFilter,
    FileStat,
    Listing,
    ListingKey,
)


class DirectorySource(Source):
    """Watches ``config.directories``; listing runs in a worker thread, never on the event loop.

    :param listings: the listing cache to use (default: one of this source's own). Quiet
        directories are not listed again while they provably did not change.
    """

    kind = "directory"

    def __init__(self, config: DirectoryWatchConfig, listings: DirectoryListings | None = None) -> None:
        self.config = config
        self.filter = FileFilter.of(config)
        self.listings = listings if listings is not None else DirectoryListings()
        self.keys = self.listings.subscribe(config)

    def describe(self) -> str:
        return f"directories {list(self.config.directories)} patterns {list(self.config.patterns)}"

    async def baseline(self) -> JSON:
        def compute() -> JSON:
            for key in self.keys:
                self.listings.invalidate(key)  # a baseline is taken from fresh listings
            scans = self.scans()
            # Everything settled now counts as seen; files still being written are reported later.
            return detect(self.config, empty_cursor(self.config), scans, 10**12, now_ns=time.time_ns()).cursor

        return await asyncio.to_thread(compute)

    async def poll(self, cursor: JSON | None, max_items: int) -> Batch:
        current = empty_cursor(self.config) if cursor is None else check_cursor(self.config, cursor)
        # Listing, stat calls and the comparison all run in a worker thread: on a directory of
        # 50,000 files they take tens of milliseconds that the triggerer's event loop must not lose.
        return await asyncio.to_thread(self._poll_blocking, current, max_items)

    def scans(self) -> list[DirectoryScan]:
        """Up-to-date views of every directory of this watch (blocking)."""
        return [self.listings.refresh(key)[0].view(self.filter) for key in self.keys]

    def _poll_blocking(self, cursor: dict[str, JSON], max_items: int) -> Batch:
        while True:
            reused: dict[str, Listing] = {}
            scans = []
            for key in self.keys:
                listing, listed = self.listings.refresh(key)
                if not listed:
                    reused[key.directory] = listing
                scans.append(listing.view(self.filter))
            batch = detect(self.config, cursor, scans, max_items, now_ns=time.time_ns())
            if verify_reported(self.listings, batch, reused):
                return batch

    async def aclose(self) -> None:
        self.listings.unsubscribe(self.config)

    def describe_cursor(self, cursor: JSON | None) -> JSON:
        if cursor is None:
            return None
        summary: dict[str, JSON] = {}
        for directory, state in cursor.get("dirs", {}).items():
            if "hwm" in state:
                summary[directory] = {"hwm_ns": state["hwm"], "edge": len(state["edge"])}
            else:
                summary[directory] = {"tracked": len(state["known"])}
        return summary


def verify_reported(listings: DirectoryListings, batch: Batch, reused: dict[str, Listing]) -> bool:
    """Whether the files a batch reports from reused listings are still as listed (blocking).

    ``reused`` maps a directory to its listing when that listing was reused rather than made now.
    On ``False`` the stale listings were invalidated: compute the batch again.
    """
    if not reused or not batch.items:
        return True
    by_listing: dict[ListingKey, list[tuple[str, str, FileStat | None]]] = {}
    for item in batch.items:
        listing = reused.get(str(item.data["directory"]))
        if listing is None:
            continue
        kind, rel = str(item.data["kind"]), str(item.data["relative_path"])
        expected = None if kind == "deleted" else listing.files.get(rel)
        by_listing.setdefault(listing.key, []).append((kind, rel, expected))
    return all([listings.verify(key, reported) for key, reported in by_listing.items()])
