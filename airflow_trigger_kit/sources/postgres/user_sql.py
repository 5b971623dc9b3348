"""User SQL (``filter`` and ``query``): lexed like PostgreSQL lexes it, at DAG parse time (pure).

A ``filter`` is one boolean expression and a ``query`` one read-only statement. The lexer skips
string literals, quoted identifiers, dollar quotes and comments, and refuses what would let the text
escape its slot (a ``;``, an unbalanced parenthesis, ``$n`` placeholders). The server's prepare
step checks the rest; every poll runs in a ``READ ONLY`` transaction, so nothing can write even if
it got past these checks.
"""

from __future__ import annotations

import re

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$\x80-\U0010ffff]")


def check_sql_fragment(param: str, text: str) -> None:
    """Reject ``text`` unless it is one statement or expression: lexes like PostgreSQL does.

    String literals (``'..'``, ``E'..'``, ``$tag$..$tag$``), quoted identifiers and comments
    (``--``, nested ``/* */``) are skipped; outside them a ``;``, a ``)`` without its ``(``,
    an unclosed ``(`` or a ``$1`` placeholder is an error naming ``param`` and the position. The
    server's prepare step checks the rest (syntax, one statement, the type of a filter).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{param} must be a non-empty SQL string, got {text!r}")
    if "\x00" in text:
        raise ValueError(f"{param} must not contain NUL characters")
    code = _code_only(param, text)
    depth = 0
    for i, c in enumerate(code):
        if c == ";":
            raise ValueError(
                f"{param} must be a single SQL {'statement' if param == 'query' else 'expression'}: found ';' at "
                f"position {i} outside string literals and comments in {text[:200]!r}"
            )
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"{param}: ')' at position {i} closes a parenthesis that {param} did not open")
    if depth:
        raise ValueError(f"{param}: {depth} unclosed '(' in {text[:200]!r}")


def _code_only(param: str, text: str) -> str:
    """``text`` with string literals, quoted identifiers and comments blanked out (same length).

    Lexes like PostgreSQL: ``'..'`` (``''`` inside), ``E'..'`` (backslash escapes), ``$tag$..$tag$``,
    ``".."`` identifiers, ``--`` and nested ``/* */`` comments; identifiers may contain ``$``. An
    unterminated literal or comment, or a ``$1`` placeholder, is an error naming ``param``.
    """
    out = list(text)
    i, n = 0, len(text)

    def blank(start: int, end: int) -> None:
        out[start:end] = " " * (end - start)

    while i < n:
        c = text[i]
        if c == "'" or (c in "eE" and i + 1 < n and text[i + 1] == "'" and not _ident_before(text, i)):
            escapes = c != "'"
            j = i + (2 if escapes else 1)
            while True:
                if j >= n:
                    raise ValueError(f"{param}: unterminated string literal starting at position {i}")
                if escapes and text[j] == "\\":
                    j += 2
                    continue
                if text[j] == "'":
                    if j + 1 < n and text[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            blank(i, j + 1)
            i = j + 1
        elif c == '"':
            j = i + 1
            while True:
                k = text.find('"', j)
                if k < 0:
                    raise ValueError(f"{param}: unterminated quoted identifier starting at position {i}")
                if k + 1 < n and text[k + 1] == '"':
                    j = k + 2
                    continue
                break
            blank(i, k + 1)
            i = k + 1
        elif c == "-" and text.startswith("--", i):
            k = text.find("\n", i)
            end = n if k < 0 else k + 1
            blank(i, end)
            i = end
        elif c == "/" and text.startswith("/*", i):
            level, j = 1, i + 2
            while level:
                if j >= n:
                    raise ValueError(f"{param}: unterminated /* comment starting at position {i}")
                if text.startswith("/*", j):
                    level, j = level + 1, j + 2
                elif text.startswith("*/", j):
                    level, j = level - 1, j + 2
                else:
                    j += 1
            blank(i, j)
            i = j
        elif c == "$" and not _ident_before(text, i):
            if i + 1 < n and text[i + 1].isdigit():
                raise ValueError(
                    f"{param}: placeholders such as ${text[i + 1]} are not supported (position {i}); "
                    "write values as SQL literals"
                )
            m = _DOLLAR_TAG.match(text, i)
            if m is None:
                i += 1
                continue
            end = text.find(m.group(0), m.end())
            if end < 0:
                raise ValueError(f"{param}: unterminated dollar-quoted string {m.group(0)} at position {i}")
            blank(i, end + len(m.group(0)))
            i = end + len(m.group(0))
        elif _IDENT_CHAR.match(c):
            j = i + 1
            while j < n and _IDENT_CHAR.match(text[j]):
                j += 1
            i = j
        else:
            i += 1
    return "".join(out)


def _ident_before(text: str, i: int) -> bool:
    return i > 0 and bool(_IDENT_CHAR.match(text[i - 1]))


_QUERY_START = re.compile(r"\s*(?:(?:--[^\n]*\n?)|(?:/\*.*?\*/)|\s)*\(?\s*(\w+)", re.DOTALL)


def normalize_query(query: str) -> str:
    """The user query without surrounding whitespace and one trailing ``;``; checked like a fragment."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"query must be a non-empty SQL SELECT statement, got {query!r}")
    text = query.strip()
    if text.endswith(";"):
        text = text[:-1].rstrip()
    check_sql_fragment("query", text)
    m = _QUERY_START.match(text)
    if m is None or m.group(1).lower() not in ("select", "with", "values", "table"):
        raise ValueError(f"query must be a SELECT (or WITH / VALUES / TABLE) statement, got {text[:200]!r}")
    check_read_only_query(text)
    return text


