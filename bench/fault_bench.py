"""The pipeline and the DICOM gateway under load and faults: every accepted upload ends, each
result is written once; the gateway keeps its association slots, its memory and its studies.

    .venv/bin/python bench/fault_bench.py                 # 8 uploads, every fault below, then the gateway's
    .venv/bin/python bench/fault_bench.py --uploads 16    # more load
    .venv/bin/python bench/fault_bench.py --only gateway  # the gateway's faults alone (about a minute)

Runs the local stack (127.0.0.1 only) with every queue message delivered twice (the pumps send a
copy of each one they receive) and short visibility timeouts, uploads ``--uploads`` copies of the
committed sample through the API at once, as the app does, and meanwhile:

1. kills a segment function's worker process (Lambda crash; the stack starts a fresh one);
2. stops the inference server for a few seconds, then starts it again;
3. stops the Firebase Storage emulator for a few seconds (a Firebase outage), then starts it empty;
4. kills the assemble function's worker process.

It stops by itself (bounded uploads, a deadline on waiting) and prints the accounting: every
accepted upload DONE or FAILED with a reason, no job stuck, each result object written once (the
bucket is versioned, as in template.yaml: a rewrite is a second version), latency p50/p95 and
jobs per minute. Figures in bench/README.md.

The gateway's faults (issue 19) run ``python -m gateway`` as its own process against a bare moto
S3 on 127.0.0.1, with dcmtk's storescu/echoscu as the PACS:

5. health-check load: load balancer-like bare TCP connections (connect-and-close in a loop, and
   connections held open, more than the association slots) while real associations come in;
6. big instances: ``--big-mib`` CT instances sent at once; the gateway's peak memory (VmHWM);
7. kill mid-study: SIGKILL while a study arrives, a restart on the same spool, the study resent.

It prints associations accepted/refused, the memory peaks, and the study's jobs and instances.
"""

from __future__ import annotations

import argparse
import collections
import io
import logging
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.pipeline_bench import run_job  # noqa: E402 - after the path set-up, like the other benches

FAULT_SECONDS = 4.0


def inject_faults(stack: Any, log: list[str], started: float) -> None:
    """The fault schedule, while the uploads run."""

    def note(text: str) -> None:
        log.append(f"{time.perf_counter() - started:6.1f} s  {text}")

    time.sleep(2.0)
    pid = sorted(stack.functions["segment"].worker_pids())[0]
    os.kill(pid, signal.SIGKILL)
    note(f"killed a segment worker (pid {pid})")
    time.sleep(2.0)
    with stack.endpoint.down():
        note("inference server stopped")
        time.sleep(FAULT_SECONDS)
    note("inference server running again")
    with stack.storage.down():
        note("Firebase Storage emulator stopped")
        time.sleep(FAULT_SECONDS)
    note("Firebase Storage emulator running again (empty)")
    (pid,) = stack.functions["assemble"].worker_pids()
    os.kill(pid, signal.SIGKILL)
    note(f"killed the assemble worker (pid {pid})")


def result_versions(stack: Any, job_id: str) -> collections.Counter[str]:
    """How many versions each result object of a job has (1: written once)."""
    s3 = stack.aws("s3")
    counts: collections.Counter[str] = collections.Counter()
    for page in s3.get_paginator("list_object_versions").paginate(
        Bucket=stack.settings.bucket, Prefix=f"results/{job_id}/"
    ):
        for version in page.get("Versions", []):
            counts[version["Key"]] += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=300.0, help="job deadline (s): the watchdog fails later")
    parser.add_argument("--only", choices=("pipeline", "gateway"), help="run one part (default: both)")
    parser.add_argument("--big-mib", type=int, default=200, help="size of each big instance (MiB)")
    parser.add_argument("--big-count", type=int, default=3, help="big instances sent at once")
    args = parser.parse_args()
    ok = True
    if args.only in (None, "pipeline"):
        ok = pipeline_faults(args) and ok
    if args.only in (None, "gateway"):
        ok = gateway_faults(args) and ok
    return 0 if ok else 1


