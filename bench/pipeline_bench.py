"""The pipeline's own cost: end-to-end seconds against pure inference on the same frames.

    .venv/bin/python bench/pipeline_bench.py                       # the shipped model
    .venv/bin/python bench/pipeline_bench.py --model path/to.onnx  # any ichseg ONNX model

Runs the local stack (moto, storage emulator, the inference server, the functions, the event pump,
the API front) and, through the API exactly as the app does (token, POST /v1/scans, presigned
POST, polling):

1. the committed sample scan (CT-ICH patient 051, 32 frames of 650x650);
2. a 10x longer scan (the same frames repeated, 320 frames, re-encoded as H.264);
3. four uploads of the sample at once: jobs per minute.

For 1 and 2 it also times pure inference on the same frames (``OnnxSegmenter.predict`` in this
process, the code the endpoint runs) and prints end-to-end / inference: the overhead ratio of
splitting, queueing, S3 round trips, assembling the video and mirroring. Each scan runs ``--runs``
times; every end-to-end run is followed at once by an inference run on the same frames (the stack
idle), so that both sides of a ratio see the same machine load, and the medians are printed with
the load average. Beside them, frames per second: in process, and in the endpoint's model (its
log's ``answered`` slices over ``model_ms``, the time in the model without the wait for it), so a
slower endpoint shows as such and not as pipeline overhead; and, for the long scan, the CPU seconds
each process of the stack spent on it (``/proc``): on a machine the endpoint shares, every CPU
second of the rest is taken from the model. Start-up of the stack is not counted.
Numbers are for this machine (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_job(api: str, token: str, data: bytes, timeout: float = 1800.0) -> tuple[float, dict]:  # type: ignore[type-arg]
    """POST /v1/scans -> presigned POST -> poll until DONE/FAILED; (seconds, final status)."""
    import requests

    headers = {"Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    ticket = requests.post(
        f"{api}/v1/scans", json={"content_type": "video/mp4", "size_bytes": len(data)}, headers=headers, timeout=60
    ).json()
    posted = requests.post(
        ticket["upload"]["url"],
        data=ticket["upload"]["fields"],
        files={"file": ("scan.mp4", data, "video/mp4")},
        timeout=300,
    )
    posted.raise_for_status()
    deadline = time.time() + timeout
    while True:
        status = requests.get(f"{api}/v1/scans/{ticket['job_id']}", headers=headers, timeout=60).json()
        if status["state"] in ("DONE", "FAILED"):
            return time.perf_counter() - started, status
        if time.time() > deadline:
            raise TimeoutError(f"job still {status['state']} after {timeout:.0f} s")
        time.sleep(0.25)


def inference_seconds(segmenter: object, frames: np.ndarray) -> float:
    """Pure model time on the frames, as the endpoint computes it (preprocessing included)."""
    started = time.perf_counter()
    segmenter.predict(frames)  # type: ignore[attr-defined]
    return time.perf_counter() - started


def endpoint_model_time(log: Path, offset: int) -> tuple[int, float]:
    """Slices answered and seconds in the model, from the inference server's log lines after
    ``offset`` (its ``invocation`` events: ``answered``, ``model_ms``, the wait for the model not counted)."""
    answered, seconds = 0, 0.0
    with open(log, "rb") as lines:
        lines.seek(offset)
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:  # gunicorn's own start-up lines
                continue
            if record.get("message") == "invocation" and "model_ms" in record:
                answered += int(record["answered"])
                seconds += float(record["model_ms"]) / 1000
    return answered, seconds


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux ``/proc``; 0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (gunicorn's workers under its arbiter)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def stack_processes(stack: object) -> dict[str, list[int]]:
    """The local stack's processes by role: each function's workers, the inference server (arbiter
    and workers) and this process (moto, the API front, the event pump, the storage emulator)."""
    groups = {name: function.worker_pids() for name, function in stack.functions.items()}  # type: ignore[attr-defined]
    server = stack.endpoint.pid  # type: ignore[attr-defined]
    groups["inference server"] = [server, *descendants(server)] if server else []
    groups["stack (moto, API front, pump)"] = [os.getpid()]
    return groups


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    from ichseg.paths import SAMPLE_VIDEO, SHIPPED_MODEL
    from ichseg.readers import read_scan
    from ichseg.windowing import windowed_slices
    from ichseg.writers.render import write_h264
    from infrastructure.local_stack import LocalStack, StackSettings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--repeat", type=int, default=10, help="length of the long scan, in copies of the sample")
    parser.add_argument("--concurrent", type=int, default=4, help="simultaneous uploads for jobs per minute")
    parser.add_argument("--runs", type=int, default=3, help="end-to-end + inference runs per scan (medians)")
    args = parser.parse_args()
    if not args.model.is_file():
        print(f"error: model not found: {args.model} (pass --model)", file=sys.stderr)
        return 2

    sample = SAMPLE_VIDEO.read_bytes()
    frames = windowed_slices(read_scan(sample))
    long_frames = np.concatenate([frames] * args.repeat)
    long_video = write_h264(long_frames, fps=5.0, crf=18)
    print(
        f"model {args.model.name}; sample {len(frames)} frames {frames.shape[1]}x{frames.shape[2]}; "
        f"long scan {len(long_frames)} frames"
    )

    from ichseg.inference import OnnxSegmenter

    segmenter = OnnxSegmenter(args.model)
    segmenter.predict(frames[:1])  # warm-up
    rows = []
    with tempfile.TemporaryDirectory(prefix="ichseg-bench-") as state:
        started = time.perf_counter()
        with LocalStack(StackSettings(state_dir=Path(state), model=args.model)) as stack:
            print(f"local stack up in {time.perf_counter() - started:.1f} s (not counted below)", flush=True)
            token = stack.token("bench")
            endpoint_log = stack.log_dir / "endpoint.log"
            run_job(stack.api_url, token, sample)  # warm: first-request costs are not the pipeline's
            scans = (("sample", sample, frames), (f"{args.repeat}x sample", long_video, long_frames))
            for name, data, scan_frames in scans:
                runs = []
                for _ in range(args.runs):
                    load = load_average()
                    offset = endpoint_log.stat().st_size
                    processes = stack_processes(stack)
                    before = {role: sum(map(cpu_seconds, pids)) for role, pids in processes.items()}
                    seconds, status = run_job(stack.api_url, token, data)
                    used = {role: sum(map(cpu_seconds, pids)) - before[role] for role, pids in processes.items()}
                    assert status["state"] == "DONE", status.get("error")
                    answered, model_seconds = endpoint_model_time(endpoint_log, offset)
                    pure = inference_seconds(segmenter, scan_frames)
                    runs.append((seconds, pure, status["timings"], answered / model_seconds, used))
                    print(
                        f"  {name}: {seconds:.1f} s end to end, {pure:.1f} s inference, ratio {seconds / pure:.2f}; "
                        f"frames/s in process {len(scan_frames) / pure:.1f}, in the endpoint "
                        f"{answered / model_seconds:.1f} (load average before: {load})",
                        flush=True,
                    )
                rows.append((name, len(scan_frames), runs))

            results: list[tuple[float, str]] = []

            def one(index: int) -> None:
                seconds, status = run_job(stack.api_url, stack.token(f"bench-{index}"), sample)
                results.append((seconds, status["state"]))

            threads = [threading.Thread(target=one, args=(i,)) for i in range(args.concurrent)]
            burst_started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            burst = time.perf_counter() - burst_started
            assert all(state == "DONE" for _, state in results), results

    print(f"\nmedians of {args.runs} run(s); load average now {load_average()}")
    print(
        "scan              frames  end-to-end s  inference s  overhead ratio  frames/s in process  in endpoint"
        "  split s  split->seg s  segment s  assemble s"
    )
    single = 0.0
    for name, count, runs in rows:
        seconds = statistics.median(r[0] for r in runs)
        pure = statistics.median(r[1] for r in runs)
        ratio = statistics.median(r[0] / r[1] for r in runs)
        single = single or seconds

        def stage(key: str, runs: list = runs) -> float:  # type: ignore[type-arg]
            return statistics.median(r[2].get(key, 0.0) for r in runs)

        # split->segmenting: the batches being written and enqueued, the endpoint already at work on them.
        print(
            f"{name:<17} {count:6d}  {seconds:12.1f}  {pure:11.1f}  {ratio:14.2f}  {count / pure:19.1f}"
            f"  {statistics.median(r[3] for r in runs):11.1f}  {stage('received->split'):7.1f}"
            f"  {stage('split->segmenting'):12.1f}  {stage('segmenting->assembling'):9.1f}"
            f"  {stage('assembling->done'):10.1f}"
        )
    name, count, runs = rows[-1]
    roles = runs[0][4]
    print(f"\nCPU seconds by process for the {name} (median of {len(runs)}; a second of wall time is 2 CPU-s here):")
    for role in sorted(roles, key=lambda r: -statistics.median(run[4][r] for run in runs)):
        print(f"  {role:<32} {statistics.median(run[4][role] for run in runs):6.1f}")
    total = statistics.median(sum(run[4].values()) for run in runs)
    print(f"  {'all':<32} {total:6.1f} (end to end {statistics.median(run[0] for run in runs):.1f} s)")
    per_job = sorted(seconds for seconds, _ in results)
    print(
        f"\n{args.concurrent} concurrent uploads of the sample: all DONE in {burst:.1f} s -> "
        f"{args.concurrent / burst * 60:.1f} jobs/minute (single job: {single:.1f} s, "
        f"{60 / single:.1f} jobs/minute one at a time); per-job latency {per_job[0]:.1f}-{per_job[-1]:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