WRITE_KEYWORDS = frozenset({"insert", "update", "delete", "merge"})
_MAIN_KEYWORDS = frozenset({"select", "values", "table"}) | WRITE_KEYWORDS
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*|[()]")
READ_ONLY_HINT = (
    "the watch runs it in a READ ONLY transaction on every poll and only reads: no INSERT, UPDATE, DELETE or "
    "MERGE (also not inside WITH), no SELECT ... INTO, no FOR UPDATE / FOR SHARE, no functions that write "
    "(nextval(), ...); do the writing in a task"
)


def check_read_only_query(text: str) -> None:
    """Refuse a ``query`` that would write, as far as its text shows it (a checked, normalized query).

    Caught here, at DAG parse time: a data-modifying statement in a ``WITH`` clause
    (``WITH d AS (DELETE ...) SELECT ...``) or as the statement after it, ``SELECT ... INTO``
    (creates a table) and row locks (``FOR UPDATE``, ``FOR NO KEY UPDATE``, ``FOR SHARE``, ``FOR KEY
    SHARE``). Functions that write (``nextval()``) cannot be seen in the text: the read-only
    transaction refuses them when the query runs, with the same hint.
    """
    tokens = [(m.group(0).lower(), m.start()) for m in _TOKEN.finditer(_code_only("query", text))]
    depth = 0
    main_seen = tokens[0][0] != "with" if tokens else True
    for n, (tok, at) in enumerate(tokens):
        following = [t for t, _ in tokens[n + 1 : n + 4]]
        if tok == "(":
            depth += 1
            continue
        if tok == ")":
            depth -= 1
            continue
        what = None
        if tok in WRITE_KEYWORDS and n >= 2 and tokens[n - 1][0] == "(" and tokens[n - 2][0] in ("as", "materialized"):
            what = f"a data-modifying {tok.upper()} in a WITH clause"
        elif not main_seen and depth == 0 and tok in _MAIN_KEYWORDS:
            main_seen = True
            if tok in WRITE_KEYWORDS:
                what = f"a data-modifying {tok.upper()} statement after WITH"
        elif tok == "into":
            what = "SELECT ... INTO (it creates a table)"
        elif tok == "for" and (
            following[:1] in (["update"], ["share"])
            or following[:3] == ["no", "key", "update"]
            or following[:2] == ["key", "share"]
        ):
            what = "a row lock (FOR UPDATE / FOR SHARE)"
        if what is not None:
            raise ValueError(f"query must not write: found {what} at position {at} of {text[:200]!r}; {READ_ONLY_HINT}")
