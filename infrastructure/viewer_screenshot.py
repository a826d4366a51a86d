"""The README's picture of the results viewer: the demo's journey (local stack, shipped model,
committed sample scan), then the viewer on its job in headless Chromium, saved as a small PNG.

    .venv/bin/python -m infrastructure.viewer_screenshot [--out docs/viewer.png]

Needs Debian's chromium and chromium-driver (``make browser``). Run again after a visible change
to the viewer; the picture is committed.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

from ichseg.paths import REPO_ROOT, SAMPLE_VIDEO, SHIPPED_MODEL

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1280, 820)
PALETTE_COLOURS = 128
"""Quantised to a palette: the page is flat panels and a grey slice, so 128 colours look the same
at a fraction of a true-colour PNG's size (the README picture must stay small)."""


def screenshot(out: Path, model: Path = SHIPPED_MODEL, sample: Path = SAMPLE_VIDEO) -> Path:
    """Run the demo job on a fresh local stack and save the viewer's page on it to ``out``."""
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    from infrastructure.demo import DEMO_UID, app_journey, viewer_link
    from infrastructure.local_stack import LocalStack, StackSettings

    os.environ["SE_OFFLINE"] = "true"  # the system chromedriver only; Selenium Manager downloads nothing
    with (
        tempfile.TemporaryDirectory() as scratch,
        LocalStack(StackSettings(state_dir=Path(scratch) / "stack", model=model)) as stack,
    ):
        status = app_journey(stack, sample, Path(scratch) / "results")
        if status["state"] != "DONE":
            raise RuntimeError(f"the demo job ended {status['state']}")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
            options.add_argument(argument)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            driver.get(viewer_link(stack.api_url, status["job_id"], stack.token(DEMO_UID)))
            # Opens on the most likely slice; wait until it is drawn with its outline.
            WebDriverWait(driver, 60).until(
                lambda d: d.execute_script("return document.getElementById('slice').dataset.drawn") == "outlined"
            )
            png = driver.get_screenshot_as_png()
        finally:
            driver.quit()
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(PALETTE_COLOURS)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "viewer.png")
    args = parser.parse_args(argv)
    path = screenshot(args.out)
    print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
