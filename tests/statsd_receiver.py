"""A real StatsD endpoint for tests: a UDP socket on loopback that records every metric line it receives.

Airflow's StatsD client (the ``statsd`` package) sends one datagram per metric (or several lines per
datagram when pipelined) in the plain StatsD format ``name:value|type``; with ``[metrics]
statsd_influxdb_enabled = True`` the tags ride in the name as ``name,key=value,key=value``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    tags: dict[str, str]
    value: float
    kind: str  # "c" counter, "g" gauge, "ms" timer
    received_at: float = 0.0
    """``time.time()`` when the datagram arrived."""

    @classmethod
    def parse(cls, line: str, received_at: float = 0.0) -> Metric | None:
        try:
            head, rest = line.rsplit(":", 1)
            value, kind = rest.split("|")[:2]
            name, *tag_parts = head.split(",")
            tags = dict(part.split("=", 1) for part in tag_parts)
            return cls(name, tags, float(value), kind, received_at)
        except ValueError:
            return None


class StatsdReceiver:
    """Bind ``127.0.0.1:<free port>`` and collect metrics until :meth:`close`."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.metrics: list[Metric] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="statsd-receiver", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.time()
            parsed = [Metric.parse(line, now) for line in data.decode("utf-8", "replace").splitlines() if line]
            with self._lock:
                self.metrics.extend(m for m in parsed if m is not None)

    def matching(self, metric: str, *, since: float = 0.0, tags: dict[str, str] | None = None) -> list[Metric]:
        """Metrics called ``metric`` received after ``since`` (a ``time.time()``) that carry ``tags``."""
        wanted = tags or {}
        with self._lock:
            return [
                m
                for m in self.metrics
                if m.name == metric and m.received_at >= since and all(m.tags.get(k) == v for k, v in wanted.items())
            ]

    def wait_for(
        self, metric: str, *, timeout: float = 60, since: float = 0.0, tags: dict[str, str] | None = None
    ) -> list[Metric]:
        deadline = time.monotonic() + timeout
        while not (found := self.matching(metric, since=since, tags=tags)):
            if time.monotonic() > deadline:
                with self._lock:
                    names = sorted({m.name for m in self.metrics if "trigger_kit" in m.name})
                raise AssertionError(f"no {metric} {tags} received in {timeout}s; trigger_kit metrics seen: {names}")
            time.sleep(0.2)  # polling the receiver's list, bounded by the deadline
        return found

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        self._thread.join(timeout=5)
