"""HTTP overhead of the inference server: round trip through boto3 vs the same batch in-process.

    .venv/bin/python bench/endpoint_bench.py [--model models/ichseg-unet.onnx] [--batch 16]

Starts the real server (`ichseg endpoint`, gunicorn) on a free loopback port, then times, for the
same batch of real CT slices (the committed sample, resized to 512x512):
- in-process: ``OnnxSegmenter.predict`` (preprocessing + ONNX Runtime + restore), what the
  server computes per request;
- round trip: boto3 ``sagemaker-runtime`` ``invoke_endpoint`` (npy encode, HTTP, server decode,
  predict, npy response, CustomAttributes) exactly as the segment function calls it.
Prints both, and the overhead (target: <= 10 % at batch 16).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the endpoint did not become ready")


def timed(run, repeats: int) -> float:  # type: ignore[no-untyped-def]
    run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    from ichseg.endpoint_protocol import CONTENT_TYPE, encode_slices
    from ichseg.inference import OnnxSegmenter
    from ichseg.paths import SAMPLE_VIDEO, SHIPPED_MODEL
    from ichseg.readers import read_scan

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import boto3
    import cv2

    # 512x512 is the usual CT matrix; 16 slices of the sample's 650x650 would exceed SageMaker's 6 MB.
    frames = read_scan(SAMPLE_VIDEO).slices[8 : 8 + args.batch]
    slices = np.stack([cv2.resize(f, (512, 512), interpolation=cv2.INTER_AREA) for f in frames])
    body = encode_slices(slices)
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "ichseg"), "endpoint", "--port", str(port), "--model", str(args.model)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(port)
        client = boto3.client(
            "sagemaker-runtime",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )

        def round_trip() -> None:
            response = client.invoke_endpoint(
                EndpointName="ichseg", ContentType=CONTENT_TYPE, Accept=CONTENT_TYPE, Body=body
            )
            response["Body"].read()

        remote = timed(round_trip, args.repeats)
    finally:
        server.terminate()
        server.wait(timeout=30)
    segmenter = OnnxSegmenter(args.model)
    local = timed(lambda: segmenter.predict(np.asarray(slices)), args.repeats)
    print(f"batch {len(slices)} slices of {slices.shape[2]}x{slices.shape[1]} ({len(body) / 2**20:.1f} MiB request)")
    print(f"in-process predict : {local:.3f} s ({len(slices) / local:.1f} frames/s)")
    print(f"boto3 round trip   : {remote:.3f} s ({len(slices) / remote:.1f} frames/s)")
    print(f"HTTP overhead      : {100 * (remote - local) / local:+.1f} %")


if __name__ == "__main__":
    main()
