"""The inference server that runs in the endpoint container (SageMaker container contract).

    ichseg endpoint --host 127.0.0.1 --port 8080 --model models/ichseg-unet.onnx   # local / EC2
    serve                                                                          # in the image

Routes:

- ``GET /ping``: 200 only once the model is loaded *and* a warm-up inference succeeded; 503 while
  loading or after a failed load (SageMaker keeps the instance out of service until it is 200).
- ``POST /invocations`` and ``POST /endpoints/<name>/invocations`` (the path boto3's
  ``sagemaker-runtime`` client uses, so a client with ``endpoint_url`` at this server works
  unchanged): the wire contract of :mod:`ichseg.endpoint_protocol`. SigV4 headers are ignored.

Every rejected request gets a 4xx JSON body ``{"error": ..., "message": ...}`` ("message" is the
field botocore shows in a ``ClientError``), never a 500: bodies are checked against the 6 MB
payload limit before they are read, and the ``.npy`` header (dtype, shape) is checked against the
byte count before any array is allocated, so a 100-byte request cannot claim a 1 GB array.

The model loads in a background thread (TensorRT engine builds can take minutes, longer than a
gunicorn worker may stay silent); ``/ping`` says when it is ready. Providers are tried TensorRT ->
CUDA -> CPU (``ICHSEG_PROVIDERS`` narrows them; the "model ready" log names the active one, and
``ICHSEG_REQUIRE_GPU=1``, set in the GPU image, keeps /ping at 503 if only the CPU could start),
intra-op threads come from ``ICHSEG_ORT_THREADS`` (``ICHSEG_ORT_SPINNING=0`` stops idle ones spinning,
for a server that shares its cores), and batching happens inside
:class:`ichseg.inference.OnnxSegmenter`. Logs are JSON lines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from ichseg.endpoint_protocol import (
    CONTENT_TYPE,
    CUSTOM_ATTRIBUTES_HEADER,
    SAGEMAKER_MAX_PAYLOAD_BYTES,
    ProtocolError,
    RequestAttributes,
)
from ichseg.inference import DEFAULT_PROVIDERS, OnnxSegmenter
from serving.logs import JsonFormatter, configure_logging, event
from serving.model import InferenceService
from serving.request_checks import RequestRejected, parse_request_body

log = logging.getLogger("ichseg.endpoint")

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
"""Where SageMaker extracts ``model.tar.gz`` inside the container."""
DEFAULT_MODEL_FILE = "ichseg-unet.onnx"


# ------------------------------------------------------------------------------------- the app


def _error(status: int, code: str, message: str) -> Response:
    body = json.dumps({"error": message, "message": message})
    # x-amzn-ErrorType becomes the error code of botocore's ClientError (the body has no "code").
    return Response(body, status=status, mimetype="application/json", headers={"x-amzn-ErrorType": code})


def create_app(
    model_path: str | Path,
    *,
    providers: tuple[str, ...] = DEFAULT_PROVIDERS,
    intra_op_threads: int | None = None,
    batch_size: int = 8,
    max_concurrent: int = 1,
    background: bool = True,
    segmenter_factory: Callable[[], OnnxSegmenter] | None = None,
    require_gpu: bool = False,
) -> Flask:
    """The Flask app serving ``model_path``; with ``background=False`` the model loads before return.

    ``require_gpu`` keeps ``/ping`` at 503 when ONNX Runtime could only start on the CPU.
    ``segmenter_factory`` replaces the ONNX Runtime session construction (tests use it to hold the
    load back and observe ``/ping`` before the model is ready).
    """
    service = InferenceService(
        model_path,
        providers,
        intra_op_threads,
        batch_size,
        max_concurrent,
        segmenter_factory=segmenter_factory,
        require_gpu=require_gpu,
    )
    app = Flask("ichseg.endpoint")
    app.extensions["ichseg"] = service

    @app.get("/ping")
    def ping() -> Response:
        status = service.status()
        return Response(json.dumps(status), status=200 if service.ready else 503, mimetype="application/json")

    @app.post("/invocations")
    @app.post("/endpoints/<endpoint_name>/invocations")
    def invocations(endpoint_name: str | None = None) -> Response:
        started = time.perf_counter()
        try:
            slices = _read_slices()
            answer = service.infer(slices, _request_attributes())
        except RequestRejected as rejected:
            event(
                logging.WARNING,
                "request rejected",
                status=rejected.status,
                reason=rejected.message,
                path=request.path,
                bytes=request.content_length,
            )
            return _error(rejected.status, rejected.code, rejected.message)
        count, height, width = slices.shape
        event(
            logging.INFO,
            "invocation",
            path=request.path,
            slices=count,
            height=height,
            width=width,
            answered=answer.answered,
            bytes=len(answer.body),
            ms=round((time.perf_counter() - started) * 1000, 1),
            model_ms=round(answer.model_seconds * 1000, 1),
            provider=service.segmenter.provider if service.segmenter else None,
        )
        return Response(
            answer.body, status=200, mimetype=CONTENT_TYPE, headers={CUSTOM_ATTRIBUTES_HEADER: answer.attributes}
        )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # 404, 405 (GET /invocations) and other routing errors: JSON like every other error
        return _error(exc.code or 400, type(exc).__name__, exc.description or exc.name)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        log.error("inference failed", exc_info=exc, extra={"fields": {"path": request.path}})
        return _error(500, "InternalFailure", f"inference failed ({type(exc).__name__}); see the endpoint's logs")

    if background:
        service.load_in_background()
    else:
        service.load()
    return app


def _request_attributes() -> RequestAttributes:
    """The request's own CustomAttributes (``context=B,A``), or 400."""
    try:
        return RequestAttributes.decode(request.headers.get(CUSTOM_ATTRIBUTES_HEADER, ""))
    except ProtocolError as exc:
        raise RequestRejected(400, "ValidationError", str(exc)) from exc


