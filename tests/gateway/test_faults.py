"""The gateway under the faults of the fault/security probe (issue 19): bare TCP connections (load
balancer health checks), broken instances, colliding calling AE titles, parallel writes against the
spool's bound. Memory under big instances: ``test_memory.py``."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from gateway.instance import StoreStatus
from gateway.service import GatewayService
from gateway.settings import Destination, GatewaySettings, SettingsError, parse_destinations, site_of
from gateway.spool import SeriesRef, Spool, SpoolFull
from ichseg.pipeline import keys
from tests.gateway.conftest import Aws, RecordingMetrics, ct_series, storescu, wait_until


def spooled(service: GatewayService) -> list[Path]:
    return sorted((service.settings.spool_dir / "incoming").rglob("*.dcm"))


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@contextmanager
def bare_connections(address: tuple[str, int], count: int) -> Iterator[list[socket.socket]]:
    """``count`` TCP connections that never send an A-ASSOCIATE-RQ (what a TCP health check is)."""
    sockets = [socket.create_connection(address, timeout=30) for _ in range(count)]
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def echo(address: tuple[str, int], calling: str = "SITEA") -> subprocess.CompletedProcess[str]:
    host, port = address
    return subprocess.run(
        ["echoscu", "-aet", calling, "-aec", "ICHSEG", host, str(port)], capture_output=True, text=True, timeout=60
    )


# ---------------------------------------------------------------------------------- 1. health checks


def test_bare_tcp_connections_take_no_association_slot_and_are_closed_soon(
    make_settings: Callable[..., GatewaySettings], aws: Aws, metrics: RecordingMetrics, tmp_path: Path
) -> None:
    files = ct_series(tmp_path / "series", 2)
    settings = make_settings(max_associations=2, association_request_seconds=2.0)
    with GatewayService(settings, metrics=metrics) as service:
        address = service.address
        for _ in range(6):  # connect-then-close, as a load balancer's TCP health check does
            socket.create_connection(address, timeout=30).close()
        with bare_connections(address, 6) as held:  # and connections left open, more than the slots
            # Real associations still get both slots (before: "Local limit exceeded" for ~30 s).
            ae = AE(ae_title="SITEA")
            ae.add_requested_context(Verification)
            first = ae.associate(*address, ae_title="ICHSEG")
            second = ae.associate(*address, ae_title="ICHSEG")
            assert first.is_established and second.is_established
            third = ae.associate(*address, ae_title="ICHSEG")
            assert third.is_rejected  # the bound itself still holds for real associations
            first.release()
            second.release()
            wait_until(lambda: service.receiver is not None and service.receiver.associations == 0, timeout=30)
            done = echo(address)
            assert done.returncode == 0, done.stderr
            output = storescu(address, files)
            assert output.count("Received Store Response (Success)") == 2, output
            # The gateway closes a connection that sent no request after association_request_seconds.
            for sock in held:
                with contextlib.suppress(ConnectionResetError):  # a reset is closed too
                    assert sock.recv(1) == b""  # EOF within the 30 s socket timeout


# ---------------------------------------------------------------------------------- 3. broken instances


def crafted(folder: Path, name: str, change: Callable[..., None]) -> Path:
    """One instance of a fresh CT series, changed by ``change(dataset)`` and saved as ``name``."""
    [source] = ct_series(folder / f"{name}-source", 1)
    dataset = dcmread(source)
    change(dataset)
    path = folder / f"{name}.dcm"
    dataset.save_as(path)
    return path


def send_raw(address: tuple[str, int], path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """C-STORE the file's bytes as they are, under the SOP class its file meta names: pynetdicom reads
    nothing of the data set (storescu refuses to send a truncated file, and takes the SOP class from
    the data set)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="SITEA")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)  # the files' own transfer syntax
    assoc = ae.associate(*address, ae_title="ICHSEG")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def test_broken_instances_get_failure_statuses_and_are_not_spooled(
    gateway: GatewayService, aws: Aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def short_pixels(ds: object) -> None:
        ds.PixelData = ds.PixelData[:64]  # type: ignore[attr-defined]  # 8 x 8 x 16 bit needs 128

    def no_pixels(ds: object) -> None:
        del ds.PixelData  # type: ignore[attr-defined]

    def lower_case(ds: object) -> None:
        ds.Modality = "ct "  # type: ignore[attr-defined]

    cases = {
        "short": (crafted(tmp_path, "short", short_pixels), "0xc000", "Pixel Data holds 64 bytes, the image needs 128"),
        "nopixels": (crafted(tmp_path, "nopixels", no_pixels), "0xa900", "no Pixel Data"),
        "lowercase": (crafted(tmp_path, "lowercase", lower_case), "0xa900", "modality 'ct' is not CT"),
    }
    for name, (path, status, comment) in cases.items():
        output = storescu(gateway.address, [path], verbosity="-d")
        assert f"{status}: Error" in output, (name, output)
        assert comment in output, (name, output)

    # Truncated in transfer: the Pixel Data element says 128 bytes, 88 follow.
    [whole] = ct_series(tmp_path / "whole", 1)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(whole.read_bytes()[:-40])
    assert send_raw(gateway.address, truncated, monkeypatch) == StoreStatus.CANNOT_UNDERSTAND

    # An MR data set sent on the CT presentation context (its file meta says CT Image Storage).
    def mr(ds: object) -> None:
        ds.SOPClassUID, ds.Modality = MRImageStorage, "MR"  # type: ignore[attr-defined]

    assert send_raw(gateway.address, crafted(tmp_path, "mr", mr), monkeypatch) == StoreStatus.DOES_NOT_MATCH_SOP_CLASS

    assert spooled(gateway) == []  # none of them is part of a study
    # A good instance (trailing padding is no part of a CS value) is still taken, in the same way.
    padded = crafted(tmp_path, "padded", lambda ds: setattr(ds, "Modality", "CT "))
    assert send_raw(gateway.address, padded, monkeypatch) == StoreStatus.SUCCESS
    assert [p.name for p in spooled(gateway)] == [f"{dcmread(padded).SOPInstanceUID}.dcm"]


# ---------------------------------------------------------------------------------- 4. AE titles -> sites


def test_every_calling_ae_title_has_its_own_site() -> None:
    titles = ["CT 1", "CT_1", "CT/1", "CT.1", "CT-1", "CT1", "ct1", "A/B", "A B", "A_B"]
    sites = [site_of(title) for title in titles]
    assert len(set(sites)) == len(titles), sites  # before: CT 1, CT_1 and CT/1 were all CT_1
    assert all(keys.is_valid_site(site) for site in sites)
    assert site_of("CT_SCANNER-1") == "CT_SCANNER-1"  # the usual titles are their own site
    assert site_of("CT 1") == "CT.201" and site_of(" CT1 ") == "CT1"  # padding is no part of a title
    assert keys.is_valid_site(site_of("./" * 8))  # 16 escaped characters: 48, within the layout's 64
    with pytest.raises(SettingsError):
        site_of("___")


def test_destinations_of_look_alike_titles_stay_apart_and_duplicates_are_refused() -> None:
    destinations = parse_destinations("CT 1=HOSPA@10.0.0.1:104,CT_1=HOSPB@10.0.0.2:104")
    settings = GatewaySettings(spool_dir=Path("/nonexistent"), destinations=destinations)
    assert settings.destination_for(site_of("CT 1")) == Destination("HOSPA", "10.0.0.1", 104)
    assert settings.destination_for(site_of("CT_1")) == Destination("HOSPB", "10.0.0.2", 104)
    with pytest.raises(SettingsError, match=r"'CT1' and 'CT1 ' are the same calling AE title 'CT1'"):
        parse_destinations("CT1=HOSPA@10.0.0.1:104, CT1 =HOSPB@10.0.0.2:104")
    with pytest.raises(SettingsError, match="is not a calling AE title"):
        parse_destinations("A-TITLE-LONGER-THAN-16=HOSPA@10.0.0.1:104")


def test_halves_of_a_study_from_two_look_alike_titles_are_not_merged(
    gateway: GatewayService, aws: Aws, tmp_path: Path
) -> None:
    files = ct_series(tmp_path / "series", 4)  # one study, one series
    first = storescu(gateway.address, files[:2], calling="A/B")
    second = storescu(gateway.address, files[2:], calling="A B")
    assert first.count("(Success)") == 2 and second.count("(Success)") == 2, first + second
    found = wait_until(lambda: len(aws.ingest_keys()) == 2 and aws.ingest_keys())
    assert sorted(key.split("/")[1] for key in found) == sorted([site_of("A/B"), site_of("A B")])


def test_a_calling_ae_title_that_names_no_site_is_rejected_at_association(gateway: GatewayService) -> None:
    done = echo(gateway.address, calling="___")
    assert done.returncode != 0 and "Calling AE Title Not Recognized" in done.stdout + done.stderr, done.stderr


# ---------------------------------------------------------------------------------- 5. the spool's bound


def test_parallel_writes_never_pass_the_spool_bound(tmp_path: Path) -> None:
    size, writers, bound = 100_000, 16, 1_000_000
    spool = Spool(tmp_path / "spool", bound)
    start = threading.Barrier(writers)
    peak = 0
    watching = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not watching.is_set():
            peak = max(peak, spool.accounted_bytes)
            time.sleep(0.0005)

    def write(index: int) -> bool:
        ref = SeriesRef("SITEA", f"1.2.{index}", f"1.2.{index}.1")
        start.wait(timeout=60)  # all at once: each checks for room while the others write
        try:
            spool.store(ref, f"1.2.{index}.1.1", b"\0" * size)
        except SpoolFull:
            return False
        return True

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(writers) as pool:
        stored = sum(pool.map(write, range(writers)))
    watching.set()
    watcher.join()
    assert stored == bound // size  # as many as fit, no more (before: all 16, 1.6 MB on disk)
    assert spool.used_bytes == spool.accounted_bytes == stored * size <= bound
    assert peak <= bound
    assert disk_bytes(tmp_path / "spool") == stored * size


def test_parallel_associations_never_pass_the_spool_bound(
    make_settings: Callable[..., GatewaySettings], aws: Aws, metrics: RecordingMetrics, tmp_path: Path
) -> None:
    studies = [ct_series(tmp_path / f"study{i}", 3) for i in range(8)]
    one = max(f.stat().st_size for files in studies for f in files)
    bound = 10 * one  # room for about 10 of the 24 instances
    settings = make_settings(max_spool_bytes=bound, idle_seconds=600.0)
    with GatewayService(settings, metrics=metrics) as service:
        host, port = service.address

        def send(files: list[Path]) -> str:  # --no-halt: go on after a refused instance
            command = [
                "storescu",
                "-v",
                "--no-halt",
                "-aet",
                "SITEA",
                "-aec",
                "ICHSEG",
                host,
                str(port),
                *map(str, files),
            ]
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
            return done.stdout + done.stderr

        with ThreadPoolExecutor(8) as pool:
            outputs = list(pool.map(send, studies))
        stored = sum(output.count("Received Store Response (Success)") for output in outputs)
        refused = sum(output.count("(Refused: OutOfResources)") for output in outputs)
        assert 0 < stored < 24 and stored + refused == 24, outputs
        assert service.spool is not None and service.spool.accounted_bytes <= bound
        assert disk_bytes(settings.spool_dir) <= bound
        assert len(spooled(service)) == stored
        largest = max(p.stat().st_size for p in spooled(service))
        assert bound - disk_bytes(settings.spool_dir) < largest  # refused only once it was full
