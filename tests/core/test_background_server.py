"""The one start and stop of ichseg's in-process servers."""

from __future__ import annotations

import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ichseg.background_server import BackgroundServer


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_it_serves_on_the_port_it_was_given_and_stops_with_its_thread() -> None:
    serving = BackgroundServer(ThreadingHTTPServer(("127.0.0.1", 0), _Hello), "test-hello").start()
    assert serving.running
    host, port = serving.address
    assert host == "127.0.0.1" and port > 0
    with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as response:
        assert response.read() == b"hello"
    serving.stop()
    assert serving.server.socket.fileno() == -1  # the port is closed
    assert not serving.running
