"""JSON-safe row values and result fingerprints (pure).

Rows travel in trigger events, XCom and asset events, so every value asyncpg returns is turned
into JSON exactly and stably: the same row always gives the same payload (dedup ids and
``query_change`` fingerprints depend on it). Conversion dispatches on the value's exact type first
(one dict lookup for the common types), which matters when a backlog of rows is converted.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import ipaddress
import json
import math
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from airflow_trigger_kit.sources.base import JSON

_IP_TYPES = (
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
)


def to_json_safe(value: Any) -> JSON:
    """A JSON value for anything asyncpg returns.

    Timestamps, dates and times become ISO 8601 strings; ``Decimal`` and ``UUID`` strings (exact);
    ``bytea`` base64; intervals seconds; ranges ``{"lower", "upper", "lower_inc", "upper_inc",
    "empty"}``; composite values objects; arrays lists; non-finite floats ``"NaN"``/``"Infinity"``.
    ``json``/``jsonb`` arrive parsed (the connection decodes them).
    """
    fast = FAST_CONVERTERS.get(type(value))
    if fast is not None:
        return fast(value)
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, _IP_TYPES):
        return str(value)
    if isinstance(value, asyncpg.Range):
        return {
            "lower": to_json_safe(value.lower),
            "upper": to_json_safe(value.upper),
            "lower_inc": value.lower_inc,
            "upper_inc": value.upper_inc,
            "empty": value.isempty,
        }
    if isinstance(value, asyncpg.Record):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, asyncpg.BitString):
        return value.as_string()
    if isinstance(value, dict):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(v) for v in value]
    return str(value)


def _same(value: Any) -> JSON:
    return value


def _float(value: float) -> JSON:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


FAST_CONVERTERS: dict[type, Callable[[Any], JSON]] = {
    type(None): _same,
    str: _same,
    int: _same,
    bool: _same,
    float: _float,
    decimal.Decimal: str,
    dt.datetime: dt.datetime.isoformat,
    dt.date: dt.date.isoformat,
    dt.time: dt.time.isoformat,
    dt.timedelta: dt.timedelta.total_seconds,
    uuid.UUID: str,
}
"""Converters by exact type for the values asyncpg returns most (subclasses take the general path)."""
try:  # asyncpg's own UUID class (a uuid.UUID look-alike): str() is its canonical form
    from asyncpg.pgproto.pgproto import UUID as _PgUUID

    FAST_CONVERTERS[_PgUUID] = str
except ImportError:  # pragma: no cover - depends on the asyncpg build
    pass


def canonical_json(value: JSON) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def result_fingerprint(columns: Sequence[str], row_digests_sum: int, rows: int) -> str:
    """sha256 over the column names and the multiset of row digests (order-insensitive)."""
    text = f"{canonical_json(list(columns))}\n{rows}\n{row_digests_sum % (1 << 256):064x}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def row_digest(values: Sequence[JSON]) -> int:
    return int.from_bytes(hashlib.sha256(canonical_json(list(values)).encode("utf-8")).digest(), "big")
