"""A socket server that serves from a daemon thread: started, addressed and stopped one way.

The gateway's status page, the local stack's moto server and API front, and the tests' receivers
each run a stdlib or werkzeug server beside other work; this is their one start and stop.
"""

from __future__ import annotations

import socketserver
import threading
from typing import Self


class BackgroundServer:
    """``server.serve_forever`` in a daemon thread named ``name``."""

    def __init__(self, server: socketserver.BaseServer, name: str) -> None:
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) it listens on (the port chosen when it was asked for port 0)."""
        address = self.server.server_address
        if not isinstance(address, tuple):  # a Unix socket: none of ichseg's servers
            raise TypeError(f"{address!r} is not a host and port")
        return str(address[0]), int(address[1])

    @property
    def running(self) -> bool:
        """Whether its thread is serving."""
        return self._thread.is_alive()

    def start(self) -> Self:
        """Serve in the background; returns at once."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the port and wait for the thread (at most 10 s)."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)
