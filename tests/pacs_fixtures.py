"""A real PACS for the hospital-integration tests: Debian's Orthanc, started with a generated config.

Orthanc plays the hospital's side of the DICOM network exactly as a site runs it: it holds the
study, sends it to ichseg's gateway with a C-STORE (``POST /modalities/{id}/store``, what a PACS
routing rule or a technologist's "send to" does) and receives the SEG and SR that come back, which
the tests then fetch over its REST API. ``make test`` installs it (the Makefile's ``dicom-tools``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.patient_identifiers import PATIENT_IDENTIFIERS

ORTHANC = "/usr/sbin/Orthanc"


class PacsError(RuntimeError):
    """Orthanc did not start or answered its REST API with an error."""


class PortInUse(PacsError):
    """Orthanc exited at start because its HTTP or DICOM port is taken (its errors 2003 and 2004)."""


@dataclass
class OrthancPacs:
    """One Orthanc process: its AE title, DICOM port and REST address; the modalities it knows."""

    workdir: Path
    ae_title: str
    dicom_port: int
    http_port: int
    modalities: dict[str, tuple[str, str, int]]
    """Orthanc's name for a peer -> (AE title, host, port)."""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def address(self) -> str:
        """``AE@host:port``, the form ``ichseg stack --pacs`` and the gateway's destinations take."""
        return f"{self.ae_title}@127.0.0.1:{self.dicom_port}"

    def write_config(self) -> Path:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "ichseg-test-pacs",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {name: list(peer) for name, peer in self.modalities.items()},
            "StableAge": 1,
            "Plugins": [],
            "HttpTimeout": 30,
            "DicomScuTimeout": 30,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self, timeout: float = 30.0) -> OrthancPacs:
        """Start Orthanc and wait until its REST API answers."""
        if shutil.which(ORTHANC) is None and not Path(ORTHANC).exists():
            raise PacsError(f"{ORTHANC} is missing: run `make dicom-tools` (apt-get install orthanc)")
        config = self.write_config()
        with (self.workdir / "orthanc.log").open("ab") as log:
            logged_before = log.tell()  # this start's lines come after
            self.process = subprocess.Popen([ORTHANC, str(config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                this_start = (self.workdir / "orthanc.log").read_bytes()[logged_before:].decode(errors="replace")
                # Orthanc says "The TCP port of the HTTP|DICOM server is privileged or already in use"
                error = PortInUse if "already in use" in this_start else PacsError
                raise error(f"Orthanc exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if requests.get(f"{self.url}/system", timeout=2).ok:
                    return self
            except (requests.ConnectionError, requests.Timeout):  # not up yet, or another listener on the port
                pass
            time.sleep(0.2)
        raise PacsError(f"Orthanc did not answer within {timeout:.0f} s: {self.log_tail()}")

    def stop(self, crash: bool = False) -> None:
        """Stop Orthanc: gracefully, or at once (``crash``: a killed process accepts nothing more)."""
        if self.process is not None and self.process.poll() is None:
            if crash:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    @contextmanager
    def down(self) -> Iterator[None]:
        """Orthanc down for the block (a PACS outage), then started again with the same storage.

        Killed, not terminated: a graceful stop keeps its DICOM port open a few seconds, long enough
        for a fast job's results to be delivered into the "outage"."""
        self.stop(crash=True)
        try:
            yield
        finally:
            self._restart_on_same_ports()

    def _restart_on_same_ports(self, bind_timeout: float = 30.0) -> None:
        """Start again on the same ports (peers are configured with them): if another process took
        one while Orthanc was down, retry until ``bind_timeout``."""
        deadline = time.monotonic() + bind_timeout
        while True:
            try:
                self.start()
                return
            except PortInUse:
                self.stop()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def log_tail(self, lines: int = 30) -> str:
        path = self.workdir / "orthanc.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # --------------------------------------------------------------- REST

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = requests.request(method, f"{self.url}{path}", timeout=120, **kwargs)
        if not response.ok:
            raise PacsError(f"Orthanc {method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.headers.get("content-type", "").startswith("application/json") else response

    def upload(self, dicom: bytes) -> dict[str, Any]:
        """Store one instance (what a modality sending to the PACS does); Orthanc's ids back."""
        result: dict[str, Any] = self._call("POST", "/instances", data=dicom)
        return result

    def send(self, modality: str, resource_id: str, synchronous: bool = True) -> dict[str, Any]:
        """C-STORE a study or series (Orthanc's id) to a known modality (a routing rule, or "send
        to" in a PACS viewer)."""
        body = {"Resources": [resource_id], "Synchronous": synchronous}
        result: dict[str, Any] = self._call("POST", f"/modalities/{modality}/store", json=body)
        return result

    def add_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        """Tell Orthanc about a DICOM peer (what a PACS admin does for a new AI node); kept in its
        configuration too, so that the peer is still known after a restart (:meth:`down`)."""
        self._call("PUT", f"/modalities/{name}", json={"AET": ae_title, "Host": host, "Port": port})
        self.modalities[name] = (ae_title, host, port)

    def echo(self, modality: str) -> bool:
        """C-ECHO a known modality from Orthanc."""
        response = requests.post(f"{self.url}/modalities/{modality}/echo", json={}, timeout=30)
        return response.ok

    def series_of_modality(self, modality: str) -> list[dict[str, Any]]:
        """Every series Orthanc holds whose Modality is ``modality`` (SEG, SR, CT...)."""
        found = []
        for series_id in self._call("GET", "/series"):
            series = self._call("GET", f"/series/{series_id}")
            if series.get("MainDicomTags", {}).get("Modality") == modality:
                found.append(series)
        return found

    def instance_file(self, instance_id: str) -> bytes:
        return bytes(self._call("GET", f"/instances/{instance_id}/file").content)

    def find_instances(self, sop_instance_uid: str) -> list[str]:
        """Orthanc's ids of the instances with this SOP Instance UID."""
        query = {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}}
        found: list[str] = self._call("POST", "/tools/find", json=query)
        return found

    def preview(self, instance_id: str) -> bytes:
        """Orthanc's own rendering of an instance (PNG), as its web interface shows it."""
        return bytes(self._call("GET", f"/instances/{instance_id}/preview").content)

    def statistics(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/statistics")
        return result


def identified_head_ct(
    count: int = 8,
    bleed_from: int | None = 4,
    rows: int = 64,
    cols: int = 80,
    step_mm: float = 5.0,
    modality: str = "CT",
) -> list[Any]:
    """A head CT series in Hounsfield units that the tests' tiny model reads like
    ``tests.stack_fixtures.head_frames`` (a dim head inside a skull, a bright bleed from ``bleed_from`` on),
    carrying :data:`tests.patient_identifiers.PATIENT_IDENTIFIERS` in every field."""
    import numpy as np
    from pydicom.uid import MRImageStorage

    from tests.scan_fixtures import dicom_series

    series = dicom_series(
        count=count, rows=rows, cols=cols, step_mm=step_mm, pixel_spacing=(0.5, 0.5), modality=modality
    )
    yy, xx = np.mgrid[:rows, :cols]

    def ellipse(scale: float) -> np.ndarray:
        return ((yy - rows / 2) / (scale * rows)) ** 2 + ((xx - cols / 2) / (scale * cols)) ** 2 <= 1

    head, skull = ellipse(0.40), ellipse(0.44) & ~ellipse(0.40)
    blob = ((yy - rows * 0.45) ** 2 + (xx - cols * 0.4) ** 2) <= (0.2 * rows) ** 2
    for index, ds in enumerate(series):
        # The CT-ICH brain window (level 40, width 120) maps -20 HU to 0: grey 15 is -13 HU, grey 230 is 88 HU.
        # The skull (1,000 HU) is what makes it head CT to ichseg; the model reads only inside it.
        hu = np.full((rows, cols), -1000.0, np.float32)
        hu[skull] = 1000.0
        hu[head] = -13.0
        if bleed_from is not None and index >= bleed_from:
            hu[blob] = 88.0
        ds.PixelData = np.rint(hu + 1024).astype(np.uint16).tobytes()
        for keyword, value in PATIENT_IDENTIFIERS.items():
            setattr(ds, keyword, value)
        ds.ConvolutionKernel = "STANDARD"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Manufacturer = "GE MEDICAL SYSTEMS"
        ds.StudyDate, ds.StudyTime = "20261201", "031500"
        if modality == "MR":
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    return series
