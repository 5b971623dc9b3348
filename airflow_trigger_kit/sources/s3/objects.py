"""One S3 object as a listing shows it (no imports of the rest of the package: everything uses it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any


@dataclass(frozen=True)
class S3Object:
    """One object from a listing. ``last_modified`` is whole epoch seconds (S3's precision)."""

    key: str
    etag: str
    size: int
    last_modified: int
    last_modified_iso: str

    @classmethod
    def from_listing(cls, raw: dict[str, Any]) -> S3Object:
        lm = raw.get("LastModified")
        if isinstance(lm, datetime):
            if lm.tzinfo is None:
                lm = lm.replace(tzinfo=timezone.utc)
            lm = lm.astimezone(timezone.utc)
        else:
            lm = datetime.fromtimestamp(0, tz=timezone.utc)
        return cls(
            key=str(raw["Key"]),
            etag=str(raw.get("ETag") or "").strip('"'),
            size=int(raw.get("Size") or 0),
            last_modified=int(lm.timestamp()),
            last_modified_iso=lm.isoformat(),
        )