def _read_slices() -> np.ndarray:
    """The request's slices, after the checks that need no body (type, Accept, declared size)."""
    if request.mimetype != CONTENT_TYPE:
        shown = request.content_type or "none"
        raise RequestRejected(415, "UnsupportedMediaType", f"Content-Type must be {CONTENT_TYPE}, got {shown}")
    if "Accept" in request.headers and request.accept_mimetypes.best_match([CONTENT_TYPE]) is None:
        raise RequestRejected(406, "NotAcceptable", f"this endpoint answers {CONTENT_TYPE} only")
    declared = request.content_length
    if declared is not None and declared > SAGEMAKER_MAX_PAYLOAD_BYTES:
        raise RequestRejected(
            413, "PayloadTooLarge", f"body of {declared} bytes exceeds SageMaker's {SAGEMAKER_MAX_PAYLOAD_BYTES}"
        )
    return parse_request_body(_read_body(SAGEMAKER_MAX_PAYLOAD_BYTES))


def _read_body(limit: int) -> bytes:
    """The body, read in pieces and abandoned past ``limit`` (a chunked body declares no length)."""
    pieces: list[bytes] = []
    total = 0
    while True:
        piece = request.stream.read(min(1 << 20, limit + 1 - total))
        if not piece:
            return b"".join(pieces)
        pieces.append(piece)
        total += len(piece)
        if total > limit:
            raise RequestRejected(413, "PayloadTooLarge", f"body exceeds SageMaker's {limit} bytes")


# --------------------------------------------------------------------------- process entry points


def default_model_path() -> Path:
    """``ICHSEG_MODEL``, else the SageMaker model directory's model, else the repository's model."""
    if os.environ.get("ICHSEG_MODEL"):
        return Path(os.environ["ICHSEG_MODEL"])
    in_container = SAGEMAKER_MODEL_DIR / DEFAULT_MODEL_FILE
    if in_container.exists():
        return in_container
    from ichseg.paths import SHIPPED_MODEL

    return SHIPPED_MODEL


def _providers_from_env() -> tuple[str, ...]:
    named = [p.strip() for p in os.environ.get("ICHSEG_PROVIDERS", "").split(",") if p.strip()]
    return tuple(named) if named else DEFAULT_PROVIDERS


