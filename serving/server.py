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
intra-op threads come from ``ICHSEG_ORT_THREADS``, and batching happens inside
:class:`ichseg.inference.OnnxSegmenter`. Logs are JSON lines.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from ichseg.endpoint_protocol import (
    CONTENT_TYPE,
    CUSTOM_ATTRIBUTES_HEADER,
    MAX_SLICES_PER_REQUEST,
    SAGEMAKER_MAX_PAYLOAD_BYTES,
    ProtocolError,
    RequestAttributes,
    ResponseAttributes,
    decode_slices,
    encode_slices,
    quantize_probabilities,
)
from ichseg.inference import DEFAULT_PROVIDERS, OnnxSegmenter

log = logging.getLogger("ichseg.endpoint")

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
"""Where SageMaker extracts ``model.tar.gz`` inside the container."""
DEFAULT_MODEL_FILE = "ichseg-unet.onnx"
MIN_SIDE = 16
MAX_SIDE = 4096


# --------------------------------------------------------------------------------------- logging


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what CloudWatch Logs Insights can query field by field."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str | None = None) -> None:
    """Send every log record to stderr as JSON (idempotent; ``ICHSEG_LOG_LEVEL`` sets the level)."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level or os.environ.get("ICHSEG_LOG_LEVEL", "INFO"))


def _event(level: int, message: str, **fields: Any) -> None:
    log.log(level, message, extra={"fields": fields})


# ------------------------------------------------------------------------------ request checking


class RequestRejected(Exception):
    """A request the server refuses, with the HTTP status and a message for the caller."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ArrayHeader:
    """What a ``.npy`` payload claims to hold, read before any array is built."""

    shape: tuple[int, ...]
    dtype: np.dtype
    data_bytes: int
    """Bytes after the header actually present in the payload."""


def read_npy_header(payload: bytes) -> ArrayHeader:
    """Parse the ``.npy`` header only; :class:`RequestRejected` (400) if it is not one."""
    stream = io.BytesIO(payload)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise RequestRejected(400, "ValidationError", f"body is not a .npy array ({exc})") from exc
    return ArrayHeader(tuple(int(d) for d in shape), np.dtype(dtype), len(payload) - stream.tell())


def check_array_header(header: ArrayHeader) -> None:
    """Reject wrong dtypes, wrong ranks, absurd shapes and truncated data before decoding."""
    if header.dtype != np.uint8:
        raise RequestRejected(
            400, "ValidationError", f"expected uint8 windowed slices, got dtype {header.dtype} (window and scale first)"
        )
    if len(header.shape) != 3:
        raise RequestRejected(400, "ValidationError", f"expected a (N, H, W) array, got shape {header.shape}")
    count, height, width = header.shape
    if count == 0:
        raise RequestRejected(400, "ValidationError", "the array holds no slices (N = 0)")
    if count > MAX_SLICES_PER_REQUEST:  # the contract's cap: what one answer's attributes can describe
        raise RequestRejected(
            413, "PayloadTooLarge", f"{count} slices in one request; send at most {MAX_SLICES_PER_REQUEST}"
        )
    if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
        raise RequestRejected(
            400, "ValidationError", f"slice size {height}x{width} is outside {MIN_SIDE}..{MAX_SIDE} pixels per side"
        )
    expected = count * height * width
    if header.data_bytes != expected:
        raise RequestRejected(
            400, "ValidationError", f"the header promises {expected} bytes of pixels but {header.data_bytes} follow"
        )


def parse_request_body(payload: bytes) -> np.ndarray:
    """Validated ``(N, H, W)`` uint8 slices from a request body, or :class:`RequestRejected`."""
    if not payload:
        raise RequestRejected(400, "ValidationError", "empty body: send numpy.save bytes of a (N, H, W) uint8 array")
    if len(payload) > SAGEMAKER_MAX_PAYLOAD_BYTES:
        raise RequestRejected(413, "PayloadTooLarge", f"body exceeds {SAGEMAKER_MAX_PAYLOAD_BYTES} bytes")
    check_array_header(read_npy_header(payload))
    try:
        return decode_slices(payload)
    except ProtocolError as exc:
        raise RequestRejected(400, "ValidationError", str(exc)) from exc


# ------------------------------------------------------------------------------------ the model


