"""Detection for ``key_order="any"`` with ``created`` only: a floor, a high watermark and an edge of hashes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_trigger_kit.sources.base import JSON, Batch, PermanentSourceError
from airflow_trigger_kit.sources.s3.changes import Change, listing_stats, present_change
from airflow_trigger_kit.sources.s3.config import S3WatchConfig
from airflow_trigger_kit.sources.s3.encodings import decode_edge, encode_edge, version_hash
from airflow_trigger_kit.sources.s3.listing import PrefixListing


@dataclass
class WindowState:
    floor: int = 0
    hwm: int | None = None
    edge: dict[int, set[bytes]] = field(default_factory=dict)
    seen: set[bytes] = field(default_factory=set)
    """Every hash of the edge, flat, for O(1) lookups."""

    @classmethod
    def load(cls, raw: Any) -> WindowState:
        if raw is None:
            return cls()
        try:
            floor = int(raw["floor"])
            hwm = None if raw.get("hwm") is None else int(raw["hwm"])
            edge = decode_edge(floor, raw["edge"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentSourceError(
                f"the stored S3 window cursor is damaged ({exc}); "
                "reset it with `trigger-kit state reset NAMESPACE NAME`"
            ) from None
        return cls(floor=floor, hwm=hwm, edge=edge, seen=set().union(*edge.values()))

    def add(self, second: int, h: bytes) -> None:
        self.hwm = second if self.hwm is None else max(self.hwm, second)
        self.edge.setdefault(second, set()).add(h)
        self.seen.add(h)

    def advance(self, lookback_seconds: int) -> None:
        """Move the floor up to ``hwm - lookback_seconds`` (never down) and drop older groups."""
        if self.hwm is not None:
            self.floor = max(self.floor, self.hwm - lookback_seconds)
        self.edge = {s: hs for s, hs in self.edge.items() if s >= self.floor}
        self.seen = set().union(*self.edge.values())

    def dump(self) -> dict[str, JSON]:
        return {
            "floor": self.floor,
            "hwm": self.hwm,
            "n": sum(len(v) for v in self.edge.values()),
            "edge": encode_edge(self.floor, self.edge),
        }


def stored_floor(raw: Any) -> int:
    """The floor of a stored window state without decoding its edge (0 for a new prefix)."""
    if isinstance(raw, dict) and isinstance(raw.get("floor"), int):
        return int(raw["floor"])
    return 0


def detect_window(
    config: S3WatchConfig, cursor: dict[str, JSON], listings: Sequence[PrefixListing], max_items: int
) -> Batch:
    old: dict[str, Any] = cursor["prefixes"]
    states = [WindowState.load(old.get(listing.prefix)) for listing in listings]
    candidates: list[tuple[Change, bytes]] = []
    for i, listing in enumerate(listings):
        state = states[i]
        for obj in listing.objects:
            if obj.last_modified < state.floor or not config.counts(obj):
                continue
            h = version_hash(obj.key, obj.etag)
            if h in state.seen:
                continue
            candidates.append((present_change(i, listing.prefix, "created", obj), h))
    candidates.sort(key=lambda pair: pair[0].sort_key())
    taken = candidates[:max_items]
    for change, h in taken:
        states[change.index].add(change.last_modified, h)
    prefixes: dict[str, JSON] = {}
    for listing, state in zip(listings, states, strict=True):
        state.advance(config.lookback_seconds)
        prefixes[listing.prefix] = state.dump()
    return Batch(
        items=[c.item(config.bucket) for c, _ in taken],
        cursor={**cursor, "prefixes": prefixes},
        more=len(candidates) > max_items,
        stats=listing_stats(listings),
    )