def app_from_env() -> Flask:
    """The WSGI app configured by environment variables (``gunicorn 'serving.server:app_from_env()'``).

    ``ICHSEG_MODEL`` (model file), ``ICHSEG_PROVIDERS`` (comma-separated ONNX Runtime providers),
    ``ICHSEG_ORT_THREADS`` and ``ICHSEG_ORT_SPINNING`` (intra-op threads, and ``0`` to stop idle ones
    spinning; read by OnnxSegmenter), ``ICHSEG_BATCH_SIZE``,
    ``ICHSEG_REQUIRE_GPU`` (``1`` in the GPU image: never report healthy on the CPU).
    """
    configure_logging()
    return create_app(
        default_model_path(),
        providers=_providers_from_env(),
        batch_size=int(os.environ.get("ICHSEG_BATCH_SIZE", "8")),
        require_gpu=os.environ.get("ICHSEG_REQUIRE_GPU", "").lower() in {"1", "true", "yes"},
    )


def gunicorn_options(host: str, port: int, workers: int, threads: int = 4) -> dict[str, Any]:
    """Gunicorn settings for the endpoint (threads keep /ping responsive during inference)."""
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        # The worker heartbeat, not a request limit; the model loads in a thread, so this stays short.
        "timeout": 120,
        "graceful_timeout": 30,
        # Longer than the SageMaker front end's idle connections, so it never hits a closed socket.
        "keepalive": 75,
        "accesslog": None,
        # gunicorn >= 25.1 opens a control socket at one fixed per-user path by default: several
        # endpoints on one machine (tests, the local stack) would collide there; nothing uses it.
        "control_socket_disable": True,
        "logconfig_dict": {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"json": {"()": JsonFormatter}},
            "handlers": {
                "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
            },
            # gunicorn merges this over its defaults: every logger it names must use our handler
            "root": {"level": "INFO", "handlers": ["stderr"]},
            "loggers": {
                "gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
                # access lines would log every health check (SageMaker pings every few seconds);
                # the app logs each invocation itself, with its shape and timing
                "gunicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
            },
        },
    }


def write_port_file(path: Path, port: int) -> None:
    """Write ``port`` (decimal, one line) to ``path`` atomically: a reader never sees half of it."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(f"{port}\n")
    os.replace(partial, path)


def serve(model_path: Path, host: str, port: int, workers: int, port_file: Path | None = None) -> int:
    """Run gunicorn in the foreground until SIGTERM/SIGINT; returns its exit status.

    ``port_file``: once the listening socket is bound, the bound port is written there (with
    ``port`` 0 the only way for a parent process to learn it without parsing the log). It is not
    written when the bind fails, so its absence after an exit means "never listened".
    """
    from gunicorn.app.base import BaseApplication

    options = gunicorn_options(host, port, workers)
    environment = {"ICHSEG_MODEL": str(model_path)}

    def announce(server: Any) -> None:
        urls = ", ".join(str(listener) for listener in server.LISTENERS)
        if port_file is not None:
            write_port_file(port_file, int(server.LISTENERS[0].getsockname()[1]))
        print(
            f"ichseg endpoint listening on {urls} (model {model_path}, {workers} worker(s));"
            " GET /ping, POST /invocations",
            flush=True,
        )

    class EndpointApplication(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)
            self.cfg.set("when_ready", announce)

        def load(self) -> Callable[..., Any]:
            # Each worker builds its own app after the fork: ONNX Runtime sessions and threads do
            # not survive fork.
            os.environ.update(environment)
            return app_from_env()

    try:
        EndpointApplication().run()
    except SystemExit as stop:  # the arbiter exits the process on SIGTERM; report its status instead
        return int(stop.code or 0)
    return 0


PORT_FILE_ENV = "ICHSEG_ENDPOINT_PORT_FILE"
"""If set, ``ichseg endpoint`` writes the port it bound to this file (see :func:`serve`): how the
local stack starts it on ``--port 0`` and learns its address."""


def endpoint_command(args: argparse.Namespace) -> int:
    """``ichseg endpoint``: serve ``--model`` on ``--host``/``--port`` with ``--workers`` processes
    (and the bound port written to ``$ICHSEG_ENDPOINT_PORT_FILE`` when that is set)."""
    configure_logging()
    model = Path(args.model)
    if not model.is_file():
        print(
            f"error: model not found: {model} (export one with model_export.export, or pass --model)", file=sys.stderr
        )
        return 2
    port_file = os.environ.get(PORT_FILE_ENV)
    return serve(model, args.host, int(args.port), int(args.workers), Path(port_file) if port_file else None)
