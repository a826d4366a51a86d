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
    with GatewayService(settings, metrics=metrics) as first:
        assert storescu(first.address, files[:3]).count("(Success)") == 3
    # Stopped before the series was idle: nothing uploaded, the three instances wait on disk.
    assert aws.ingest_keys() == []
    assert len(list((settings.spool_dir / "incoming").rglob("*.dcm"))) == 3
    with GatewayService(settings, metrics=metrics) as second:
        assert storescu(second.address, files[3:]).count("(Success)") == 3
        [key] = wait_until(aws.ingest_keys)
        expected = sorted(f"{dcmread(f).SOPInstanceUID}.dcm" for f in files)
        assert members(aws, key) == expected
        wait_until(lambda: not list((settings.spool_dir / "claimed").rglob("*.dcm")))
    assert aws.ingest_keys() == [key]
    assert metrics.count("GatewaySeriesUploaded") == 1


def test_killed_after_claiming_a_series_uploads_it_on_start(
    make_settings: Callable[..., GatewaySettings], aws: Aws, tmp_path: Path, metrics: RecordingMetrics
) -> None:
    settings = make_settings()
    files = ct_series(tmp_path / "series", 3)
    spool = Spool(settings.spool_dir, settings.max_spool_bytes)
    ref = spooled(files, spool)
    assert spool.claim(ref)
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
    assert spool.claim(ref)
    packed = spool.pack(ref)
    key = keys.gateway_ingest_key("SITEA", packed.digest)
    aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=packed.path.read_bytes())  # the killed gateway's PUT
    etag = aws.s3.head_object(Bucket=aws.bucket, Key=key)["ETag"]
    with GatewayService(settings, metrics=metrics):
        wait_until(lambda: metrics.count("GatewaySeriesResent") == 1)
    assert aws.ingest_keys() == [key]
    assert aws.s3.head_object(Bucket=aws.bucket, Key=key)["ETag"] == etag
    assert metrics.count("GatewaySeriesUploaded") == 0
    assert len(list((settings.spool_dir / "sent").rglob("*.dcm"))) == 3


def test_an_instance_arriving_during_an_upload_makes_a_new_complete_series(tmp_path: Path) -> None:
    """A late instance after the claim is not lost: its series completes again, with everything."""
    spool = Spool(tmp_path / "spool", 10**9)
    files = ct_series(tmp_path / "series", 3)
    ref = spooled(files[:2], spool)
    assert spool.claim(ref)
    spooled(files[2:], spool)  # arrives while the first two are being uploaded
    assert not spool.claim(ref)  # waits for the first claim to be sent
    first = spool.pack(ref)
    spool.mark_sent(ref)
    assert spool.claim(ref)
    second = spool.pack(ref)
    assert (first.instances, second.instances) == (2, 3)
    assert first.digest != second.digest
    # The same instances again (a PACS retrying) give the very same zip: the same key, no new job.
    spool.mark_sent(ref)
    spooled(files[1:2], spool)
    assert spool.claim(ref)
    assert spool.pack(ref).digest == second.digest


def test_killed_half_way_through_moving_to_sent_packs_the_same_zip_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 10**9)
    files = ct_series(tmp_path / "series", 4)
    ref = spooled(files, spool)
    assert spool.claim(ref)
    before = spool.pack(ref)
    # The kill: two instances made it to sent/, two are still claimed.
    claimed = sorted((tmp_path / "spool" / "claimed" / ref.relative).glob("*.dcm"))
    sent = tmp_path / "spool" / "sent" / ref.relative
    sent.mkdir(parents=True)
    for path in claimed[:2]:
        path.rename(sent / path.name)
    resumed = Spool(tmp_path / "spool", 10**9)
    assert resumed.series("claimed") == [ref]
    again = resumed.pack(ref)
    assert (again.digest, again.instances) == (before.digest, 4)
    resumed.mark_sent(ref)
    assert len(list(sent.glob("*.dcm"))) == 4 and resumed.series("claimed") == []
    assert resumed.used_bytes == sum(f.stat().st_size for f in sent.glob("*.dcm"))
