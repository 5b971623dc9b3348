"""``trigger-kit``: inspect and repair ProcessState, and list watches, from a shell.

Uses the same ``[trigger_kit]`` configuration as the triggers, so it reads and writes the very
store the watchers use. Exit status: 0 success, 1 missing key or version conflict, 2 bad usage,
3 state store unavailable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from airflow_trigger_kit.state import (
    InvalidStateInput,
    ProcessState,
    StateConflict,
    StateEntry,
    StateStoreUnavailable,
    list_all,
)

EXIT_OK, EXIT_MISSING_OR_CONFLICT, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def _entry_dict(entry: StateEntry) -> dict[str, Any]:
    return {
        "value": entry.value,
        "version": entry.version,
        "updated_at": entry.updated_at.isoformat(),
        "updated_by": entry.updated_by,
    }


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")

    parser = argparse.ArgumentParser(
        prog="trigger-kit", description="Inspect and edit airflow-trigger-kit ProcessState."
    )
    groups = parser.add_subparsers(dest="group", required=True)
    state = groups.add_parser("state", help="ProcessState entries (watermarks)")
    cmds = state.add_subparsers(dest="command", required=True)

    p = cmds.add_parser("list", parents=[common], help="list entries")
    p.add_argument("--namespace")

    p = cmds.add_parser("get", parents=[common], help="show one entry")
    p.add_argument("namespace")
    p.add_argument("name")
    p.add_argument("key")

    p = cmds.add_parser("set", parents=[common], help="write one entry (value is JSON)")
    p.add_argument("namespace")
    p.add_argument("name")
    p.add_argument("key")
    p.add_argument("value", help="a JSON value, for example '{\"hwm\": 0}' or '\"text\"'")
    p.add_argument("--expected-version", type=int, default=None, help="compare-and-set")

    p = cmds.add_parser("delete", parents=[common], help="delete one entry")
    p.add_argument("namespace")
    p.add_argument("name")
    p.add_argument("key")

    p = cmds.add_parser("reset", parents=[common], help="delete every key of a watcher (rewind it)")
    p.add_argument("namespace")
    p.add_argument("name")

    p = groups.add_parser(
        "watches", parents=[common], help="every watch: source, target, cursor, deliveries, last error"
    )
    p.add_argument("--namespace")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except InvalidStateInput as exc:
        print(f"trigger-kit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StateConflict as exc:
        print(f"trigger-kit: {exc}", file=sys.stderr)
        return EXIT_MISSING_OR_CONFLICT
    except StateStoreUnavailable as exc:
        print(f"trigger-kit: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def _emit(as_json: bool, payload: Any, text: str) -> None:
    print(json.dumps(payload, indent=2, sort_keys=True) if as_json else text)


def _run(args: argparse.Namespace) -> int:
    if args.group == "watches":
        return _watches(args)
    if args.command == "list":
        from airflow_trigger_kit.state.factory import configured_backend

        entries = list_all(configured_backend(), args.namespace)
        rows = [{"namespace": e.namespace, "name": e.name, "key": e.key, **_entry_dict(e.entry)} for e in entries]
        text = "\n".join(
            f"{r['namespace']}\t{r['name']}\t{r['key']}\tv{r['version']}\t{json.dumps(r['value'])}" for r in rows
        )
        _emit(args.json, rows, text or "(no entries)")
        return EXIT_OK

    state = ProcessState(args.namespace, args.name)
    if args.command == "get":
        entry = state.get(args.key)
        if entry is None:
            print(
                f"trigger-kit: no key {args.key!r} in namespace={args.namespace!r} name={args.name!r}",
                file=sys.stderr,
            )
            return EXIT_MISSING_OR_CONFLICT
        _emit(args.json, _entry_dict(entry), json.dumps(entry.value))
        return EXIT_OK
    if args.command == "set":
        try:
            value = json.loads(args.value)
        except json.JSONDecodeError as exc:
            print(f"trigger-kit: VALUE is not valid JSON ({exc}): {args.value!r}", file=sys.stderr)
            return EXIT_USAGE
        version = state.set(args.key, value, expected_version=args.expected_version)
        _emit(args.json, {"version": version}, f"version {version}")
        return EXIT_OK
    if args.command == "delete":
        if not state.delete(args.key):
            print(
                f"trigger-kit: no key {args.key!r} in namespace={args.namespace!r} name={args.name!r}",
                file=sys.stderr,
            )
            return EXIT_MISSING_OR_CONFLICT
        _emit(args.json, {"deleted": 1}, "deleted")
        return EXIT_OK
    if args.command == "reset":
        count = state.clear()
        _emit(args.json, {"deleted": count}, f"reset: deleted {count} key(s)")
        return EXIT_OK
    raise AssertionError(f"unhandled command {args.command}")  # pragma: no cover


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _watches(args: argparse.Namespace) -> int:
    from airflow_trigger_kit.state.factory import configured_backend
    from airflow_trigger_kit.status import list_watches

    rows = [watch.to_json() for watch in list_watches(configured_backend(), args.namespace)]
    if args.json:
        _emit(True, rows, "")
        return EXIT_OK
    if not rows:
        print("(no watches)")
        return EXIT_OK
    print(format_watch_table(rows))
    return EXIT_OK


def format_watch_table(rows: list[dict[str, Any]]) -> str:
    """The ``trigger-kit watches`` table: one line per watch, errors last."""
    header = ("WATCH", "MODE", "SOURCE", "TARGET", "CURSOR", "COMMITTED", "DETECTED", "ITEMS", "LAST ERROR")
    table = [header]
    for r in rows:
        error = r["last_error"]
        error_text = "-"
        if error:
            state = "recovered" if r["recovered_at"] else ("retrying" if error["transient"] else "FAILED")
            backoff = r.get("backoff")
            if backoff and not r["recovered_at"]:
                retry_at = str(backoff.get("next_retry_at", ""))[:19].replace("T", " ")
                state = f"FAILED x{backoff.get('failures')}, next retry {retry_at}"
            error_text = f"[{state}] {error['message'][:80]}"
        committed = r["cursor_updated_at"][:19].replace("T", " ") if r["cursor_updated_at"] else "-"
        table.append(
            (
                f"{r['namespace']}/{r['name']}",
                r["kind"] or "-",
                r["source"] or "-",
                r["target"] or "-",
                f"v{r['cursor_version']}" if r["cursor_version"] is not None else "-",
                committed,
                _ago(r["seconds_since_detection"]),
                str(r["items_delivered"]),
                error_text,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in table
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
