"""The running gateway: the C-STORE SCP, the study-completion/upload thread and the delivery thread.

``GatewayService(settings).start()`` returns at once with all three running (``ichseg gateway`` and
the local stack use it the same way); ``stop()`` (or leaving its ``with`` block) ends them. Every
piece takes its AWS clients from one boto3 session, so ``AWS_ENDPOINT_URL`` (moto, locally) and the
task role (ECS) apply as for any boto3 program.
"""

from __future__ import annotations

import logging
import os
import threading
from types import TracebackType
from typing import Any

from gateway.delivery import Deliverer
from gateway.receiver import Receiver
from gateway.settings import GatewaySettings, SettingsError
from gateway.spool import Spool
from gateway.status import StatusServer
from gateway.uploader import Uploader
from ichseg.pipeline.context import MetricsSink
from ichseg.pipeline.jobs import JobStore

log = logging.getLogger("gateway")


class EmfMetrics:
    """Metrics as CloudWatch embedded metric format on stdout (Powertools), flushed at once: a
    long-running service has no invocation end to flush at. Namespace: ``POWERTOOLS_METRICS_NAMESPACE``,
    ``ichseg`` by default (the pipeline's)."""

    def __init__(self) -> None:
        from aws_lambda_powertools import Metrics

        self._metrics = Metrics(
            namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "ichseg"),
            service=os.environ.get("POWERTOOLS_SERVICE_NAME", "gateway"),
        )
        self._lock = threading.Lock()

    def add_metric(self, name: str, unit: Any, value: float) -> None:
        with self._lock:
            self._metrics.add_metric(name=name, unit=unit, value=value)
            self._metrics.flush_metrics()


class GatewayService:
    """The DICOM gateway in this process."""

    def __init__(self, settings: GatewaySettings, metrics: MetricsSink | None = None, session: Any = None) -> None:
        if not settings.bucket:
            raise SettingsError("missing configuration: ICHSEG_BUCKET (where complete studies are uploaded)")
        if settings.delivery_queue_url and not settings.table:
            raise SettingsError("missing configuration: ICHSEG_TABLE (delivery reads the jobs)")
        self.settings = settings
        self.metrics: MetricsSink = metrics if metrics is not None else EmfMetrics()
        self._session = session
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._address: tuple[str, int] | None = None
        self.spool: Spool | None = None
        self.receiver: Receiver | None = None
        self.uploader: Uploader | None = None
        self.deliverer: Deliverer | None = None
        self.status: StatusServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the SCP listens on (the actual port when ``port=0``)."""
        if self._address is None:
            raise RuntimeError("the gateway is not started")
        return self._address

    def _client(self, service: str) -> Any:
        import boto3

        session = self._session or boto3.session.Session()
        return session.client(service)

    def start(self) -> GatewayService:
        """Resume the spool, listen, start the upload and delivery threads; returns at once."""
        settings = self.settings
        self.spool = Spool(settings.spool_dir, settings.max_spool_bytes)
        s3 = self._client("s3")
        self.uploader = Uploader(
            self.spool,
            s3,
            settings.bucket,
            settings.idle_seconds,
            settings.sent_retention_seconds,
            self.metrics,
            settings.wants_overlay,
        )
        self._stop.clear()
        interval = min(1.0, settings.idle_seconds / 4)
        self._spawn("gateway-upload", self.uploader.run, self._stop, interval)
        try:
            store = JobStore(self._client("dynamodb"), settings.table) if settings.table else None
            if settings.delivery_queue_url and store is not None:
                self.deliverer = Deliverer(settings, store, s3, self._client("sqs"), self.metrics)
                self._spawn("gateway-delivery", self.deliverer.run, self._stop)
            self.receiver = Receiver(settings, self.spool, self.metrics)
            self._address = self.receiver.start()
            if settings.status_port is not None:
                self.status = StatusServer(settings, self.spool, store, self._address[1]).start()
        except BaseException:
            self.stop()
            raise
        log.info(
            "DICOM gateway %s listening on %s:%d%s; delivery %s",
            settings.ae_title,
            *self._address,
            " (TLS)" if settings.tls else "",
            "on" if settings.delivery_queue_url else "off",
        )
        return self

    def _spawn(self, name: str, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Stop listening and end the threads (a long poll in progress ends within its wait)."""
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None
        if self.status is not None:
            self.status.stop()
            self.status = None
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.settings.poll_seconds + 10)
        self._threads = []

    def __enter__(self) -> GatewayService:
        return self.start() if self.receiver is None else self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
