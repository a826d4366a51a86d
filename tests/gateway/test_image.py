"""The gateway image's requirements: pinned as the other images pin them, and enough to run it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("numpy", "cv2", "av", "nibabel", "PIL", "gdcm", "highdicom", "onnxruntime", "firebase_admin", "pydantic")


def pins(name: str) -> dict[str, str]:
    found = {}
    for line in (REPO / "requirements" / name).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)", line)
        if match:
            found[match[1].lower()] = match[3]
    return found


def test_the_gateway_pins_the_versions_the_other_images_pin() -> None:
    gateway = pins("gateway.txt")
    others = {**pins("core.txt"), **pins("lambda.txt"), **pins("runtime.txt")}
    assert set(gateway) == {
        *("pydicom", "pynetdicom", "boto3", "botocore", "aws-lambda-powertools"),
        *("hl7apy", "fhir.resources", "fhir-core", "pydantic", "requests"),  # the RIS's and EHR's messages
    }
    assert {name: others[name] for name in gateway} == gateway


def test_the_gateway_runs_without_the_core_s_heavy_libraries(tmp_path: Path) -> None:
    """Import it with those libraries made unimportable, and receive an echo: nothing reaches for them."""
    script = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError(f"{{name}} is not in the gateway image")
sys.meta_path.insert(0, Block())
from pathlib import Path
from gateway.service import GatewayService
from gateway.settings import GatewaySettings
from pynetdicom import AE
from pynetdicom.sop_class import Verification
settings = GatewaySettings(spool_dir=Path({str(tmp_path)!r}), host="127.0.0.1", port=0, bucket="b")
with GatewayService(settings) as service:
    ae = AE("SITEA")
    ae.add_requested_context(Verification)
    assoc = ae.associate(*service.address, ae_title="ICHSEG")
    assert assoc.send_c_echo().Status == 0
    assoc.release()
print("loaded:", sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1"},
    )
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout
