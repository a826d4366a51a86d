"""The SageMaker model.tar.gz: exactly what the server needs, reproducible, and servable as extracted."""

from __future__ import annotations

import json
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest

from ichseg.endpoint_protocol import (
    CONTENT_TYPE,
    CUSTOM_ATTRIBUTES_HEADER,
    ResponseAttributes,
    decode_slices,
    encode_slices,
)
from model_export.packaging import CARD_NAME, DEFAULT_MODEL_NAME, archive_members, main, package_model
from serving.server import create_app
from tests.onnx_fixtures import build_tiny_model, head_phantom
from tests.serving.test_endpoint_server import ping_status, start_endpoint, stop_endpoint, wait_until

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "infrastructure" / "endpoint" / "serve"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model as the export leaves it: any file name, in a folder of its own."""
    return build_tiny_model(tmp_path_factory.mktemp("export") / "run-42.onnx", name="ichseg-unet", version="1.2.3")


def extract(archive: Path, into: Path) -> Path:
    with tarfile.open(archive, "r:gz") as opened:
        opened.extractall(into, filter="data")  # what SageMaker does into /opt/ml/model
    return into


def test_the_archive_holds_the_model_under_the_served_name_and_a_card_flat_at_its_root(
    trained: Path, tmp_path: Path
) -> None:
    packaged = package_model(trained, tmp_path / "model.tar.gz")

    assert archive_members(packaged.archive) == [DEFAULT_MODEL_NAME, CARD_NAME]
    assert packaged.members == (DEFAULT_MODEL_NAME, CARD_NAME)
    with tarfile.open(packaged.archive, "r:gz") as opened:
        for member in opened.getmembers():
            assert member.isfile() and member.mode == 0o644 and "/" not in member.name
        assert opened.extractfile(DEFAULT_MODEL_NAME).read() == trained.read_bytes()


def test_without_a_written_card_one_is_rendered_from_the_metadata(trained: Path, tmp_path: Path) -> None:
    extracted = extract(package_model(trained, tmp_path / "model.tar.gz").archive, tmp_path / "x")
    card = (extracted / CARD_NAME).read_text()
    assert card.startswith("# Model card: ichseg-unet 1.2.3")
    assert '"pixel_threshold": 0.5' in card and "Not for clinical use" in card


def test_the_card_beside_the_model_or_given_is_packaged(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "models" / "ichseg-unet.onnx")
    (model.parent / CARD_NAME).write_text("# Written card\n")
    extracted = extract(package_model(model, tmp_path / "a.tar.gz").archive, tmp_path / "a")
    assert (extracted / CARD_NAME).read_text() == "# Written card\n"

    other = tmp_path / "other-card.md"
    other.write_text("# Another card\n")
    extracted = extract(package_model(model, tmp_path / "b.tar.gz", card=other).archive, tmp_path / "b")
    assert (extracted / CARD_NAME).read_text() == "# Another card\n"


def test_variants_keep_their_names_and_may_not_collide(trained: Path, tmp_path: Path) -> None:
    fp16 = build_tiny_model(tmp_path / "ichseg-unet-fp16.onnx", name="ichseg-unet", version="1.2.3-fp16")
    packaged = package_model(trained, tmp_path / "model.tar.gz", variants=[fp16])
    assert archive_members(packaged.archive) == [DEFAULT_MODEL_NAME, "ichseg-unet-fp16.onnx", CARD_NAME]

    clash = build_tiny_model(tmp_path / "clash" / DEFAULT_MODEL_NAME)
    with pytest.raises(ValueError, match="overwrite"):
        package_model(trained, tmp_path / "bad.tar.gz", variants=[clash])


def test_packaging_is_reproducible_byte_for_byte(trained: Path, tmp_path: Path) -> None:
    first = package_model(trained, tmp_path / "one.tar.gz").archive.read_bytes()
    second = package_model(trained, tmp_path / "two.tar.gz").archive.read_bytes()
    assert first == second


def test_the_cli_writes_the_archive_and_reports_it(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "build" / "model.tar.gz"
    assert main(["--model", str(trained), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["members"] == [DEFAULT_MODEL_NAME, CARD_NAME]
    assert (report["model"], report["version"]) == ("ichseg-unet", "1.2.3")
    assert out.is_file() and not out.with_name("model.tar.gz.partial").exists()


@pytest.mark.parametrize("problem", ["no-metadata", "missing", "not-onnx"])
def test_the_cli_refuses_models_the_server_could_not_serve(
    problem: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = tmp_path / "model.onnx"
    if problem == "no-metadata":
        build_tiny_model(model, with_metadata=False)
    elif problem == "not-onnx":
        model.write_bytes(b"\x00\xffnot a protobuf at all" * 10)
    assert main(["--model", str(model), "--out", str(tmp_path / "model.tar.gz")]) == 2
    assert capsys.readouterr().err.startswith("error:")
    assert not (tmp_path / "model.tar.gz").exists()


def test_the_server_runs_from_the_extracted_archive(trained: Path, tmp_path: Path) -> None:
    model_dir = extract(package_model(trained, tmp_path / "model.tar.gz").archive, tmp_path / "opt-ml-model")
    client = create_app(model_dir / DEFAULT_MODEL_NAME, background=False).test_client()
    assert client.get("/ping").status_code == 200
    response = client.post("/invocations", data=encode_slices(head_phantom()), content_type=CONTENT_TYPE)
    assert response.status_code == 200
    assert ResponseAttributes.decode(response.headers[CUSTOM_ATTRIBUTES_HEADER]).version == "1.2.3"


def test_the_sagemaker_serve_script_starts_the_endpoint_from_the_extracted_archive(
    trained: Path, tmp_path: Path
) -> None:
    assert os.access(SERVE, os.X_OK), "SageMaker runs `serve` as an executable"
    model_dir = extract(package_model(trained, tmp_path / "model.tar.gz").archive, tmp_path / "opt-ml-model")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # `ichseg` from this venv
        "ICHSEG_MODEL": str(model_dir / DEFAULT_MODEL_NAME),
        "ICHSEG_HOST": "127.0.0.1",
        "SAGEMAKER_BIND_TO_PORT": "0",
    }
    process, url = start_endpoint([str(SERVE)], env=env)
    try:
        wait_until(lambda: ping_status(url) == 200)
        request = urllib.request.Request(
            f"{url}/invocations", data=encode_slices(head_phantom()), headers={"Content-Type": CONTENT_TYPE}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert decode_slices(response.read()).shape == (2, 96, 80)
    finally:
        returncode, stderr = stop_endpoint(process)
    assert returncode == 0, stderr
