"""Memory under a big instance: the gateway, run as its own process, receives a 128 MiB CT instance
and its peak resident memory (VmHWM) grows by far less than the instance (it streams to disk)."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.gateway.conftest import Aws, ct_series, storescu, wait_until

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


def big_instance(folder: Path, side: int) -> Path:
    """A single-frame CT instance of ``side`` x ``side`` 16-bit pixels, written without holding its
    pixels in memory: the header by pydicom, then the Pixel Data element by hand, in 1 MiB chunks."""
    [template] = ct_series(folder / "template", 1)
    dataset = dcmread(template)
    del dataset.PixelData
    dataset.Rows = dataset.Columns = side
    path = folder / "big.dcm"
    dataset.save_as(path, enforce_file_format=True)
    length = side * side * 2
    with path.open("ab") as out:
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))  # explicit VR little endian
        chunk = bytes(range(256)) * (MiB // 256)
        for _ in range(length // MiB):
            out.write(chunk)
    return path


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM, kB in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match[1]) * 1024


@pytest.fixture
def gateway_process(aws: Aws, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], tuple[str, int]]]:
    """``python -m gateway`` on a free port; no upload during the test (a long idle time)."""
    env = {
        **os.environ,
        "ICHSEG_GATEWAY_SPOOL_DIR": str(tmp_path / "spool"),
        "ICHSEG_GATEWAY_HOST": "127.0.0.1",
        "ICHSEG_GATEWAY_PORT": "0",
        "ICHSEG_GATEWAY_IDLE_SECONDS": "600",
        "ICHSEG_BUCKET": aws.bucket,
        "ICHSEG_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "DICOM gateway ICHSEG on 127.0.0.1:PORT (Ctrl-C stops)"
        match = re.search(r" on ([0-9.]+):(\d+) ", line)
        assert match, line
        yield process, (match[1], int(match[2]))
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_a_big_instance_is_streamed_not_held_in_memory(
    gateway_process: tuple[subprocess.Popen[str], tuple[str, int]], tmp_path: Path
) -> None:
    process, address = gateway_process
    path = big_instance(tmp_path, side=8192)  # 128 MiB of pixels
    size = path.stat().st_size
    # Warm up (imports, the first association's threads) with a small instance first.
    small = ct_series(tmp_path / "small", 1)
    assert "(Success)" in storescu(address, small)
    before = peak_rss_bytes(process.pid)

    output = storescu(address, [path])
    assert "Received Store Response (Success)" in output, output
    grown = peak_rss_bytes(process.pid) - before
    spooled = wait_until(lambda: list((tmp_path / "spool" / "incoming").rglob("*.dcm")), timeout=30)
    assert max(p.stat().st_size for p in spooled) >= size  # the whole instance arrived
    # Decoded in memory, it took over 2x its size; streamed, about one PDU and a 1 MiB copy buffer.
    assert grown < 32 * MiB, f"peak RSS grew by {grown / MiB:.0f} MiB for a {size / MiB:.0f} MiB instance"
