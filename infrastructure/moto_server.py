"""moto's standalone server for the local stack, with DynamoDB's per-item atomicity restored.

DynamoDB applies each write to an item atomically: two concurrent ``UpdateItem`` calls that
``ADD`` to the same string set both land, and a condition is checked against the item as the
other write left it. moto's threaded server runs requests concurrently on shared in-memory items
without such isolation, and concurrent updates can lose one another (measured here: two segment
workers finishing at once both read "1 of 3 batches done", and the job never completed). The job
model relies on that atomicity, so this server runs DynamoDB requests one at a time; S3 and SQS
(whose long polls must not block each other) stay concurrent.

Two settings keep moto's own CPU cost off the machine it shares with the inference server (it is
an emulator's cost, not the pipeline's): the service behind a host name is looked up once per host
(moto lists its package directory for every request), and S3 objects up to 64 MiB stay in memory
(moto's default spools anything over ~5 MiB, one frame batch, to a temporary file).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ichseg.background_server import BackgroundServer

S3_IN_MEMORY_BYTES = 64 * 1024 * 1024


class SerializedDynamoDB:
    """WSGI middleware: DynamoDB API calls (``X-Amz-Target: DynamoDB_*``) one at a time."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with self.lock:
                return list(self.app(environ, start_response))  # consumed inside the lock
        return self.app(environ, start_response)


class MotoServer:
    """``ThreadedMotoServer``'s equivalent on 127.0.0.1 (port 0: any free port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        known: dict[str | None, Any] = {}

        class Dispatcher(DomainDispatcherApplication):  # type: ignore[misc]
            """Resolves each host's service once (moto re-lists its package for every request)."""

            def get_backend_for_host(self, host: str | None) -> Any:
                if host not in known:
                    known[host] = super().get_backend_for_host(host)
                return known[host]

        # moto reads this per object; the stack's process is the emulator's, so it is set here.
        os.environ.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(S3_IN_MEMORY_BYTES))
        app = SerializedDynamoDB(Dispatcher(create_backend_app))
        self._serving = BackgroundServer(
            make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler), "ichseg-moto"
        )
        self.url = f"http://{host}:{self._serving.address[1]}"

    def start(self) -> MotoServer:
        self._serving.start()
        return self

    def stop(self) -> None:
        self._serving.stop()
