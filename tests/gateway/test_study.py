"""A study is the unit of completion: every series of it goes up in one zip, one job, one SEG + SR back."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from gateway.service import GatewayService
from gateway.settings import GatewaySettings
from gateway.spool import SeriesRef, Spool, StudyRef, uid_tag
from tests.gateway.conftest import Aws, RecordingMetrics, ct_series, storescu, wait_until
from tests.patient_identifiers import identifier_leaks

IDLE = 2.0
"""Long enough that two storescu runs back to back (a process start each) fall inside one study's idle time."""


def members(aws: Aws, key: str) -> list[str]:
    body = aws.s3.get_object(Bucket=aws.bucket, Key=key)["Body"].read()
    return zipfile.ZipFile(io.BytesIO(body)).namelist()


def member_names(*series: list[Path]) -> list[str]:
    """The zip members the gateway makes of these instances: ``{series uid}/{sop uid}.dcm``, sorted."""
    return sorted(f"{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm" for files in series for ds in map(dcmread, files))


def study_of(tmp_path: Path, *counts: int) -> list[list[Path]]:
    """Series of one study (scout, thick brain, thin brain...), ``counts[i]`` instances in series ``i``."""
    first = ct_series(tmp_path / "series-0", counts[0])
    study_uid = dcmread(first[0]).StudyInstanceUID
    rest = [ct_series(tmp_path / f"series-{i}", count, study_uid=study_uid) for i, count in enumerate(counts[1:], 1)]
    return [first, *rest]


