"""``make demo``: the mobile app's journey through the local stack, with the committed sample scan.

1. start the local stack (moto, Firebase Storage emulator, inference server with the shipped model,
   the functions and their event pump, the API front);
2. sign in (the stack's token issuer plays Firebase Auth) and ``POST /v1/scans``;
3. upload ``samples/ct-ich-051/brain.mp4`` with the presigned POST (a multipart form, as the app);
4. poll ``GET /v1/scans/{id}`` with a progress bar until DONE;
5. download the results, show the copy in Firebase Storage, and say how long each stage took;
6. print the results viewer's link for the job (``--serve`` keeps the stack up so it can be opened).
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from ichseg.paths import REPO_ROOT, SAMPLE_VIDEO, SHIPPED_MODEL

DEMO_UID = "demo-radiologist"
POLL_SECONDS = 0.5


def _video_facts(data: bytes) -> str:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        context = stream.codec_context
        codec = "H.264" if context.name == "h264" else context.name
        return f"{codec} {context.pix_fmt}, {context.width}x{context.height}, {frames} frames"


def run_demo(
    out: Path, model: Path = SHIPPED_MODEL, sample: Path = SAMPLE_VIDEO, timeout: float = 900.0, serve: bool = False
) -> int:
    """Run the demo; returns the process exit code (0: the job ended DONE). With ``serve`` the stack
    stays up after the job until Ctrl-C, so the printed viewer link can be opened."""
    from infrastructure.local_stack import LocalStack, StackError, StackSettings

    if not model.is_file():
        print(
            f"error: the shipped model {model.relative_to(REPO_ROOT) if model.is_relative_to(REPO_ROOT) else model} "
            "is missing. It is produced by training/ and model_export/ (see README.md, 'Training'); "
            "until it is committed the demo cannot segment anything.",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    print(
        "Starting the local stack: moto (S3, SQS, DynamoDB), Firebase Storage emulator, inference server, "
        "functions, event pump, API ...",
        flush=True,
    )
    try:
        stack = LocalStack(StackSettings(state_dir=REPO_ROOT / "build" / "demo-stack", model=model))
        stack.__enter__()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        stack_seconds = time.perf_counter() - started
        print(f"  up in {stack_seconds:.1f} s; API at {stack.api_url}, logs in {stack.log_dir}\n", flush=True)
        status = app_journey(stack, sample, out, timeout)
        if status["state"] != "DONE":
            return 1
        print(f"  {'local stack start-up (not part of a job)':<52} {stack_seconds:7.2f} s")
        if serve:
            _serve_until_interrupted()
        else:
            print("\n(The stack stops now; `make demo DEMO_ARGS=--serve` keeps it up to open the viewer link.)")
        return 0
    finally:
        stack.__exit__(None, None, None)


def app_journey(stack: Any, sample: Path, out: Path, timeout: float = 900.0, uid: str = DEMO_UID) -> dict[str, Any]:
    """What the mobile app does against a running stack; prints as it goes; returns the final status."""
    import requests
    from tqdm import tqdm

    from client.api import JobFailed, Progress, ScansClient

    out.mkdir(parents=True, exist_ok=True)
    api = stack.api_url
    # 1. Sign in: Firebase Auth gives the app an ID token (here: the stack's local issuer).
    token = requests.post(f"{api}/_local/token", json={"uid": uid}, timeout=30).json()["id_token"]
    # 2-4. The same client `ichseg scans` uses: POST /v1/scans, the presigned POST straight to S3
    # (the file last in the form), then polling with a progress bar.
    client = ScansClient(api, token)
    t0 = time.perf_counter()
    with tqdm(total=sample.stat().st_size, unit="B", unit_scale=True, desc="upload", leave=False) as bar:
        job_id = client.submit(sample, on_bytes=bar.update)
    t2 = time.perf_counter()
    size = sample.stat().st_size / 1024
    print(f"POST /v1/scans -> job {job_id}; uploaded {sample.name} ({size:.0f} KiB) with its presigned POST")
    with tqdm(total=None, unit="slice", desc="RECEIVED", dynamic_ncols=True) as bar:

        def show(progress: Progress) -> None:
            bar.total = progress.total or bar.total
            bar.n = progress.done
            bar.set_description(progress.state)
            bar.refresh()

        try:
            status = client.wait(job_id, on_progress=show, poll_seconds=POLL_SECONDS, timeout=timeout)
        except JobFailed as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return client.status(job_id)
    t3 = time.perf_counter()

    # 5. Download what the app would show.
    files = client.download(job_id, out)
    (out / "status.json").write_text(json.dumps({k: v for k, v in status.items() if k != "results"}, indent=2))
    report = json.loads(files["report"].read_bytes())
    print(
        "\nResult:",
        f"{report['finding']} (scan probability {report['hemorrhage_probability']:.2f};",
        f"{len(report['slices_with_hemorrhage'])} of {len(report['slices'])} slices:",
        f"{', '.join(report['slices_with_hemorrhage']) or 'none'}) by {report['model']['name']}",
        f"{report['model']['version']}",
    )
    if report.get("scan_model"):  # the finding read from the whole scan (models/SCAN_HEAD_CARD.md)
        head, threshold = report["scan_model"], report["thresholds"]["scan"]
        print(f"Read as a scan by {head['name']} {head['version']} (scan threshold {threshold})")
    if report.get("finding_note"):
        print("Note:", report["finding_note"])
    if report.get("subtypes"):  # models from 0.2 on: calibrated subtype probabilities
        likely = sorted(report["subtypes"].items(), key=lambda item: -item[1])
        print("Subtypes:", ", ".join(f"{name} {p:.2f}" for name, p in likely))
    print(f"  segmented video: {files['overlay']}  [{_video_facts(files['overlay'].read_bytes())}]")
    print(f"  report:          {files['report']}")
    print(f"  contact sheet:   {files['contact_sheet']}")

    # The copy the app reads from Firebase Storage.
    prefix = f"users/{uid}/scans/{job_id}/"
    print(f"\nFirebase Storage emulator ({stack.storage_url}), bucket {stack.settings.firebase_bucket}:")
    for item in stack.inspect.firebase_objects(prefix):
        print(f"  {item['name']}  {item['size']} bytes  {item['content_type']}")
    mirrored = out / "firebase" / "overlay.mp4"
    mirrored.parent.mkdir(exist_ok=True)
    mirrored.write_bytes(stack.inspect.firebase_download(prefix + "overlay.mp4"))
    print(f"  downloaded back: {mirrored}  [{_video_facts(mirrored.read_bytes())}]")
    if status["mirror"] and status["mirror"]["error"]:
        print(f"  mirror error: {status['mirror']['error']}")

    _print_timings(status, stack, job_id, t2 - t0, t3 - t2)
    # The token rides in the fragment, which the browser never sends to a server (viewer/index.html).
    print(f"\nResults viewer (token valid for an hour): {viewer_link(api, job_id, token)}")
    return status


def viewer_link(api: str, job_id: str, token: str) -> str:
    """The viewer page for a job, signed in: ``<api>/viewer/?job=<id>#token=<ID token>``."""
    return f"{api}/viewer/?job={job_id}#token={token}"


def _serve_until_interrupted() -> None:
    print("\nThe stack keeps running for the viewer; Ctrl-C stops it.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print()


def _print_timings(status: dict[str, Any], stack: Any, job_id: str, upload_seconds: float, wait_seconds: float) -> None:
    labels = {
        "created->received": "upload + S3 event -> split starts",
        "received->split": "split: decode, window, write frame batches",
        "split->segmenting": "enqueue segment messages",
        "segmenting->assembling": "segment: endpoint inference of every batch",
        "assembling->done": "assemble: masks, H.264 overlay, report, mirror",
    }
    print("\nTiming (from the job record):")
    for key, seconds in status["timings"].items():
        print(f"  {labels.get(key, key):<52} {seconds:7.2f} s")
    segments = stack.inspect.invocations_of("segment", job_id)
    if segments:
        print(f"  ({len(segments)} segment invocation(s), {sum(i.seconds for i in segments):.2f} s of function time)")
    end_to_end = upload_seconds + wait_seconds
    print(f"  {'end to end (POST /v1/scans -> DONE seen by the app)':<52} {end_to_end:7.2f} s")