def pipeline_faults(args: argparse.Namespace) -> bool:
    """Faults 1-4 on the local stack; True when every upload is accounted for."""
    from ichseg.paths import SAMPLE_VIDEO, SHIPPED_MODEL
    from infrastructure.local_stack import LocalStack, StackSettings

    sample = SAMPLE_VIDEO.read_bytes()
    settings = StackSettings(
        model=SHIPPED_MODEL,
        duplicate_deliveries=True,
        visibility_timeout={"ingest": 20, "segment": 15, "assemble": 30},
        watchdog_interval_seconds=10,
        environment={"ICHSEG_JOB_DEADLINE_SECONDS": str(int(args.deadline)), "ICHSEG_MIRROR_BUDGET_SECONDS": "5"},
    )
    with (
        tempfile.TemporaryDirectory(prefix="ichseg-fault-") as state,
        LocalStack(settings, state_dir=Path(state)) as stack,
    ):
        started = time.perf_counter()
        faults: list[str] = []
        outcomes: dict[int, tuple[float, dict[str, Any]] | str] = {}

        def upload(index: int) -> None:
            try:
                outcomes[index] = run_job(stack.api_url, stack.token(f"fault-{index}"), sample, args.deadline + 60)
            except Exception as exc:  # the accounting reports it
                outcomes[index] = f"{type(exc).__name__}: {exc}"

        chaos = threading.Thread(target=inject_faults, args=(stack, faults, started))
        uploads = [threading.Thread(target=upload, args=(i,)) for i in range(args.uploads)]
        chaos.start()
        for thread in uploads:
            thread.start()
            time.sleep(0.3)  # arrivals spread over a few seconds, across the faults
        for thread in [*uploads, chaos]:
            thread.join()
        wall = time.perf_counter() - started
        print(f"{args.uploads} uploads of the sample ({len(sample) // 1024} KB), every message delivered twice")
        print("faults:", *(f"  {line}" for line in faults), sep="\n")
        return account(stack, [outcomes.get(i, "no answer") for i in range(args.uploads)], wall)


def account(stack: Any, outcomes: list[tuple[float, dict[str, Any]] | str], wall: float) -> bool:
    """Print what became of every upload; True when everything is accounted for."""
    from ichseg.pipeline.jobs import JobState

    states: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    rewritten: list[str] = []
    stuck: list[str] = []
    unexplained: list[str] = []
    errors = [outcome for outcome in outcomes if isinstance(outcome, str)]
    for outcome in outcomes:
        if isinstance(outcome, str):
            continue
        seconds, status = outcome
        job = stack.inspect.store.require(status["job_id"])
        states[status["state"]] += 1
        if job.state == JobState.DONE:
            latencies.append(seconds)
            states["DONE with a mirror error"] += bool(job.mirror_error)
        elif job.state == JobState.FAILED:
            if not (job.error_code and job.error_reason):
                unexplained.append(job.job_id)
        else:
            stuck.append(job.job_id)
        rewritten += [key for key, count in result_versions(stack, job.job_id).items() if count > 1]
    restarts = {name: f.restarts for name, f in stack.functions.items() if f.restarts}
    print("accounting:")
    print(f"  final states: {dict(states)}")
    print(f"  client errors (no status): {len(errors)} {errors[:3]}")
    print(f"  FAILED without a code and reason: {len(unexplained)}")
    print(f"  stuck (neither DONE nor FAILED): {len(stuck)}")
    print(f"  result objects written more than once: {len(rewritten)} {rewritten[:3]}")
    print(f"  function workers restarted: {restarts}")
    print(f"  dead-lettered messages: { {q: len(stack.inspect.dlq_bodies(q)) for q in stack.queues} }")
    if latencies:
        latencies.sort()
        p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
        print(
            f"  latency upload->DONE: p50 {statistics.median(latencies):.1f} s, p95 {p95:.1f} s; "
            f"{len(latencies) / wall * 60:.1f} jobs/minute over {wall:.0f} s"
        )
    ended = states[JobState.DONE] + states[JobState.FAILED]
    ok = not (errors or unexplained or stuck or rewritten) and ended == len(outcomes)
    print("all accounted for" if ok else "NOT all accounted for")
    return ok


# ------------------------------------------------------------------------------ the DICOM gateway

MiB = 1024 * 1024


