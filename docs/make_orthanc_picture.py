"""Make ``docs/orthanc-overlay.png``: the overlay series of the demo sample (CT-ICH patient 051) as
the shipped model segments it, in Orthanc's own web interface, seen by headless Chromium.

    .venv/bin/python docs/make_orthanc_picture.py        # needs make dicom-tools browser

The sample is a video of brain-window slices, so the DICOM headers are made up (the patient is
named by the dataset's patient number, never a person); the pixels, the outline and the finding are
the real ones. ``tests/gateway/test_pacs.py`` checks the same path with the test suite's tiny model.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ichseg.inference import OnnxSegmenter, read_in_context, segment_scan  # noqa: E402
from ichseg.paths import SHIPPED_MODEL  # noqa: E402
from ichseg.readers import read_scan  # noqa: E402
from ichseg.scan_context import load_scan_head  # noqa: E402
from ichseg.writers.dicom_sc import build_overlay_series  # noqa: E402
from ichseg.writers.report import build_report  # noqa: E402
from tests.core.test_dicom_objects import _captured  # noqa: E402
from tests.pacs_fixtures import OrthancPacs  # noqa: E402
from tests.scan_fixtures import dicom_series  # noqa: E402
from tests.stack_fixtures import free_ports  # noqa: E402

SAMPLE = REPO / "samples" / "ct-ich-051" / "brain.mp4"
OUT = REPO / "docs" / "orthanc-overlay.png"


def main() -> None:
    """Segment the sample, write its overlay series, show the most bleeding slice in Orthanc Explorer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.browser_fixtures import headless_chromium

    scan = read_scan(SAMPLE)
    segmenter = OnnxSegmenter(str(SHIPPED_MODEL))
    slices, segmentation = segment_scan(scan, segmenter)
    context = read_in_context(segmentation, segmenter.metadata, load_scan_head(None))
    report = build_report(scan.slice_ids, segmentation, segmenter.metadata, (0.45, 0.45), 5.0, None, None, context)
    count, rows, cols = slices.shape
    folder = Path(tempfile.mkdtemp(prefix="ichseg-picture-"))
    series = dicom_series(count=count, rows=rows, cols=cols, pixel_spacing=(0.45, 0.45), step_mm=5.0)
    for ds in series:
        ds.PatientName, ds.PatientID, ds.StudyDescription = "CT-ICH^051", "CT-ICH-051", "CT HEAD (CT-ICH sample)"
    images = build_overlay_series(
        _captured(series, folder), list(slices), segmentation.masks, report, segmenter.metadata.version, "docs-051"
    )
    shown = int(np.argmax(segmentation.masks.reshape(count, -1).sum(axis=1)))
    dicom_port, http_port = free_ports(2)
    pacs = OrthancPacs(folder / "orthanc", "DOCSPACS", dicom_port, http_port, {})
    pacs.start()
    try:
        ids = [pacs.upload(image)["ID"] for image in images]
        driver = headless_chromium()
        driver.get(f"{pacs.url}/app/explorer.html#instance?uuid={ids[shown]}")
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "instance-preview").is_displayed())
        driver.find_element(By.ID, "instance-preview").click()
        time.sleep(2)  # the lightbox fades the image in
        OUT.write_bytes(driver.get_screenshot_as_png())
        driver.quit()
    finally:
        pacs.stop()
    print(f"{OUT}: slice {shown + 1} of {count}, {report['finding']}, {Image.open(io.BytesIO(OUT.read_bytes())).size}")


if __name__ == "__main__":
    main()