class InferenceService:
    """The loaded model, its readiness, and one inference at a time per process.

    Inference is serialised with a semaphore: one GPU (or the CPU's cores) is best used by one
    batched run at a time, while ``/ping`` keeps answering from other threads (SageMaker's
    health check times out after 2 s, far shorter than a large CPU request).
    """

    def __init__(
        self,
        model_path: str | Path,
        providers: tuple[str, ...] = DEFAULT_PROVIDERS,
        intra_op_threads: int | None = None,
        batch_size: int = 8,
        max_concurrent: int = 1,
        segmenter_factory: Callable[[], OnnxSegmenter] | None = None,
        require_gpu: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        self.require_gpu = require_gpu
        self._factory = segmenter_factory or (
            lambda: OnnxSegmenter(
                self.model_path, providers=providers, intra_op_threads=intra_op_threads, batch_size=batch_size
            )
        )
        self.segmenter: OnnxSegmenter | None = None
        self.error: str | None = None
        self._ready = threading.Event()
        self._slots = threading.BoundedSemaphore(max_concurrent)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def load(self) -> None:
        """Build the session and run one warm-up inference; records the error instead of raising."""
        started = time.perf_counter()
        try:
            segmenter = self._factory()
            if self.require_gpu and segmenter.provider == "CPUExecutionProvider":
                # A GPU instance serving from its CPU is 50x slower and looks healthy: refuse instead.
                raise RuntimeError(
                    "a GPU is required (ICHSEG_REQUIRE_GPU) but ONNX Runtime fell back to the CPU: "
                    "check the NVIDIA driver (CUDA 13 needs >= 580) and the CUDA/cuDNN libraries"
                )
            size = segmenter.metadata.input.size
            warm = segmenter.predict(np.zeros((1, size, size), np.uint8))
            if warm.probabilities.shape != (1, size, size):
                raise RuntimeError(f"warm-up returned {warm.probabilities.shape}, expected (1, {size}, {size})")
        except Exception as exc:  # any failure keeps /ping at 503 and is reported there and in the log
            self.error = f"{type(exc).__name__}: {exc}"
            _event(logging.ERROR, "model failed to load", model=str(self.model_path), error=self.error)
            return
        self.segmenter = segmenter
        self._ready.set()
        _event(
            logging.INFO,
            "model ready",
            model=str(self.model_path),
            name=segmenter.metadata.name,
            version=segmenter.metadata.version,
            provider=segmenter.provider,
            providers=list(segmenter.session.get_providers()),
            input_size=segmenter.metadata.input.size,
            batch_size=segmenter.batch_size,
            load_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def load_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="ichseg-model-load", daemon=True)
        thread.start()
        return thread

    def status(self) -> dict[str, Any]:
        if self.segmenter is not None:
            meta = self.segmenter.metadata
            return {"status": "ready", "model": meta.name, "version": meta.version, "provider": self.segmenter.provider}
        if self.error is not None:
            return {"status": "failed", "error": self.error}
        return {"status": "loading"}

    def infer(self, slices: np.ndarray, request: RequestAttributes | None = None) -> tuple[bytes, str]:
        """``(N, H, W)`` uint8 slices -> (``.npy`` probability x 255 bytes, CustomAttributes text), for
        the slices that are not the request's context (those only serve as neighbours)."""
        segmenter = self.segmenter
        if segmenter is None:
            raise RequestRejected(503, "ModelNotReady", f"the model is not ready ({self.status()['status']})")
        request = request or RequestAttributes()
        try:
            request.answered(len(slices))
        except ProtocolError as exc:
            raise RequestRejected(400, "ValidationError", str(exc)) from exc
        with self._slots:
            prediction = segmenter.predict(slices, (request.context_before, request.context_after))
        scaled = quantize_probabilities(prediction.probabilities)
        meta = segmenter.metadata
        attributes = ResponseAttributes(
            model=meta.name,
            version=meta.version,
            slice_threshold=meta.slice_threshold,
            pixel_threshold=meta.pixel_threshold,
            slice_probabilities=tuple(float(p) for p in prediction.slice_probabilities),
            subtype_names=meta.subtypes,
            scan_threshold=meta.scan_threshold,
            subtype_probabilities=tuple(tuple(float(q) for q in row) for row in prediction.subtype_probabilities),
        )
        return encode_slices(scaled), attributes.encode()


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
            body, attributes = service.infer(slices, _request_attributes())
        except RequestRejected as rejected:
            _event(
                logging.WARNING,
                "request rejected",
                status=rejected.status,
                reason=rejected.message,
                path=request.path,
                bytes=request.content_length,
            )
            return _error(rejected.status, rejected.code, rejected.message)
        count, height, width = slices.shape
        _event(
            logging.INFO,
            "invocation",
            path=request.path,
            slices=count,
            height=height,
            width=width,
            bytes=len(body),
            ms=round((time.perf_counter() - started) * 1000, 1),
            provider=service.segmenter.provider if service.segmenter else None,
        )
        return Response(body, status=200, mimetype=CONTENT_TYPE, headers={CUSTOM_ATTRIBUTES_HEADER: attributes})

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
    ``ICHSEG_ORT_THREADS`` (intra-op threads, read by OnnxSegmenter), ``ICHSEG_BATCH_SIZE``,
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