def ct_study(folder: Path, count: int, side: int = 64) -> list[Path]:
    """``count`` CT slices of one new study and series (pydicom; synthetic, no patient)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for index in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
        ds.PatientName, ds.PatientID = "BENCH^FAULT", "BENCH"
        ds.InstanceNumber, ds.SeriesNumber = index + 1, 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 5.0 * index], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 5.0
        ds.Rows = ds.Columns = side
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.PixelData = np.full((side, side), index, dtype=np.int16).tobytes()
        paths.append(folder / f"{index:04d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def big_instance(folder: Path, mib: int) -> Path:
    """One CT instance of about ``mib`` MiB: a slice's header, then its Pixel Data written in chunks."""
    import struct

    from pydicom import dcmread

    [template] = ct_study(folder / "template", 1, side=8)
    ds = dcmread(template)
    del ds.PixelData
    side = int((mib * MiB / 2) ** 0.5) & ~1
    ds.Rows = ds.Columns = side
    path = folder / f"big-{mib}.dcm"
    ds.save_as(path, enforce_file_format=True)
    with path.open("ab") as out:
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, side * side * 2))
        left, chunk = side * side * 2, bytes(range(256)) * (MiB // 256)
        while left:
            out.write(chunk[: min(left, MiB)])
            left -= min(left, MiB)
    return path


class GatewayProcess:
    """``python -m gateway`` on 127.0.0.1 and a free port, its spool in ``spool``."""

    def __init__(self, spool: Path, env: dict[str, str], max_associations: int = 8) -> None:
        import re
        import subprocess

        environment = {
            **os.environ,
            **env,
            "ICHSEG_GATEWAY_SPOOL_DIR": str(spool),
            "ICHSEG_GATEWAY_HOST": "127.0.0.1",
            "ICHSEG_GATEWAY_PORT": "0",
            "ICHSEG_GATEWAY_MAX_ASSOCIATIONS": str(max_associations),
            "ICHSEG_LOG_LEVEL": "ERROR",
            "PYTHONPATH": str(REPO),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway"],
            env=environment,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        match = re.search(r" on ([0-9.]+):(\d+) ", self.process.stdout.readline())
        if not match:
            self.process.kill()
            raise RuntimeError("the gateway did not start")
        self.address = (match[1], int(match[2]))

    def peak_rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        (line,) = [line for line in status.splitlines() if line.startswith("VmHWM:")]
        return int(line.split()[1]) / 1024

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=60)


def store(address: tuple[str, int], files: list[Path], calling: str = "BENCHPACS") -> tuple[int, int, str]:
    """storescu (no halt on a failure); returns (successes, failures, output)."""
    import subprocess

    host, port = address
    done = subprocess.run(
        ["storescu", "-v", "-nh", "-aet", calling, "-aec", "ICHSEG", host, str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    successes = output.count("Received Store Response (Success)")
    return successes, output.count("Received Store Response") - successes, output


def echo(address: tuple[str, int]) -> bool:
    import subprocess

    host, port = address
    command = ["echoscu", "-aet", "BENCHPACS", "-aec", "ICHSEG", host, str(port)]
    return subprocess.run(command, capture_output=True, timeout=60).returncode == 0


def gateway_faults(args: argparse.Namespace) -> bool:
    """Faults 5-7 on a gateway process; True when each held."""
    import shutil
    import socket
    import uuid

    import boto3

    from infrastructure.moto_server import MotoServer

    if not all(shutil.which(tool) for tool in ("storescu", "echoscu")):
        print("gateway faults skipped: dcmtk (storescu, echoscu) is not installed")
        return False
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    moto = MotoServer().start()
    env = {
        "AWS_ENDPOINT_URL": moto.url,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "ICHSEG_BUCKET": f"fault-bench-{uuid.uuid4().hex[:8]}",
        "ICHSEG_GATEWAY_IDLE_SECONDS": "2",
    }
    s3 = boto3.client(
        "s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench"
    )
    s3.create_bucket(Bucket=env["ICHSEG_BUCKET"])
    ok = True
    try:
        with tempfile.TemporaryDirectory(prefix="ichseg-gateway-fault-") as state:
            root = Path(state)
            print("\nDICOM gateway faults (python -m gateway on 127.0.0.1, dcmtk as the PACS)")

            # 5. health-check load: more bare connections than slots, and a checker loop, meanwhile real work
            gateway = GatewayProcess(root / "spool-health", env, max_associations=2)
            stop = threading.Event()
            checks = 0

            def checker() -> None:
                nonlocal checks
                while not stop.is_set():
                    socket.create_connection(gateway.address, timeout=30).close()
                    checks += 1
                    stop.wait(0.05)

            held = [socket.create_connection(gateway.address, timeout=30) for _ in range(8)]
            checkers = [threading.Thread(target=checker) for _ in range(2)]
            for thread in checkers:
                thread.start()
            study = ct_study(root / "health-study", 5)
            started = time.perf_counter()
            echoes = sum(echo(gateway.address) for _ in range(10))
            stored, refused, _ = store(gateway.address, study)
            work = time.perf_counter() - started
            stop.set()
            for thread in checkers:
                thread.join()
            closed = 0
            for sock in held:
                try:
                    closed += sock.recv(1) == b""
                except OSError:
                    closed += 1
                sock.close()
            gateway.stop()
            print(
                f"  health-check load (2 association slots; 8 bare connections held, 2 checkers, {checks} checks): "
                f"C-ECHO {echoes}/10 accepted, C-STORE {stored}/{len(study)} stored ({refused} refused) in "
                f"{work:.1f} s; bare connections closed by the gateway: {closed}/8"
            )
            ok = ok and echoes == 10 and stored == len(study) and closed == 8

            # 6. big instances at once: the gateway's peak memory
            gateway = GatewayProcess(root / "spool-big", {**env, "ICHSEG_GATEWAY_IDLE_SECONDS": "600"})
            big = [big_instance(root / f"big{i}", args.big_mib) for i in range(args.big_count)]
            store(gateway.address, ct_study(root / "warm", 1))  # imports and threads warm
            before = gateway.peak_rss_mib()
            started = time.perf_counter()
            with ThreadPool(args.big_count) as pool:
                results = pool.map(lambda path: store(gateway.address, [path]), big)
            seconds = time.perf_counter() - started
            after = gateway.peak_rss_mib()
            gateway.stop()
            big_stored = sum(result[0] for result in results)
            print(
                f"  {args.big_count} instances of {args.big_mib} MiB at once: {big_stored}/{args.big_count} stored in "
                f"{seconds:.1f} s; gateway peak RSS {before:.0f} MiB before, {after:.0f} MiB after "
                f"(+{after - before:.0f} MiB; task memory 2048 MiB)"
            )
            ok = ok and big_stored == args.big_count and after - before < 256

            # 7. kill mid-study, restart on the same spool, resend
            count = 60
            study = ct_study(root / "kill-study", count)
            spool = root / "spool-kill"
            gateway = GatewayProcess(spool, env)
            sender = ThreadPool(1).apply_async(store, (gateway.address, study, "KILLPACS"))
            deadline = time.monotonic() + 60
            while len(list((spool / "incoming").rglob("*.dcm"))) < count // 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            gateway.stop(kill=True)
            acknowledged, _, _ = sender.get(timeout=120)
            on_disk = len(list((spool / "incoming").rglob("*.dcm")))
            gateway = GatewayProcess(spool, env)
            resent, _, _ = store(gateway.address, study, "KILLPACS")
            deadline = time.monotonic() + 120
            objects: list[str] = []
            while time.monotonic() < deadline:
                objects = [
                    o["Key"]
                    for o in s3.list_objects_v2(Bucket=env["ICHSEG_BUCKET"], Prefix="ingest/KILLPACS/").get(
                        "Contents", []
                    )
                ]
                if (
                    objects
                    and not list((spool / "incoming").rglob("*.dcm"))
                    and not list((spool / "claimed").rglob("*.dcm"))
                ):
                    break
                time.sleep(0.5)
            gateway.stop()
            members = [
                len(
                    zipfile.ZipFile(
                        io.BytesIO(s3.get_object(Bucket=env["ICHSEG_BUCKET"], Key=k)["Body"].read())
                    ).namelist()
                )
                for k in objects
            ]
            print(
                f"  kill mid-study ({count} instances): {acknowledged} acknowledged before SIGKILL, {on_disk} on the "
                f"spool after it; restarted, resent: {resent}/{count} stored; jobs (ingest objects): {len(objects)}, "
                f"instances in them: {members}"
            )
            ok = ok and len(objects) == 1 and members == [count] and acknowledged <= on_disk
    finally:
        moto.stop()
    print("gateway: all held" if ok else "gateway: NOT all held")
    return ok


if __name__ == "__main__":
    sys.exit(main())
