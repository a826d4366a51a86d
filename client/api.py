"""A client of the ichseg HTTP API: what the mobile app does, as a library.

Every failure a person can act on is a :class:`ClientError` with a message that says what to do:
a refused token, an unreachable API, a job that FAILED (with its reason), an unknown job.
"""

from __future__ import annotations

import io
import mimetypes
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

TERMINAL = ("DONE", "FAILED")
CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".mov": "video/quicktime",
    ".avi": "video/x-msvideo",
    ".zip": "application/zip",
    ".dcm": "application/dicom",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gz": "application/gzip",
    ".nii": "application/octet-stream",
}
"""Content-Type by file extension (the API accepts exactly these; the format is sniffed anyway).
The client speaks only HTTP and imports nothing of ichseg, so this is a copy of the upload rows of
``ichseg.media_types``; ``tests/pipeline/test_contracts.py`` keeps the two equal."""


class ClientError(Exception):
    """A failure the caller can act on; ``str()`` says what happened and what to do."""


class JobFailed(ClientError):
    """The job ended FAILED; the message carries its code and reason."""


@dataclass(frozen=True)
class Progress:
    """Where a job is: slices segmented of the total, and its state."""

    state: str
    done: int
    total: int


class ScansClient:
    """``/v1/scans`` for one caller (a Firebase ID token) at one API base URL."""

    def __init__(self, api: str, token: str, timeout: float = 30.0, session: requests.Session | None = None) -> None:
        if not token:
            raise ClientError("no token: set ICHSEG_TOKEN or pass --token-file (a Firebase ID token)")
        self.api = api.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    # ------------------------------------------------------------------ the API's calls

    def submit(self, path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
        """Create a job for ``path`` and upload it with the presigned POST; the job id."""
        path = Path(path)
        if not path.is_file():
            raise ClientError(f"{path}: no such file")
        content_type = CONTENT_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
        if content_type is None:
            raise ClientError(f"{path.name}: unknown file type; ichseg reads {', '.join(sorted(CONTENT_TYPES))}")
        size = path.stat().st_size
        ticket = self._call("POST", "/v1/scans", json={"content_type": content_type, "size_bytes": size})
        if ticket.get("multipart"):  # a large scan: part by part, resumable
            self._send_parts(str(ticket["job_id"]), path, ticket["multipart"], on_bytes)
            return str(ticket["job_id"])
        upload = ticket["upload"]
        body, boundary = _multipart(upload["fields"], upload["file_field"], path, content_type)
        stream = _CountingReader(body, on_bytes)
        try:
            posted = requests.post(
                upload["url"],
                data=stream,
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(len(body))},
                timeout=max(self.timeout, 600),
            )
        except requests.ConnectionError as exc:
            raise ClientError(f"cannot reach the upload URL ({exc.__class__.__name__}); check the network") from exc
        if posted.status_code not in (200, 201, 204):
            raise ClientError(f"the upload was refused (HTTP {posted.status_code}): {posted.text[:300]}")
        return str(ticket["job_id"])

    def resume(self, job_id: str, path: Path, on_bytes: Callable[[int], None] | None = None) -> None:
        """Finish an interrupted multipart upload of ``path``: only the parts S3 does not have yet."""
        path = Path(path)
        if not path.is_file():
            raise ClientError(f"{path}: no such file")
        upload = self._call("GET", f"/v1/scans/{job_id}/upload")
        self._send_parts(job_id, path, upload, on_bytes)

    def _send_parts(
        self, job_id: str, path: Path, upload: dict[str, Any], on_bytes: Callable[[int], None] | None
    ) -> None:
        """PUT every part the upload still lists (each retried), then complete it."""
        missing = upload["parts"]
        if on_bytes is not None:  # what S3 already holds counts as sent
            on_bytes(path.stat().st_size - sum(int(part["size"]) for part in missing))
        with path.open("rb") as file:
            for part in missing:
                file.seek(int(part["offset"]))
                self._put_part(job_id, part, file.read(int(part["size"])))
                if on_bytes is not None:
                    on_bytes(int(part["size"]))
        self._call("POST", f"/v1/scans/{job_id}/upload/complete")

    def _put_part(self, job_id: str, part: dict[str, Any], data: bytes, attempts: int = 3) -> None:
        for attempt in range(1, attempts + 1):
            try:
                answer = requests.put(part["url"], data=data, timeout=max(self.timeout, 300))
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == attempts:
                    raise ClientError(
                        f"the upload stopped at part {part['part_number']} ({exc.__class__.__name__}); "
                        f"resume it with: ichseg scans resume {job_id} <file>"
                    ) from exc
                time.sleep(2**attempt)
                continue
            if answer.status_code == 200:
                return
            if attempt == attempts or answer.status_code < 500:
                raise ClientError(
                    f"part {part['part_number']} was refused (HTTP {answer.status_code}): {answer.text[:200]}; "
                    f"resume with: ichseg scans resume {job_id} <file>"
                )
            time.sleep(2**attempt)

    def status(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/scans/{job_id}``."""
        return self._call("GET", f"/v1/scans/{job_id}")

    def list(self, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """``GET /v1/scans``: the caller's jobs, newest first (``next`` continues the list)."""
        params = {k: v for k, v in (("limit", limit), ("next", cursor)) if v is not None}
        return self._call("GET", "/v1/scans", params=params)

    def delete(self, job_id: str) -> None:
        """``DELETE /v1/scans/{job_id}``: the job, its files and its Firebase copy."""
        self._call("DELETE", f"/v1/scans/{job_id}")

    def wait(
        self,
        job_id: str,
        on_progress: Callable[[Progress], None] | None = None,
        poll_seconds: float = 1.0,
        timeout: float = 1800.0,
    ) -> dict[str, Any]:
        """Poll until DONE; :class:`JobFailed` if it FAILED, :class:`ClientError` past ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            progress = status.get("progress") or {}
            if on_progress is not None:
                on_progress(Progress(status["state"], int(progress.get("done", 0)), int(progress.get("total", 0))))
            if status["state"] == "FAILED":
                error = status.get("error") or {}
                raise JobFailed(f"job {job_id} FAILED: {error.get('reason')} ({error.get('code')})")
            if status["state"] == "DONE":
                return status
            if time.monotonic() > deadline:
                raise ClientError(f"job {job_id} is still {status['state']} after {timeout:.0f} s")
            time.sleep(poll_seconds)

    def download(self, job_id: str, out: Path) -> dict[str, Path]:
        """Save a DONE job's results (video, report, contact sheet, DICOM SEG when there is one)."""
        status = self.status(job_id)
        if status["state"] != "DONE":
            raise ClientError(f"job {job_id} is {status['state']}: results exist once it is DONE")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        saved = {}
        for name, url in (status.get("results") or {}).items():
            if not isinstance(url, str) or not url.startswith("http"):
                continue  # e.g. a prefix, not a file
            response = requests.get(url, timeout=max(self.timeout, 120))
            if response.status_code != 200:
                raise ClientError(f"downloading {name} failed (HTTP {response.status_code}); the link may have expired")
            target = out / _file_name(name, url)
            target.write_bytes(response.content)
            saved[name] = target
        return saved

    def viewer_url(self, job_id: str) -> str:
        """The results viewer for a job (the API's own link when it gives one)."""
        viewer = self.status(job_id).get("viewer")
        if isinstance(viewer, str) and viewer:
            return viewer if viewer.startswith("http") else f"{self.api}{viewer}"
        return f"{self.api}/viewer/?job={job_id}"

    # ------------------------------------------------------------------ plumbing

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url = f"{self.api}{path}"
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as exc:
            raise ClientError(f"cannot reach the ichseg API at {self.api} (network down, or a wrong --api?)") from exc
        except requests.Timeout as exc:
            raise ClientError(f"the ichseg API at {self.api} did not answer in {self.timeout:.0f} s") from exc
        if response.status_code in (401, 403):
            raise ClientError(
                "the API refused the token (expired, or for another Firebase project): sign in again and set "
                "ICHSEG_TOKEN"
            )
        if response.status_code == 404:
            raise ClientError(f"not found: {path} (no such job, or not yours)")
        if response.status_code >= 400:
            raise ClientError(f"{method} {path} failed (HTTP {response.status_code}): {_message(response)}")
        if response.status_code == 204 or not response.content:
            return {}
        return dict(response.json())


def _message(response: requests.Response) -> str:
    """An RFC 9457 problem's detail and code (API Gateway's own refusals have only a message)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict) and "detail" in body:
        return f"{body['detail']} ({body.get('code')})"
    return str(body.get("message", response.text[:300])) if isinstance(body, dict) else response.text[:300]


def _file_name(name: str, url: str) -> str:
    suffix = Path(url.split("?", 1)[0]).suffix
    return f"{name}{suffix}" if suffix else name


def _multipart(fields: dict[str, str], file_field: str, path: Path, content_type: str) -> tuple[bytes, str]:
    """The presigned POST's form: its fields verbatim, then the file (S3 wants the file last)."""
    boundary = f"ichseg-{time.time_ns():x}"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{path.name}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return b"".join([*parts, head, path.read_bytes(), f"\r\n--{boundary}--\r\n".encode()]), boundary


class _CountingReader:
    """A request body that reports how much of it has been sent (the upload's progress bar).

    Not an ``io`` class on purpose: requests measures those with ``tell()``; this one has a length,
    so the POST carries Content-Length (S3 refuses a chunked POST)."""

    def __init__(self, body: bytes, on_bytes: Callable[[int], None] | None) -> None:
        self._body = io.BytesIO(body)
        self._on_bytes = on_bytes
        self.length = len(body)

    def read(self, size: int = -1) -> bytes:
        chunk = self._body.read(size)
        if chunk and self._on_bytes is not None:
            self._on_bytes(len(chunk))
        return chunk

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.read(64 * 1024), b"")
