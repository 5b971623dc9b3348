"""Reject globs that cannot match as the user meant, at DAG parse time.

``fnmatch`` never fails: an unclosed ``[`` silently becomes a literal ``[`` (``patterns="["`` then
waits for a file literally named ``[``, forever), a ``]`` without its ``[`` is a literal too, and a
reversed range (``[z-a]``) is dropped. A watch configured like that waits forever without a
word, so such patterns are refused with an error naming the parameter, the pattern and the spot.
The literal forms stay available, spelled as fnmatch spells them: ``[[]`` for ``[`` and ``[]]``
for ``]``. The bracket scanning mirrors :func:`fnmatch.translate` exactly, so a pattern accepted
here means what fnmatch will do with it.
"""

from __future__ import annotations

from collections.abc import Iterable


def check_globs(param: str, patterns: Iterable[str]) -> None:
    """Raise ``ValueError`` naming ``param`` for the first pattern that cannot match as intended."""
    for pattern in patterns:
        problem = glob_problem(pattern)
        if problem is not None:
            raise ValueError(f"{param}: {pattern!r} {problem}")


def glob_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot match as intended, or None when it is a sound glob."""
    if "\x00" in pattern:
        return "contains a NUL character, which no file name or key can contain"
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "]":
            return f"has a ']' at position {i - 1} that closes no '['; write '[]]' to match a literal ']'"
        if c != "[":
            continue
        start = i - 1
        j = i
        if j < n and pattern[j] == "!":
            j += 1
        if j < n and pattern[j] == "]":
            j += 1  # a ']' first in a class is a member, as in fnmatch
        while j < n and pattern[j] != "]":
            j += 1
        if j >= n:
            return (
                f"has a '[' at position {start} that is never closed, so fnmatch would take it literally; "
                "close the character class, or write '[[]' to match a literal '['"
            )
        members = pattern[i:j]
        if members.startswith("!"):
            members = members[1:]
        empty = _reversed_range(members)
        if empty is not None:
            return (
                f"has the reversed range {empty!r} in the character class at position {start}; fnmatch drops it, "
                "so the class does not match what it says"
            )
        i = j + 1
    return None


def _reversed_range(members: str) -> str | None:
    """The first ``a-b`` range with ``a > b`` among a character class's members (fnmatch drops it)."""
    k = 0
    while k + 2 < len(members):
        if members[k + 1] == "-" and members[k] > members[k + 2]:
            return members[k : k + 3]
        k += 3 if members[k + 1] == "-" else 1
    return None
