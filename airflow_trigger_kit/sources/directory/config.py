"""Parameters of a multi-directory watch, validated at DAG parse time."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from airflow_trigger_kit.sources.base import JSON
from airflow_trigger_kit.sources.globs import check_globs

EVENT_KINDS = ("created", "modified", "deleted")
DEFAULT_IGNORE_PATTERNS = (".*", "*.tmp", "*.part", "~*")
DEFAULT_SETTLE_SECONDS = 5.0
DEFAULT_LOOKBACK_SECONDS = 60.0


@dataclass(frozen=True)
class DirectoryWatchConfig:
    """Validated, normalized parameters of a multi-directory watch."""

    directories: tuple[str, ...]
    patterns: tuple[str, ...] = ("*",)
    recursive: bool = False
    ignore_patterns: tuple[str, ...] = DEFAULT_IGNORE_PATTERNS
    event_kinds: tuple[str, ...] = ("created",)
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS
    notify: bool = True
    """Wake the watch by kernel change notifications (inotify) where they work; polling stays the truth."""

    @classmethod
    def create(
        cls,
        *,
        directories: str | Sequence[str],
        patterns: str | Sequence[str] = ("*",),
        recursive: bool = False,
        ignore_patterns: str | Sequence[str] | None = DEFAULT_IGNORE_PATTERNS,
        event_kinds: str | Sequence[str] = ("created",),
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS,
        notify: bool = True,
    ) -> DirectoryWatchConfig:
        dirs = _string_list("directories", directories)
        if not dirs:
            raise ValueError("directories must name at least one directory, got []")
        normalized: list[str] = []
        for d in dirs:
            if "\x00" in d:
                raise ValueError(f"directories must not contain NUL characters (no path can), got {d!r}")
            if not os.path.isabs(d):
                raise ValueError(
                    f"directories must be absolute paths (the triggerer runs in another working directory), got {d!r}"
                )
            path = os.path.normpath(d)
            if path in normalized:
                raise ValueError(f"directories lists {d!r} twice")
            normalized.append(path)
        pats = _string_list("patterns", patterns)
        if not pats:
            raise ValueError("patterns must hold at least one glob pattern such as '*.csv', got []")
        for p in pats:
            if "/" in p or os.sep in p:
                raise ValueError(
                    f"patterns match file names, not paths (use recursive=True for subdirectories), got {p!r}"
                )
        check_globs("patterns", pats)
        ignores = _string_list("ignore_patterns", ignore_patterns or ())
        check_globs("ignore_patterns", ignores)
        kinds = _event_kinds(event_kinds)
        if not isinstance(recursive, bool):
            raise ValueError(f"recursive must be True or False, got {recursive!r}")
        if not isinstance(notify, bool):
            raise ValueError(
                f"notify must be True (wake on kernel change notifications) or False (poll only), got {notify!r}"
            )
        settle = _non_negative("settle_seconds", settle_seconds)
        lookback = _non_negative("lookback_seconds", lookback_seconds)
        return cls(
            directories=tuple(normalized),
            patterns=tuple(pats),
            recursive=recursive,
            ignore_patterns=tuple(ignores),
            event_kinds=kinds,
            settle_seconds=settle,
            lookback_seconds=lookback,
            notify=notify,
        )

    def to_kwargs(self) -> dict[str, JSON]:
        return {
            "directories": list(self.directories),
            "patterns": list(self.patterns),
            "recursive": self.recursive,
            "ignore_patterns": list(self.ignore_patterns),
            "event_kinds": list(self.event_kinds),
            "settle_seconds": self.settle_seconds,
            "lookback_seconds": self.lookback_seconds,
            "notify": self.notify,
        }

    @property
    def uses_snapshot(self) -> bool:
        return self.event_kinds != ("created",)


def _string_list(param: str, value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{param} must be a string or a list of strings, got {value!r}")
    out = []
    for v in value:
        if not isinstance(v, str) or not v:
            raise ValueError(f"{param} must hold non-empty strings, got {v!r} in {list(value)!r}")
        out.append(v)
    return out


def _event_kinds(value: str | Sequence[str]) -> tuple[str, ...]:
    kinds = _string_list("event_kinds", value)
    if kinds == ["all"]:
        return EVENT_KINDS
    bad = [k for k in kinds if k not in EVENT_KINDS]
    if bad or not kinds:
        raise ValueError(f"event_kinds must be 'all' or a list of {', '.join(EVENT_KINDS)}; got {value!r}")
    return tuple(k for k in EVENT_KINDS if k in kinds)


def _non_negative(param: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{param} must be a number >= 0, got {value!r}")
    return float(value)
