"""The DICOM validator the tests trust: David Clunie's dciodvfy (Debian dicom3tools).

``make dicom-tools`` installs it. A test that needs it fails, with the command to run, where it
is missing: a skipped validation would pass objects nobody checked.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DCIODVFY = "dciodvfy"


def dciodvfy_errors(path: Path | str) -> list[str]:
    """The ``Error`` lines dciodvfy reports for the DICOM file at ``path`` (warnings are not errors)."""
    executable = shutil.which(DCIODVFY)
    if executable is None:
        pytest.fail(f"{DCIODVFY} (Debian dicom3tools) is not on PATH: run `make dicom-tools` to install it")
    run = subprocess.run([executable, str(path)], capture_output=True, text=True, timeout=120, check=False)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]
