"""Identifiers: table and column names from DAG parameters, checked and quoted (pure; DAG parse time).

Every identifier that reaches SQL is quoted by :func:`quote_ident` after the catalog confirmed it;
these helpers only turn user spelling into exact names and refuse anything that is not a name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

PLAIN_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")
"""A name that SQL accepts unquoted (it is folded to lower case)."""


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (``"`` doubled), safe for any characters but NUL."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"an SQL identifier must be a non-empty string without NUL characters, got {name!r}")
    return '"' + name.replace('"', '""') + '"'


def parse_table(value: str | Sequence[str]) -> tuple[str, str]:
    """``(schema, table)`` from ``"schema.table"``, ``"table"`` (schema ``public``) or a pair.

    The string form follows SQL: unquoted names fold to lower case and must be plain identifiers;
    double-quoted parts (``public."Order Lines"``) keep their case and may hold any character. The
    pair form names the schema and table exactly as stored. Anything else (a ``;``, a space, a
    parenthesis outside quotes) is rejected here, long before any SQL is built.
    """
    if isinstance(value, str):
        parts = _split_qualified_name(value)
    elif isinstance(value, (list, tuple)) and len(value) in (1, 2) and all(isinstance(p, str) for p in value):
        parts = [str(p) for p in value]
        for p in parts:
            if not p or "\x00" in p:
                raise ValueError(f"table parts must be non-empty strings without NUL characters, got {list(value)!r}")
    else:
        raise ValueError(f"table must be 'schema.table', 'table' or a (schema, table) pair of strings, got {value!r}")
    if len(parts) == 1:
        return "public", parts[0]
    return parts[0], parts[1]


def _split_qualified_name(text: str) -> list[str]:
    parts: list[str] = []
    i, n = 0, len(text)
    if not text.strip():
        raise ValueError(f"table must name a table, got {text!r}")
    while True:
        if i < n and text[i] == '"':
            j, buf = i + 1, []
            while True:
                k = text.find('"', j)
                if k < 0:
                    raise ValueError(f"table {text!r}: unterminated double quote")
                buf.append(text[j:k])
                if k + 1 < n and text[k + 1] == '"':
                    buf.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            part = "".join(buf)
            if not part or "\x00" in part:
                raise ValueError(f"table {text!r}: empty or invalid quoted name")
            parts.append(part)
        else:
            k = text.find(".", i)
            raw = text[i:] if k < 0 else text[i:k]
            if not PLAIN_IDENT.match(raw):
                raise ValueError(
                    f"table {text!r}: {raw!r} is not a plain SQL identifier; double-quote names with other "
                    'characters (public."Order Lines") or pass a (schema, table) pair'
                )
            parts.append(raw.lower())
            i = n if k < 0 else k
        if i == n:
            break
        if text[i] != ".":
            raise ValueError(f"table {text!r}: expected '.' after a quoted name at position {i}")
        i += 1
        if i == n:
            raise ValueError(f"table {text!r}: ends with '.'")
    if len(parts) > 2:
        raise ValueError(f"table {text!r}: expected 'schema.table' or 'table', got {len(parts)} dotted parts")
    return parts


def column_list(param: str, value: str | Sequence[str] | None, *, allow_empty: bool = False) -> list[str] | None:
    """A list of exact column names (as ``\\d table`` shows them); a string names one column."""
    if value is None:
        return None
    if isinstance(value, str):
        if "," in value:
            raise ValueError(
                f"{param} names one column per list entry; got {value!r} — pass a list such as {value.split(',')!r}"
            )
        names = [value]
    elif isinstance(value, (list, tuple)):
        names = list(value)
    else:
        raise ValueError(f"{param} must be a column name or a list of column names, got {value!r}")
    for name in names:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ValueError(f"{param} must hold non-empty column names without NUL characters, got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{param} lists a column twice: {names!r}")
    if not names and not allow_empty:
        raise ValueError(f"{param} must name at least one column, got []")
    return names


NOTIFY_CHANNEL_MAX_BYTES = 63
"""PostgreSQL's identifier length (``NAMEDATALEN - 1``): a longer channel name is truncated by the server."""


def validate_notify_channel(value: str | None) -> str | None:
    """``notify_channel`` as the exact channel name to ``LISTEN`` on (``None``: notifications off).

    A plain identifier of at most 63 bytes, used exactly as given (it is quoted in ``LISTEN``, and
    ``pg_notify(channel, ...)`` takes the exact name too): a longer name would be truncated by the
    server and never match, and anything else is most likely a mistake (a table name, a DSN).
    """
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not PLAIN_IDENT.match(value)
        or len(value.encode("utf-8")) > NOTIFY_CHANNEL_MAX_BYTES
    ):
        raise ValueError(
            f"notify_channel must be a Postgres identifier of at most {NOTIFY_CHANNEL_MAX_BYTES} bytes (letters, "
            f"digits, _ and $, not starting with a digit), the channel your trigger function passes to pg_notify(); "
            f"got {value!r}"
        )
    return value
