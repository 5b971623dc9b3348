"""Multi-directory detection: new, changed and deleted files in many directories at once.

The parts, each with the design and invariants it is responsible for:

* :mod:`.config` — the watch's parameters, validated at DAG parse time.
* :mod:`.listing` — one ``scandir`` + ``stat`` pass per directory, and the cache that lets every
  watch of a process share it (a quiet directory costs one ``stat``, not a listing).
* :mod:`.detect` — the cursor layouts and the pure comparison of listings with a cursor.
* :mod:`.source` — :class:`DirectorySource`, one watch on its own (a sensor's check on a worker,
  baselines); in the triggerer, :mod:`airflow_trigger_kit.hub.directories` drives the same pieces
  for every watch at once.
"""

from airflow_trigger_kit.sources.directory.config import (
    DEFAULT_IGNORE_PATTERNS,
    DEFAULT_LOOKBACK_SECONDS,
    DEFAULT_SETTLE_SECONDS,
    EVENT_KINDS,
    DirectoryWatchConfig,
)
from airflow_trigger_kit.sources.directory.detect import CURSOR_VERSION, EDGE_LIMIT, check_cursor, detect, empty_cursor
from airflow_trigger_kit.sources.directory.listing import (
    QUIET_MARGIN_NS,
    DirectoryListings,
    DirectoryScan,
    FileFilter,
    FileStat,
    Listing,
    ListingKey,
    scan_directory,
)
from airflow_trigger_kit.sources.directory.source import DirectorySource, verify_reported

__all__ = [
    "CURSOR_VERSION",
    "DEFAULT_IGNORE_PATTERNS",
    "DEFAULT_LOOKBACK_SECONDS",
    "DEFAULT_SETTLE_SECONDS",
    "EDGE_LIMIT",
    "EVENT_KINDS",
    "QUIET_MARGIN_NS",
    "DirectoryListings",
    "DirectoryScan",
    "DirectorySource",
    "DirectoryWatchConfig",
    "FileFilter",
    "FileStat",
    "Listing",
    "ListingKey",
    "check_cursor",
    "detect",
    "empty_cursor",
    "scan_directory",
    "verify_reported",
]
