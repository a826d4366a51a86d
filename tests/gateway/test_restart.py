"""A gateway stopped or killed at any point loses nothing and duplicates nothing."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread

from gateway.service import GatewayService
from gateway.settings import GatewaySettings
from gateway.spool import SeriesRef, Spool
from ichseg.pipeline import keys
from tests.gateway.conftest import Aws, RecordingMetrics, ct_series, storescu, wait_until


def members(aws: Aws, key: str) -> list[str]:
    body = aws.s3.get_object(Bucket=aws.bucket, Key=key)["Body"].read()
    return zipfile.ZipFile(io.BytesIO(body)).namelist()


def member_names(files: list[Path]) -> list[str]:
    """The zip members the gateway makes of these instances: ``{series uid}/{sop uid}.dcm``, sorted."""
    return sorted(f"{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm" for ds in map(dcmread, files))


def spooled(files: list[Path], spool: Spool, site: str = "SITEA") -> SeriesRef:
    """Put instances on a spool the way the receiver does (encoded file, preamble and meta)."""
    first = dcmread(files[0])
    ref = SeriesRef(site, first.StudyInstanceUID, first.SeriesInstanceUID)
    for path in files:
        spool.store(ref, dcmread(path).SOPInstanceUID, path.read_bytes())
    return ref


def test_restart_mid_series_gives_one_zip_of_every_instance(
    make_settings: Callable[..., GatewaySettings], aws: Aws, tmp_path: Path, metrics: RecordingMetrics
) -> None:
    files = ct_series(tmp_path / "series", 6)
    settings = make_settings(idle_seconds=1.5)
    # The first gateway stops long before its study could be idle, however slow the machine.
    with GatewayService(make_settings(idle_seconds=600), metrics=metrics) as first:
        assert storescu(first.address, files[:3]).count("(Success)") == 3
    # Stopped before the study was idle: nothing uploaded, the three instances wait on disk.
    assert aws.ingest_keys() == []
    assert len(list((settings.spool_dir / "incoming").rglob("*.dcm"))) == 3
    with GatewayService(settings, metrics=metrics) as second:
        assert storescu(second.address, files[3:]).count("(Success)") == 3
        [key] = wait_until(aws.ingest_keys)
        assert members(aws, key) == member_names(files)
        wait_until(lambda: not list((settings.spool_dir / "claimed").rglob("*.dcm")))
    assert aws.ingest_keys() == [key]
    assert metrics.count("GatewayStudiesUploaded") == 1


def test_killed_after_claiming_a_study_uploads_it_on_start(
    make_settings: Callable[..., GatewaySettings], aws: Aws, tmp_path: Path, metrics: RecordingMetrics
) -> None:
    settings = make_settings()
    files = ct_series(tmp_path / "series", 3)
    spool = Spool(settings.spool_dir, settings.max_spool_bytes)
    ref = spooled(files, spool)
    assert spool.claim(ref.study)
    (settings.spool_dir / "tmp" / "half-written.dcm").write_bytes(b"\0" * 10)  # a write cut short by the kill
    with GatewayService(settings, metrics=metrics):
        [key] = wait_until(aws.ingest_keys)
        assert len(members(aws, key)) == 3
    assert not (settings.spool_dir / "tmp" / "half-written.dcm").exists()
    assert len(list((settings.spool_dir / "sent").rglob("*.dcm"))) == 3


def test_killed_between_the_put_and_the_move_puts_nothing_twice(
    make_settings: Callable[..., GatewaySettings], aws: Aws, tmp_path: Path, metrics: RecordingMetrics
) -> None:
    settings = make_settings()
    files = ct_series(tmp_path / "series", 3)
    spool = Spool(settings.spool_dir, settings.max_spool_bytes)
    ref = spooled(files, spool)
    assert spool.claim(ref.study)
    packed = spool.pack(ref.study)
    key = keys.gateway_ingest_key("SITEA", packed.digest)
    aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=packed.path.read_bytes())  # the killed gateway's PUT
    etag = aws.s3.head_object(Bucket=aws.bucket, Key=key)["ETag"]
    with GatewayService(settings, metrics=metrics):
        wait_until(lambda: metrics.count("GatewayStudiesResent") == 1)
    assert aws.ingest_keys() == [key]
    assert aws.s3.head_object(Bucket=aws.bucket, Key=key)["ETag"] == etag
    assert metrics.count("GatewayStudiesUploaded") == 0
    assert len(list((settings.spool_dir / "sent").rglob("*.dcm"))) == 3


def test_an_instance_arriving_during_an_upload_makes_a_new_complete_study(tmp_path: Path) -> None:
    """A late instance after the claim is not lost: its study completes again, with everything."""
    spool = Spool(tmp_path / "spool", 10**9)
    files = ct_series(tmp_path / "series", 3)
    study = spooled(files[:2], spool).study
    assert spool.claim(study)
    spooled(files[2:], spool)  # arrives while the first two are being uploaded
    assert not spool.claim(study)  # waits for the first claim to be sent
    first = spool.pack(study)
    spool.mark_sent(study)
    assert spool.claim(study)
    second = spool.pack(study)
    assert (first.instances, second.instances) == (2, 3)
    assert first.digest != second.digest
    # The same instances again (a PACS retrying) give the very same zip: the same key, no new job.
    spool.mark_sent(study)
    spooled(files[1:2], spool)
    assert spool.claim(study)
    assert spool.pack(study).digest == second.digest


def test_killed_half_way_through_moving_to_sent_packs_the_same_zip_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 10**9)
    thick = ct_series(tmp_path / "thick", 4)
    thin = ct_series(tmp_path / "thin", 4, study_uid=dcmread(thick[0]).StudyInstanceUID)
    study = spooled(thick, spool).study
    assert spooled(thin, spool).study == study
    assert spool.claim(study)
    before = spool.pack(study)
    assert (before.series, before.instances) == (2, 8)
    # The kill: one series made it to sent/ whole, the other half; the rest is still claimed.
    claimed = tmp_path / "spool" / "claimed" / study.relative
    sent = tmp_path / "spool" / "sent" / study.relative
    for number, series in enumerate(sorted(claimed.iterdir())):
        (sent / series.name).mkdir(parents=True)
        for path in sorted(series.glob("*.dcm"))[: 4 if number == 0 else 2]:
            path.rename(sent / series.name / path.name)
    resumed = Spool(tmp_path / "spool", 10**9)
    assert resumed.studies("claimed") == [study] and resumed.claimed_instances(study) == 2
    again = resumed.pack(study)
    assert (again.digest, again.series, again.instances) == (before.digest, 2, 8)
    resumed.mark_sent(study)
    assert len(list(sent.rglob("*.dcm"))) == 8 and resumed.studies("claimed") == []
    assert resumed.used_bytes == sum(f.stat().st_size for f in sent.rglob("*.dcm"))


def test_killed_after_the_last_move_to_sent_only_tidies_up(
    make_settings: Callable[..., GatewaySettings], aws: Aws, tmp_path: Path, metrics: RecordingMetrics
) -> None:
    """Every instance reached sent/ (so S3 had the zip) but the claimed folder was left: nothing to upload."""
    settings = make_settings()
    spool = Spool(settings.spool_dir, settings.max_spool_bytes)
    ref = spooled(ct_series(tmp_path / "series", 2), spool)
    assert spool.claim(ref.study)
    spool.mark_sent(ref.study)
    (settings.spool_dir / "claimed" / ref.relative).mkdir(parents=True)  # the folder the kill left behind
    with GatewayService(settings, metrics=metrics) as service:
        wait_until(lambda: service.spool is not None and service.spool.studies("claimed") == [])
    assert aws.ingest_keys() == []
    assert metrics.count("GatewayStudiesUploaded") + metrics.count("GatewayStudiesResent") == 0
