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
from airflow_trigger_kit.sources.postgres.json_values import FAST_CONVERTERS, to_json_safe
from airflow_trigger_kit.sources.postgres.plan import Plan


def joined(values: Iterable[str]) -> str:
    """An unambiguous string for a list of texts (each one length-prefixed), for dedup ids."""
    return "|".join(f"{len(v)}:{v}" for v in values)


class Row:
    """One fetched row: the record, its position (order values as text) and its hash."""

    __slots__ = ("hash", "pos", "record")

    def __init__(self, record: Any, pos: list[str], hash: int) -> None:
        self.record = record
        self.pos = pos
        self.hash = hash


class RowReader:
    """Turns records of one plan into :class:`Row` objects and items."""

    def __init__(self, plan: Plan, table_name: str) -> None:
        self.selected = list(plan.selected)
        self.order = list(plan.order)
        self.nsel = len(plan.selected)
        self.nord = len(plan.order)
        self.key_index = [(k, plan.order.index(k)) for k in plan.key]
        self.table_name = table_name
        self._id_prefix = f"postgres\x1f{table_name}\x1f"

    def rows(self, records: Sequence[Any]) -> list[Row]:
        nsel, end = self.nsel, self.nsel + self.nord
        out = []
        for record in records:
            values = tuple(record)
            out.append(Row(record, list(values[nsel:end]), values[end]))
        return out

    def item(self, row: Row, *, late: bool = False) -> Item:
        values = tuple(row.record)[: self.nsel]
        get = FAST_CONVERTERS.get
        converted = [(get(type(v)) or to_json_safe)(v) for v in values]
        pos = row.pos
        key_values = {k: pos[i] for k, i in self.key_index}
        data: dict[str, JSON] = {
            "kind": "row",
            "table": self.table_name,
            "row": dict(zip(self.selected, converted)),  # noqa: B905 - lengths equal by construction
            "key": key_values,
            "watermark": dict(zip(self.order, pos)),  # noqa: B905
        }
        if late:
            data["late"] = True
        text = self._id_prefix + joined(key_values.values()) + "\x1f" + joined(pos)
        return Item(hashlib.sha256(text.encode("utf-8")).hexdigest()[:32], data)
