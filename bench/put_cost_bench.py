"""What the segment stage's per-slice result files cost on this machine: client and emulator CPU per PUT.

    .venv/bin/python bench/put_cost_bench.py [--objects 640] [--size 20000]

The segment stage writes two objects per slice (``masks/<id>.png``, ``frames/<id>.jpg``) with
``IfNoneMatch: *``, 8 at a time (``PipelineContext.put_once_all``). Here the same requests go from
boto3 to the local stack's S3 emulator (``infrastructure.moto_server``, a versioned bucket) running in
a process of its own, and the CPU time of each side is read from ``/proc``. Issue 20's cost target
asks how much of the pipeline's overhead these requests are: ``pipeline_bench.py`` prints the
CPU sum they are part of.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SERVE = """
import sys, time
from infrastructure.moto_server import MotoServer
server = MotoServer().start()
print(server.url, flush=True)
time.sleep(3600)
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    import boto3

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=640, help="PUTs per run (2 per slice: 320 slices)")
    parser.add_argument("--size", type=int, default=20_000, help="bytes per object")
    args = parser.parse_args()
    emulator = subprocess.Popen(
        [sys.executable, "-c", SERVE],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert emulator.stdout is not None
        url = emulator.stdout.readline().strip()
        s3 = boto3.client(
            "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench"
        )
        s3.create_bucket(Bucket="ichseg-bench")
        s3.put_bucket_versioning(Bucket="ichseg-bench", VersioningConfiguration={"Status": "Enabled"})
        body = os.urandom(args.size)

        def run(prefix: str) -> tuple[float, float, float]:
            client, server, wall = time.process_time(), cpu_seconds(emulator.pid), time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(
                    pool.map(
                        lambda i: s3.put_object(Bucket="ichseg-bench", Key=f"{prefix}/{i}", Body=body, IfNoneMatch="*"),
                        range(args.objects),
                    )
                )
            return time.perf_counter() - wall, time.process_time() - client, cpu_seconds(emulator.pid) - server

        run("warm")
        wall, client, server = run("measured")
        n = args.objects
        print(f"{n} PUTs of {args.size} bytes, 8 threads: wall {wall:.2f} s")
        print(f"  client (boto3) CPU {client:.2f} s = {client / n * 1000:.1f} ms a PUT")
        print(f"  emulator (moto) CPU {server:.2f} s = {server / n * 1000:.1f} ms a PUT")
        print(f"  together {client + server:.2f} CPU-s = {(client + server) / 2:.2f} s of wall time on 2 cores")
    finally:
        emulator.kill()
        emulator.wait()


if __name__ == "__main__":
    main()
