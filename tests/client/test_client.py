"""``ichseg scans ...`` end to end against the local stack, as a person at a terminal runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from infrastructure.local_stack import LocalStack
from tests.stack_fixtures import head_frames, video_bytes


def scans(
    stack: LocalStack, *args: str, token: str | None = None, api: str | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "ICHSEG_API": api or stack.api_url, "ICHSEG_TOKEN": token or stack.token("carla")}
    return subprocess.run(
        [sys.executable, "-m", "ichseg.cli", "scans", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )


def test_submit_wait_status_download_and_open(stack: LocalStack, tmp_path: Path) -> None:
    scan = tmp_path / "head.mp4"
    scan.write_bytes(video_bytes(tmp_path, head_frames(6, bleed_from=3)))
    submitted = scans(stack, "submit", str(scan), "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id, summary = submitted.stdout.splitlines()
    assert json.loads(summary)["state"] == "DONE"
    assert "upload" in submitted.stderr and "segmenting" in submitted.stderr  # the progress bars

    status = scans(stack, "status", job_id)
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "DONE"
    download = scans(stack, "download", job_id, "--out", str(tmp_path / "results"))
    assert download.returncode == 0, download.stderr
    saved = {line.split(": ")[0]: Path(line.split(": ")[1]) for line in download.stdout.splitlines()}
    assert {"overlay", "report", "contact_sheet"} <= set(saved)
    assert json.loads(saved["report"].read_text())["model"]["name"]
    opened = scans(stack, "open", job_id)
    assert opened.returncode == 0 and opened.stdout.strip().startswith(stack.api_url) and job_id in opened.stdout

    listed = scans(stack, "list")
    assert listed.returncode == 0 and listed.stdout.splitlines()[0].split()[:2] == [job_id, "DONE"]  # newest first
    deleted = scans(stack, "delete", job_id)
    assert deleted.returncode == 0 and f"deleted {job_id}" in deleted.stdout
    assert job_id not in scans(stack, "list").stdout
    again = scans(stack, "delete", job_id)
    assert again.returncode == 1 and "no such job" in again.stderr


def test_errors_are_one_clear_line(stack: LocalStack, tmp_path: Path) -> None:
    refused = scans(stack, "status", "0" * 32, token="not-a-token")
    assert refused.returncode == 1 and "refused the token" in refused.stderr and "Traceback" not in refused.stderr
    unknown = scans(stack, "status", "0" * 32)
    assert unknown.returncode == 1 and "no such job" in unknown.stderr
    down = scans(stack, "status", "0" * 32, api="http://127.0.0.1:9")
    assert down.returncode == 1 and "cannot reach the ichseg API" in down.stderr
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(video_bytes(tmp_path, head_frames(4))[:300])
    failed = scans(stack, "submit", str(corrupt), "--wait")
    assert failed.returncode == 1 and "FAILED" in failed.stderr and "corrupt" in failed.stderr
    missing = scans(stack, "submit", str(tmp_path / "nope.mp4"))
    assert missing.returncode == 1 and "no such file" in missing.stderr
