"""The gateway's status, for the hospital: what it received, uploaded and delivered; read-only.

A PACS administrator asks "did ichseg get the study, and did the results come back?" without an AWS
login. ``ICHSEG_GATEWAY_STATUS_PORT`` turns on a small HTTP server (stdlib, one thread per request)
that answers, from the hospital's network only:

- ``GET /status.json``: the gateway (AE title, DICOM port, delivery on or off) and its recent
  studies, newest first: the study as a hash of its UID (:func:`gateway.spool.uid_tag`, the handle
  the gateway's logs use too), the site, where it stands (receiving, uploading, uploaded), its
  series and instances, and, once uploaded, the job's state, error code, delivery state, attempts,
  the result objects the PACS stored and the last delivery failure's reason (destinations, result
  names and DICOM statuses only);
- ``GET /``: the same as an HTML table that refreshes itself;
- ``GET /healthz``: ``ok``, for a load balancer's health check.

No patient data: no names, identifiers, UIDs, dates of birth or findings; nothing is read from
the instances. Clients outside ``ICHSEG_GATEWAY_STATUS_ALLOWED_NETWORKS`` (default: the private
and loopback ranges) get 403; everything but GET gets 405. In AWS the internal load balancer and
its security group restrict it to ``GatewayAllowedCidr`` as well.
"""

from __future__ import annotations

import html
import ipaddress
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gateway.settings import GatewaySettings
from gateway.spool import CLAIMED, INCOMING, Spool, SpooledStudy, uid_tag
from ichseg.background_server import BackgroundServer
from ichseg.pipeline.jobs import JobStore

log = logging.getLogger("gateway.status")

RECENT_STUDIES = 50
"""Studies listed (newest first); each uploaded one costs a read of its job row."""
REFRESH_SECONDS = 10


class StudyStage(StrEnum):
    """Where a study stands at the gateway."""

    RECEIVING = "receiving"
    """Instances are arriving; it goes up once none came for the idle time."""
    UPLOADING = "uploading"
    UPLOADED = "uploaded"
    """S3 has it; the job's row says the rest."""


_STAGES = {INCOMING: StudyStage.RECEIVING, CLAIMED: StudyStage.UPLOADING}


@dataclass(frozen=True)
class StudyStatus:
    """One study on the status page: no patient data (see the module doc)."""

    study: str
    """A hash of the Study Instance UID (the gateway logs' handle for it)."""
    site: str
    stage: StudyStage
    series: int
    instances: int
    updated_at: str
    """ISO-8601 UTC of the study's last change at the gateway."""
    job_id: str | None = None
    job_state: str | None = None
    error_code: str | None = None
    delivery_state: str | None = None
    delivery_attempts: int = 0
    delivered: list[str] = field(default_factory=list)
    delivery_reason: str | None = None


def study_status(spooled: SpooledStudy, store: JobStore | None) -> StudyStatus:
    """A spooled study and, once uploaded, its job's row as the status page shows them."""
    status = StudyStatus(
        study=uid_tag(spooled.ref.study_uid),
        site=spooled.ref.site,
        stage=_STAGES.get(spooled.stage, StudyStage.UPLOADED),
        series=spooled.series,
        instances=spooled.instances,
        updated_at=datetime.fromtimestamp(spooled.updated_at, UTC).isoformat(timespec="seconds"),
    )
    job_id = (spooled.upload or {}).get("job_id")
    job = store.get(job_id) if store is not None and job_id else None
    if job is None:
        return replace(status, job_id=job_id)
    return replace(
        status,
        job_id=job.job_id,
        job_state=job.state.value,
        error_code=job.error_code.value if job.error_code else None,
        delivery_state=job.delivery_state.value if job.delivery_state else None,
        delivery_attempts=job.delivery_attempts,
        delivered=sorted(job.delivered_objects),
        delivery_reason=job.delivery_reason,
    )


