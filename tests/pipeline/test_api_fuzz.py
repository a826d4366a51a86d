"""A bounded schemathesis run against the local stack: the served API keeps its generated contract.

schemathesis reads ``functions/openapi.json`` (the document generated from the API's code) and
sends valid and invalid requests for every operation, with a real Firebase token from the stack's
issuer, through the local front (authorizer + API function). Every check runs: no 5xx, status
codes, content types, headers and bodies as documented, invalid data refused, valid data accepted,
unsupported methods 405, requests without the token refused.

Bounded for ``make test`` by the number of examples, never by time: with a time budget schemathesis
repeats its phases with new seeds until the budget is spent, so a fast machine would test inputs a
slow one never sees. A fixed seed, deterministic generation, a fixed number of examples per
operation, and no speed-dependent health check: every machine sends the same requests.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from infrastructure.local_stack import LocalStack
from tests.conftest import REPO

SPEC = REPO / "functions" / "openapi.json"
CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = 100
TIMEOUT_SECONDS = 600
"""A safety net for a hung run, far above its usual length."""


def test_schemathesis_finds_nothing(stack: LocalStack, tmp_path: Path) -> None:
    token = stack.token("fuzz-user")
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(CONFIG),
        "run",
        str(SPEC),
        "--url",
        stack.api_url,
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "20261202",
        "--generation-deterministic",
        "--suppress-health-check",
        "too_slow",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    started = time.monotonic()
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False)
    elapsed = time.monotonic() - started
    output = run.stdout + run.stderr
    print(output[-6000:], f"\nschemathesis took {elapsed:.0f} s")
    assert run.returncode == 0, output[-12000:]
    assert "Tested: 9" in output  # every operation was exercised, not skipped
