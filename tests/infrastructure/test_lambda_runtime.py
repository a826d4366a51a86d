"""The local Lambda runtime's worker processes: they end with the stack that started them, even one
killed by a signal (which runs none of its clean-up)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOLDER = """
import json, sys, time
from infrastructure.lambda_runtime import FunctionSpec, LocalFunction

if __name__ == "__main__":
    function = LocalFunction(FunctionSpec("echo", "json.dumps", concurrency=2), {}, sys.argv[1])
    [future.result(timeout=120) for future in function.warm()]
    print(json.dumps(sorted(function.worker_pids())), flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be read


def test_workers_end_when_the_stack_holding_them_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    holder = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "logs")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        workers = json.loads(holder.stdout.readline())
        assert workers and all(_alive(pid) for pid in workers)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived the killed stack"
    finally:
        holder.kill()