def gateway_status(settings: GatewaySettings, spool: Spool, store: JobStore | None, port: int) -> dict[str, Any]:
    """The status document (``/status.json``)."""
    return {
        "gateway": {
            "ae_title": settings.ae_title,
            "dicom_port": port,
            "tls": settings.tls,
            "delivery": bool(settings.delivery_queue_url),
        },
        "studies": [asdict(study_status(s, store)) for s in spool.overview()[:RECENT_STUDIES]],
    }


_COLUMNS = (
    ("study", "Study (hash)"),
    ("site", "Site"),
    ("stage", "At the gateway"),
    ("instances", "Instances"),
    ("updated_at", "Last change (UTC)"),
    ("job_state", "Job"),
    ("error_code", "Error"),
    ("delivery_state", "Delivery"),
    ("delivery_attempts", "Attempts"),
    ("delivered", "Stored in the PACS"),
    ("delivery_reason", "Last delivery failure"),
)


def status_page(document: dict[str, Any]) -> str:
    """``/`` : the status document as an HTML table (every value escaped; no script, no style)."""

    def cell(value: Any) -> str:
        text = ", ".join(value) if isinstance(value, list) else ("" if value is None else str(value))
        return f"<td>{html.escape(text)}</td>"

    gateway = document["gateway"]
    rows = "\n".join(
        "<tr>" + "".join(cell(study[key]) for key, _ in _COLUMNS) + "</tr>" for study in document["studies"]
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>ichseg gateway {html.escape(gateway["ae_title"])}</title></head>
<body><h1>ichseg DICOM gateway {html.escape(gateway["ae_title"])}</h1>
<p>DICOM port {gateway["dicom_port"]}{" (TLS)" if gateway["tls"] else ""}; delivery to PACS
{"on" if gateway["delivery"] else "off"}. Recent studies, newest first; no patient data
(studies are shown by a hash of their UID). Research software, not for clinical use.</p>
<table>
<tr>{"".join(f"<th>{html.escape(title)}</th>" for _, title in _COLUMNS)}</tr>
{rows}
</table></body></html>
"""


class StatusServer:
    """The status page's HTTP server on ``settings.status_host``:``settings.status_port`` (0: any free
    port, :attr:`address` tells which), in a thread of its own."""

    def __init__(self, settings: GatewaySettings, spool: Spool, store: JobStore | None, dicom_port: int) -> None:
        self.settings = settings
        allowed = settings.status_allowed_networks

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                client = ipaddress.ip_address(self.client_address[0].split("%")[0])
                if not any(client in network for network in allowed):
                    self._send(HTTPStatus.FORBIDDEN, "text/plain", b"the gateway's status is for the hospital network")
                    return
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(HTTPStatus.OK, "text/plain", b"ok")
                elif path in ("/", "/status.json"):
                    try:
                        document = gateway_status(settings, spool, store, dicom_port)
                    except Exception:  # the jobs table unreachable: say so, never a stack trace
                        log.exception("status: the job rows could not be read")
                        self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"the jobs table cannot be read")
                        return
                    if path == "/":
                        self._send(HTTPStatus.OK, "text/html; charset=utf-8", status_page(document).encode())
                    else:
                        self._send(HTTPStatus.OK, "application/json", json.dumps(document).encode())
                else:
                    self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found: /, /status.json, /healthz")

            def _refuse(self) -> None:
                self._send(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"read-only: GET only", allow="GET")

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

            def _send(self, status: HTTPStatus, content_type: str, body: bytes, allow: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
                if allow:
                    self.send_header("Allow", allow)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("status: " + format, *args)

            server_version = "ichseg-gateway"
            sys_version = ""

        server = ThreadingHTTPServer((settings.status_host or settings.host, settings.status_port or 0), Handler)
        server.daemon_threads = True
        self._serving = BackgroundServer(server, "gateway-status")

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) it listens on."""
        return self._serving.address

    def start(self) -> StatusServer:
        """Serve in the background; returns at once."""
        self._serving.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port."""
        self._serving.stop()
