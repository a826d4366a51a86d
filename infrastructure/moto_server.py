"""moto's standalone server for the local stack, with DynamoDB's per-item atomicity restored.

DynamoDB applies each write to an item atomically: two concurrent ``UpdateItem`` calls that
``ADD`` to the same string set both land, and a condition is checked against the item as the
other write left it. moto's threaded server runs requests concurrently on shared in-memory items
without such isolation, and concurrent updates can lose one another (measured here: two segment
workers finishing at once both read "1 of 3 batches done", and the job never completed). The job
model relies on that atomicity, so this server runs DynamoDB requests one at a time; S3 and SQS
(whose long polls must not block each other) stay concurrent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any


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

        app = SerializedDynamoDB(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
        self.url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="ichseg-moto", daemon=True)

    def start(self) -> MotoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
