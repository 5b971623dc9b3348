"""moto's S3 server for the S3 benchmarks: requests counted on the server side, buckets preloaded fast.

Run as its own process (``python -m benchmarks.s3_server PORT``; :func:`counting_s3_server` starts
and stops it), so the benchmark process's CPU time holds only the client side. It is moto's own
WSGI application behind a thin middleware that

* counts requests by kind, **on the server** (``GET /__bench__/counts``, ``POST /__bench__/reset``):
  ``list`` is every ``ListObjectsV2`` request, whoever sent it;
* preloads a bucket with ``count`` objects through moto's in-process backend
  (``POST /__bench__/preload``, JSON ``{"bucket", "keys": [...]}`` or ``{"bucket", "prefix",
  "count", "seed"}`` for random UUID keys): uploading 100,000 objects over HTTP takes moto about
  five minutes, the backend call a few seconds. The watches still see them only through
  ``ListObjectsV2`` over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from devtools.services import free_port, stop_process_group, wait_for

CONTROL = "/__bench__/"


def random_keys(prefix: str, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{prefix}{uuid.UUID(int=rng.getrandbits(128))}.json" for _ in range(count)]


def make_app() -> Callable[..., Iterable[bytes]]:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from moto.s3.models import s3_backends

    moto_app = DomainDispatcherApplication(create_backend_app)
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def reply(start_response: Callable[..., Any], body: Any) -> list[bytes]:
        data = json.dumps(body).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL):
            command = path[len(CONTROL) :]
            if command == "counts":
                with lock:
                    return reply(start_response, dict(counts))
            if command == "reset":
                with lock:
                    counts.clear()
                return reply(start_response, {})
            if command == "preload":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                spec = json.loads(environ["wsgi.input"].read(length))
                keys = spec.get("keys") or random_keys(spec["prefix"], spec["count"], spec.get("seed", 1))
                backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
                for key in keys:
                    backend.put_object(spec["bucket"], key, key.encode(), disable_notification=True)
                return reply(start_response, {"loaded": len(keys)})
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"unknown benchmark command"]
        kind = (
            "list"
            if environ.get("REQUEST_METHOD") == "GET" and "list-type=2" in environ.get("QUERY_STRING", "")
            else "other"
        )
        with lock:
            counts[kind] += 1
        return moto_app(environ, start_response)  # type: ignore[no-any-return]

    return app


def serve(port: int) -> None:
    import logging

    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    parent = os.getppid()

    def exit_with_parent() -> None:
        # The benchmark stops this process group on exit; if the benchmark itself is killed, stop too.
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    server = make_server("127.0.0.1", port, make_app(), threaded=True, request_handler=MotoRequestHandler)
    server.serve_forever()


class CountingS3:
    """Client side of the control endpoint."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _call(self, command: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{CONTROL}{command}", data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())

    def counts(self) -> dict[str, int]:
        return dict(self._call("counts"))

    def lists(self) -> int:
        return int(self.counts().get("list", 0))

    def reset(self) -> None:
        self._call("reset", {})

    def preload(
        self, bucket: str, *, keys: list[str] | None = None, prefix: str = "", count: int = 0, seed: int = 1
    ) -> int:
        body: dict[str, Any] = {"bucket": bucket}
        if keys is not None:
            body["keys"] = keys
        else:
            body.update(prefix=prefix, count=count, seed=seed)
        return int(self._call("preload", body)["loaded"])


@contextlib.contextmanager
def counting_s3_server() -> Iterator[CountingS3]:
    """The server in its own process group; stopped (the whole group) on exit, also on failure."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.s3_server", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the benchmark S3 server exited with {proc.returncode}")
            try:
                CountingS3(url).counts()
                return True
            except OSError:
                return False

        wait_for(up, timeout=60, what="the benchmark S3 server to answer")
        yield CountingS3(url)
    finally:
        stop_process_group(proc, timeout=5)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
