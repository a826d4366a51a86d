"""The DICOM gateway's receive rate and hand-off time, against dcmtk's storescp on the same study.

    .venv/bin/python bench/gateway_bench.py [--slices 300] [--runs 3]

A head CT of ``--slices`` 512x512 slices (16-bit, ~0.5 MB each) is sent with dcmtk's ``storescu``
over one association, first to ``storescp`` (dcmtk's plain storage SCP writing files: the floor a
PACS node costs on this machine), then to the gateway (each instance fsynced into its spool before
the C-STORE response, then zipped and uploaded to S3 in moto once the study is idle; its own
process, ``python -m gateway``, as in its image). Printed per run: seconds and MB/s for each
receiver, the gateway/storescp ratio, the seconds from the last instance acknowledged to the
``ingest/`` object in S3 beyond the idle time; then the gateway process's peak memory.
"""

from __future__ import annotations

import argparse
import logging
import os
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
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
"""dcmtk leaves Nagle's algorithm on unless told; with it, each small PDU waits for a delayed ACK."""


def _peak_mib(pid: int) -> float:
    """A live process's peak resident memory (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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
        env=DCMTK_ENV,
    )
    return time.perf_counter() - started


def _serve(command: list[str], port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a storage SCP and wait until it answers C-ECHO."""
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        echo = subprocess.run(["echoscu", "-aec", command_ae(command), "127.0.0.1", str(port)], capture_output=True)
        if echo.returncode == 0:
            return server
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"{command[0]} did not answer C-ECHO")


def command_ae(command: list[str]) -> str:
    return command[command.index("-aet") + 1] if "-aet" in command else command[command.index("--ae-title") + 1]


def storescp_seconds(folder: Path, workdir: Path) -> float:
    received = workdir / "storescp"
    received.mkdir()
    port = _free_port()
    server = _serve(["storescp", "-aet", "STORESCP", "-od", str(received), str(port)], port, DCMTK_ENV)
    try:
        return send(folder, port, "STORESCP")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(received, ignore_errors=True)


def gateway_run(folder: Path, spool: Path, s3: object, env: dict[str, str]) -> tuple[float, float, float]:
    """One gateway process (``python -m gateway``): seconds to receive the study, seconds from the
    last acknowledgement to the ingest object beyond the idle time, and its peak memory (MiB)."""
    port = _free_port()
    command = [sys.executable, "-m", "gateway", "--ae-title", "ICHSEG", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--spool-dir", str(spool), "--idle-seconds", str(IDLE_SECONDS)]
    server = _serve(command, port, env)
    try:
        received = send(folder, port, "ICHSEG")
        acknowledged = time.perf_counter()
        while not s3.list_objects_v2(Bucket="bench", Prefix="ingest/BENCHPACS/").get("KeyCount"):  # type: ignore[attr-defined]
            time.sleep(0.05)
        handoff = time.perf_counter() - acknowledged - IDLE_SECONDS
        peak = _peak_mib(server.pid)
    finally:
        server.terminate()
        server.wait()
    for item in s3.list_objects_v2(Bucket="bench").get("Contents", []):  # type: ignore[attr-defined]
        s3.delete_object(Bucket="bench", Key=item["Key"])  # type: ignore[attr-defined]
    return received, handoff, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import boto3

    from infrastructure.moto_server import MotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = MotoServer().start()
    aws = {
        "AWS_ENDPOINT_URL": moto.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    os.environ.update(aws)
    gateway_env = {**os.environ, **aws, "ICHSEG_BUCKET": "bench", "PYTHONPATH": str(REPO)}
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bench")
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    try:
        study = workdir / "study"
        megabytes = write_study(study, args.slices) / 2**20
        print(f"study: {args.slices} slices of 512x512, {megabytes:.0f} MB, sent by storescu over one association")
        rows = []
        for run in range(1, args.runs + 1):
            plain = storescp_seconds(study, workdir)
            received, handoff, peak = gateway_run(study, workdir / f"spool-{run}", s3, gateway_env)
            rows.append((plain, received, handoff, peak))
            print(
                f"run {run}: storescp {plain:.2f} s ({megabytes / plain:.0f} MB/s), gateway {received:.2f} s "
                f"({megabytes / received:.0f} MB/s), ratio {received / plain:.2f}; zip + upload after the idle "
                f"time {handoff:.2f} s; gateway peak memory {peak:.0f} MiB"
            )
        plain_m, received_m, handoff_m, peak_m = (statistics.median(column) for column in zip(*rows, strict=True))
        print(
            f"median: storescp {plain_m:.2f} s, gateway {received_m:.2f} s ({args.slices / received_m:.0f} "
            f"instances/s), ratio {received_m / plain_m:.2f}; hand-off {handoff_m:.2f} s beyond the "
            f"{IDLE_SECONDS:g} s idle time; gateway process peak memory {peak_m:.0f} MiB"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        moto.stop()


if __name__ == "__main__":
    main()
