"""The local stack's services beside moto: the inference server and the Firebase Storage emulator.

Each starts on a port the operating system picks (0) and reads back the port it bound, so no port
probed free can be taken between the probe and the bind; each can go down for a block (an outage a
test stages) and come back on the same address, which the functions' environment names.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ichseg.paths import REPO_ROOT

LOCAL_ENDPOINT_ENVIRONMENT = {"ICHSEG_ORT_SPINNING": "0"}
"""The local inference server shares the machine's cores with the functions (rendering, moto): its
idle ONNX Runtime threads must not spin (``bench/pipeline_bench.py``). A GPU endpoint has its own."""


class StackError(RuntimeError):
    """The local stack cannot start (missing model, a service that does not come up)."""


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` of a log file, for an error that points at it ("" if unreadable)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class InferenceServer:
    """``ichseg endpoint`` (gunicorn + ONNX Runtime) in its own process, logging to ``endpoint.log``."""

    def __init__(self, model: Path, workers: int, state_dir: Path, log_dir: Path) -> None:
        self.model, self.workers = model, workers
        self.port_file = state_dir / "endpoint.port"
        self.log = log_dir / "endpoint.log"
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    def launch(self, port: int = 0) -> None:
        """Start the server on ``port``; it writes the port it bound to :attr:`port_file`. Returns at
        once: ONNX Runtime's session and warm-up take seconds, which the caller spends elsewhere."""
        from serving.server import PORT_FILE_ENV

        self.port_file.unlink(missing_ok=True)
        command = [sys.executable, "-m", "ichseg.cli", "endpoint", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--model", str(self.model), "--workers", str(self.workers)]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as output:
            self._process = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env={**os.environ, **LOCAL_ENDPOINT_ENVIRONMENT, PORT_FILE_ENV: str(self.port_file)},
            )

    @property
    def pid(self) -> int | None:
        """The server's main process (gunicorn's arbiter; its workers are its children)."""
        return None if self._process is None else self._process.pid

    def _exited(self) -> bool:
        return self._process is None or self._process.poll() is not None

    def _bound_port(self, timeout: float = 120.0) -> int | None:
        """The port the server bound, once it has; None if it exited without binding."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = self._exited()
            if self.port_file.exists():  # written atomically, after the bind
                return int(self.port_file.read_text())
            if exited:
                return None
            time.sleep(0.1)
        raise StackError(f"the inference server did not bind its port in {timeout:.0f} s")

    def learn_url(self) -> str:
        """Set and return :attr:`url` from the port the launched server bound."""
        port = self._bound_port()
        if port is None:
            raise StackError(f"the inference server exited; see {self.log}:\n" + tail(self.log))
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Wait until ``/ping`` answers 200 (the model is loaded and warm)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self._exited():
                raise StackError(f"the inference server exited; see {self.log}:\n" + tail(self.log))
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise StackError(f"the inference server did not become ready in {timeout:.0f} s")

    def stop(self) -> None:
        """SIGTERM (gunicorn's graceful stop), then SIGKILL after 15 s."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    @contextmanager
    def down(self) -> Iterator[None]:
        """Stop the server for the block (connections are refused), then start it again."""
        self.stop()
        try:
            yield
        finally:
            self._restart()

    def _restart(self, bind_timeout: float = 60.0) -> None:
        """Start the server again on its old port: the functions' environment names it.

        gunicorn binds with SO_REUSEADDR and retries for about 5 s itself; if the port is still
        taken (another process bound it while the server was down), relaunch until ``bind_timeout``.
        """
        port = int(self.url.rsplit(":", 1)[1])
        deadline = time.monotonic() + bind_timeout
        while True:
            self.launch(port)
            if self._bound_port() is not None:
                break
            if time.monotonic() >= deadline:
                raise StackError(
                    f"the inference server could not bind port {port} again in {bind_timeout:.0f} s:\n" + tail(self.log)
                )
            time.sleep(1.0)
        self.wait_ready()


class StorageEmulator:
    """gcp-storage-emulator in this process, in memory: Firebase Storage, the mirror's bucket."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self.url = ""
        self._server: Any = None

    def start(self, port: int = 0, bind_timeout: float = 30.0) -> str:
        """Start on ``port`` and return :attr:`url`.

        Port 0 (the first start) binds any free port and reads it back. A fixed port (the restart
        after :meth:`down`) may be briefly taken: its bind is retried until ``bind_timeout``.
        """
        from gcp_storage_emulator.server import create_server

        logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
        deadline = time.monotonic() + bind_timeout
        while True:
            server = create_server("127.0.0.1", port, in_memory=True, default_bucket=self.bucket)
            # Not server.start(): it waits forever for a server thread whose bind failed. The
            # thread sets is_running once its HTTPServer is bound; it dies when the bind fails.
            api = server._api
            api.start()
            while not api.is_running.wait(0.05) and api.is_alive():
                pass
            if api.is_running.is_set():
                break
            if time.monotonic() >= deadline:
                raise StackError(f"the Firebase Storage emulator could not bind port {port} in {bind_timeout:.0f} s")
            time.sleep(0.5)
        self._server = server
        self.url = f"http://127.0.0.1:{api._httpd.server_port}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @contextmanager
    def down(self) -> Iterator[None]:
        """Stop the emulator for the block (a Firebase outage), then start it again, empty, on the
        same address."""
        port = int(self.url.rsplit(":", 1)[1])
        self.stop()
        try:
            yield
        finally:
            self.start(port)
