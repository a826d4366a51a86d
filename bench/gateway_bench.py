"""The DICOM gateway's receive rate and hand-off time, against dcmtk's storescp on the same study.

    .venv/bin/python bench/gateway_bench.py [--slices 300] [--runs 3]

A head CT of ``--slices`` 512x512 slices (16-bit, ~0.5 MB each) is sent with dcmtk's ``storescu``
over one association, first to ``storescp`` (dcmtk's plain storage SCP writing files: the floor a
PACS node costs on this machine), then to the gateway (each instance fsynced into its spool before
the C-STORE response, then zipped and uploaded to S3 in moto once the study is idle). Printed per
run: seconds and MB/s for each receiver, the gateway/storescp ratio, the seconds from the last
instance acknowledged to the ``ingest/`` object in S3 beyond the idle time, and the gateway
process's peak memory growth.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

IDLE_SECONDS = 1.0


class NoMetrics:
    """The gateway's metrics go nowhere here (its EMF sink would print to the benchmark's output)."""

    def add_metric(self, name: str, unit: object, value: float) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_study(folder: Path, slices: int) -> int:
    """A CT series of ``slices`` 512x512 instances under ``folder``; returns the bytes written."""
    from tests.scan_fixtures import dicom_bytes, dicom_series

    series = dicom_series(count=slices, rows=512, cols=512, step_mm=5.0)
    rng = np.random.default_rng(0)
    total = 0
    folder.mkdir(parents=True)
    for index, ds in enumerate(series):
        ds.PixelData = rng.integers(0, 2000, (512, 512), dtype=np.uint16).tobytes()  # incompressible
        data = dicom_bytes(ds)
        (folder / f"IM{index:04d}.dcm").write_bytes(data)
        total += len(data)
    return total


def send(folder: Path, port: int, called: str) -> float:
    """storescu every file in ``folder`` to 127.0.0.1:port over one association; seconds taken."""
    started = time.perf_counter()
    subprocess.run(
        ["storescu", "-aet", "BENCHPACS", "-aec", called, "+sd", "127.0.0.1", str(port), str(folder)],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def storescp_seconds(folder: Path, workdir: Path) -> float:
    received = workdir / "storescp"
    received.mkdir()
    port = _free_port()
    server = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(received), str(port)])
    try:
        time.sleep(0.5)
        return send(folder, port, "STORESCP")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(received, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import boto3

    from gateway.service import GatewayService
    from gateway.settings import GatewaySettings
    from infrastructure.moto_server import MotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = MotoServer().start()
    os.environ.update(
        AWS_ENDPOINT_URL=moto.url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )  # fmt: skip
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bench")
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    try:
        study = workdir / "study"
        megabytes = write_study(study, args.slices) / 2**20
        print(f"study: {args.slices} slices of 512x512, {megabytes:.0f} MB, sent by storescu over one association")
        baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows = []
        for run in range(1, args.runs + 1):
            plain = storescp_seconds(study, workdir)
            settings = GatewaySettings(
                spool_dir=workdir / f"spool-{run}", host="127.0.0.1", port=0, idle_seconds=IDLE_SECONDS, bucket="bench"
            )
            with GatewayService(settings, metrics=NoMetrics()) as gateway:
                received = send(study, gateway.address[1], settings.ae_title)
                acknowledged = time.perf_counter()
                while not s3.list_objects_v2(Bucket="bench", Prefix="ingest/BENCHPACS/").get("KeyCount"):
                    time.sleep(0.05)
                handoff = time.perf_counter() - acknowledged - IDLE_SECONDS
            for item in s3.list_objects_v2(Bucket="bench").get("Contents", []):
                s3.delete_object(Bucket="bench", Key=item["Key"])
            rows.append((plain, received, handoff))
            print(
                f"run {run}: storescp {plain:.2f} s ({megabytes / plain:.0f} MB/s), gateway {received:.2f} s "
                f"({megabytes / received:.0f} MB/s), ratio {received / plain:.2f}; zip + upload after the idle "
                f"time {handoff:.2f} s"
            )
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_rss) / 1024
        plain_m, received_m, handoff_m = (statistics.median(column) for column in zip(*rows, strict=True))
        print(
            f"median: storescp {plain_m:.2f} s, gateway {received_m:.2f} s ({args.slices / received_m:.0f} "
            f"instances/s), ratio {received_m / plain_m:.2f}; hand-off {handoff_m:.2f} s beyond the "
            f"{IDLE_SECONDS:g} s idle time; peak memory growth of this process {peak:.0f} MiB"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        moto.stop()


if __name__ == "__main__":
    main()