def stays(condition: Callable[[], bool], seconds: float) -> bool:
    """``condition`` holds all along ``seconds`` (nothing more is uploaded later)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def study_gateway(
    make_settings: Callable[..., GatewaySettings], metrics: RecordingMetrics
) -> Callable[..., GatewayService]:
    def start(**overrides: float) -> GatewayService:
        return GatewayService(make_settings(**{"idle_seconds": IDLE, **overrides}), metrics=metrics)

    return start


def test_two_series_sent_back_to_back_are_one_zip(
    study_gateway: Callable[..., GatewayService],
    aws: Aws,
    tmp_path: Path,
    metrics: RecordingMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO")
    thick, thin = study_of(tmp_path, 3, 5)
    with study_gateway() as service:
        assert storescu(service.address, thick).count("(Success)") == 3
        assert storescu(service.address, thin).count("(Success)") == 5  # a second association, same study
        [key] = wait_until(aws.ingest_keys)
        assert members(aws, key) == member_names(thick, thin)
        assert stays(lambda: aws.ingest_keys() == [key], IDLE + 1)
    assert metrics.count("GatewayStudiesUploaded") == 1
    study = StudyRef("SITEA", dcmread(thick[0]).StudyInstanceUID)
    assert f"study {study}: 2 series, 8 instances uploaded as job" in caplog.text
    assert f"study-{uid_tag(study.study_uid)}" in caplog.text
    assert study.study_uid not in caplog.text and identifier_leaks(caplog.text) == []


def test_interleaved_series_are_one_zip_and_another_study_is_another(
    study_gateway: Callable[..., GatewayService], aws: Aws, tmp_path: Path, metrics: RecordingMetrics
) -> None:
    scout, brain = study_of(tmp_path / "one", 2, 4)
    [other] = study_of(tmp_path / "two", 3)
    interleaved = [brain[0], scout[0], other[0], brain[1], scout[1], brain[2], other[1], brain[3], other[2]]
    with study_gateway() as service:
        assert storescu(service.address, interleaved).count("(Success)") == 9
        keys = wait_until(lambda: len(aws.ingest_keys()) == 2 and aws.ingest_keys())
        assert stays(lambda: aws.ingest_keys() == keys, 1.0)
    assert sorted(members(aws, key) for key in keys) == sorted([member_names(scout, brain), member_names(other)])
    assert metrics.count("GatewayStudiesUploaded") == 2


def test_a_partial_re_send_of_an_uploaded_study_creates_nothing(
    study_gateway: Callable[..., GatewayService], aws: Aws, tmp_path: Path, metrics: RecordingMetrics
) -> None:
    scout, brain, bone = study_of(tmp_path, 2, 4, 4)
    with study_gateway() as service:
        storescu(service.address, [*scout, *brain, *bone])
        [key] = wait_until(aws.ingest_keys)
        etag = aws.s3.head_object(Bucket=aws.bucket, Key=key)["ETag"]
        # The PACS retries part of it: one whole series and one instance of another.
        assert storescu(service.address, [*brain, bone[1]]).count("(Success)") == 5
        wait_until(lambda: metrics.count("GatewayStudiesResent") == 1)
    assert aws.ingest_keys() == [key]
    assert aws.s3.head_object(Bucket=aws.bucket, Key=key)["ETag"] == etag  # never PUT again
    assert metrics.count("GatewayStudiesUploaded") == 1


def test_a_series_arriving_after_the_upload_makes_a_new_zip_of_the_whole_study(
    study_gateway: Callable[..., GatewayService], aws: Aws, tmp_path: Path, metrics: RecordingMetrics
) -> None:
    scout, brain, late = study_of(tmp_path, 2, 4, 3)
    with study_gateway() as service:
        storescu(service.address, [*scout, *brain])
        [first] = wait_until(aws.ingest_keys)
        storescu(service.address, late)  # e.g. a reconstruction the technologist sent later
        keys = wait_until(lambda: len(aws.ingest_keys()) == 2 and aws.ingest_keys())
    [second] = [key for key in keys if key != first]
    assert members(aws, first) == member_names(scout, brain)
    assert members(aws, second) == member_names(scout, brain, late)  # new content: a new job
    assert metrics.count("GatewayStudiesUploaded") == 2


def test_restart_mid_study_gives_one_zip_of_every_series(
    study_gateway: Callable[..., GatewayService], aws: Aws, tmp_path: Path, metrics: RecordingMetrics
) -> None:
    done, half = study_of(tmp_path, 3, 4)
    with study_gateway(idle_seconds=600) as first:  # stops long before the study could be idle
        assert storescu(first.address, [*done, *half[:2]]).count("(Success)") == 5
    # Stopped before the study was idle: nothing uploaded, both series wait on disk.
    assert aws.ingest_keys() == []
    spool_dir = first.settings.spool_dir
    assert len(list((spool_dir / "incoming").glob("*/*/*"))) == 2
    with study_gateway() as second:
        assert storescu(second.address, half[2:]).count("(Success)") == 2
        [key] = wait_until(aws.ingest_keys)
        assert members(aws, key) == member_names(done, half)
        wait_until(lambda: not list((spool_dir / "claimed").rglob("*.dcm")))
        assert stays(lambda: aws.ingest_keys() == [key], 1.0)
    assert metrics.count("GatewayStudiesUploaded") == 1
    assert len(list((spool_dir / "sent").rglob("*.dcm"))) == 7


def test_a_study_is_idle_only_once_every_series_is(tmp_path: Path) -> None:
    """The idle time runs from the last instance of any series of the study (a clock the test moves)."""
    now = [100.0]
    spool = Spool(tmp_path / "spool", 10**9, clock=lambda: now[0])
    first, second = study_of(tmp_path, 1, 1)
    refs = [
        SeriesRef("SITEA", dcmread(f[0]).StudyInstanceUID, dcmread(f[0]).SeriesInstanceUID) for f in (first, second)
    ]
    spool.store(refs[0], dcmread(first[0]).SOPInstanceUID, first[0].read_bytes())
    now[0] += 8.0
    spool.store(refs[1], dcmread(second[0]).SOPInstanceUID, second[0].read_bytes())
    now[0] += 8.0  # the first series has been quiet for 16 s, the study for 8 s
    assert spool.idle(10.0) == []
    now[0] += 2.0
    assert spool.idle(10.0) == [refs[0].study]
    assert spool.claim(refs[0].study)
    claimed = tmp_path / "spool" / "claimed" / refs[0].study.relative
    assert sorted(p.name for p in claimed.iterdir()) == sorted(r.series_uid for r in refs)
    assert spool.idle(10.0) == [] and spool.studies("incoming") == []
