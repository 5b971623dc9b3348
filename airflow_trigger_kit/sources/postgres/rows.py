"""Rows of the keyset statement as items: payloads, positions, hashes and dedup ids (pure).

A record of :meth:`~airflow_trigger_kit.sources.postgres.plan.Plan.select_rows` holds the selected
columns, then the order columns as the server's text (the cursor's position), then the row's 64-bit
hash. This is the per-row hot path of a backlog drain, so it is written as one pass with no
intermediate objects; the dedup id is exactly
``stable_id("postgres", table, joined(key values), joined(order values))`` (a unit test checks the
two agree).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from airflow_trigger_kit.sources.base import JSON, Item
from airflow_trigger_kit.sources.postgres.json_values import to_json_safe
from airflow_trigger_kit.sources.postgres.plan import Plan


def joined(values: Iterable[str]) -> str:
    """An unambiguous string for a list of texts (each one length-prefixed), for dedup ids."""
    return "|".join([f"{len(v)}:{v}" for v in values])


class Row:
    """One fetched row: the record, its position (order values as text) and its hash."""

    __slots__ = ("hash", "pos", "record")

    def __init__(self, record: Any, pos: list[str], hash: int) -> None:
        self.record = record
        self.pos = pos
        self.hash = hash


IDENTITY_TYPES = frozenset({"smallint", "integer", "bigint", "text", "character varying", "character", "boolean"})
"""Base types whose asyncpg values (``int``, ``str``, ``bool``) are JSON already: copied, not converted."""


class RowReader:
    """Turns records of one plan into :class:`Row` objects and items."""

    def __init__(self, plan: Plan, table_name: str) -> None:
        self.order = list(plan.order)
        self.nsel = len(plan.selected)
        self.nord = len(plan.order)
        types = plan.selected_types or [""] * len(plan.selected)
        self.columns = [(name, j, t in IDENTITY_TYPES) for j, (name, t) in enumerate(zip(plan.selected, types))]  # noqa: B905
        self.key_index = [(k, plan.order.index(k)) for k in plan.key]
        self.table_name = table_name
        self._id_prefix = f"postgres\x1f{table_name}\x1f"

    def rows(self, records: Sequence[Any]) -> list[Row]:
        nsel, end = self.nsel, self.nsel + self.nord
        out = []
        for record in records:
            out.append(Row(record, [record[i] for i in range(nsel, end)], record[end]))
        return out

    def item(self, row: Row, *, late: bool = False) -> Item:
        record = row.record
        values: dict[str, JSON] = {}
        for name, j, same in self.columns:
            v = record[j]
            values[name] = v if same or v is None else to_json_safe(v)
        pos = row.pos
        if len(self.key_index) == 1:
            name, i = self.key_index[0]
            key = pos[i]
            key_values = {name: key}
            key_text = f"{len(key)}:{key}"
        else:
            key_values = {k: pos[i] for k, i in self.key_index}
            key_text = joined(key_values.values())
        data: dict[str, JSON] = {
            "kind": "row",
            "table": self.table_name,
            "row": values,
            "key": key_values,
            "watermark": dict(zip(self.order, pos)),  # noqa: B905 - lengths equal by construction
        }
        if late:
            data["late"] = True
        text = self._id_prefix + key_text + "\x1f" + joined(pos)
        return Item(hashlib.sha256(text.encode("utf-8")).hexdigest()[:32], data)
