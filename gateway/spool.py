"""The spool: received instances on disk until S3 has their study, then kept a while to recognise re-sends.

::

    {spool}/incoming/{site}/{study uid}/{series uid}/{sop uid}.dcm   being received
    {spool}/claimed/{site}/{study uid}/{series uid}/...              complete, being uploaded
    {spool}/sent/{site}/{study uid}/{series uid}/...                 uploaded, kept for the retention
    {spool}/sent/{site}/{study uid}/upload.json                      its upload: S3 key and job id
    {spool}/tmp/                                                     files being written, zips being built

The unit of completion is the **study**: a PACS routing rule sends a whole study (scouts, thin and
thick brain series, bone kernel, dose screens) and the pipeline's split stage chooses the one series
to segment, so every series of a study must reach it in one upload (one job, one SEG + SR back).
Instances stay grouped by series on disk.

Every instance is written to ``tmp/``, fsynced and renamed into its series folder, so a file in a
series folder is always whole; the same SOP Instance UID sent again replaces its own file (one
slice). A study is complete once no series of it received an instance for the idle time; it then
moves ``incoming -> claimed`` in one directory rename of the study folder (all its series together;
an instance that arrives after that starts a new incoming folder for the study), is zipped together
with what was already sent of it (so a re-send of any part of an uploaded study gives the same zip
and the same content-addressed key: no second job; an instance or series that changes or extends it
gives a new zip: a new job, whose selection may choose differently), and moves on to ``sent/`` only
once S3 has the zip. A gateway killed at any point finds its work where it stopped: ``claimed/`` is
uploaded again (the same key, already there: just moved on), ``incoming/`` waits for its idle time
again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ichseg.pipeline import keys

log = logging.getLogger("gateway.spool")

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
"""Every member's timestamp: the zip's bytes depend on the instances only."""
INCOMING, CLAIMED, SENT, TMP = "incoming", "claimed", "sent", "tmp"
UPLOAD_RECORD = "upload.json"
"""Beside a sent study's series: its latest upload's key and job id (what the status page shows)."""
COPY_CHUNK = 1 << 20
"""Bytes per read when copying an instance in or out: the memory one instance costs, whatever its size."""


class SpoolFull(RuntimeError):
    """Storing this instance would take the spool past its bound (C-STORE answers 0xA700)."""


def is_dicom_uid(text: str) -> bool:
    """A DICOM UID (digits and dots, at most 64 characters): safe as a file or folder name."""
    return len(text) <= 64 and bool(_UID.match(text))


def uid_tag(uid: str) -> str:
    """A short, stable, non-identifying handle for a UID in logs (the UID itself may embed dates)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:12]


def _check_site(site: str) -> None:
    if not keys.is_valid_site(site):  # the key layout's rule: a site is also a spool folder name
        raise ValueError(f"site {site!r} cannot name a folder")


@dataclass(frozen=True, order=True)
class StudyRef:
    """One study of one site, the unit of completion and upload: the spool folder ``{site}/{study}``."""

    site: str
    study_uid: str

    def __post_init__(self) -> None:
        if not is_dicom_uid(self.study_uid):
            raise ValueError("the study instance UID must be a DICOM UID")
        _check_site(self.site)

    @property
    def relative(self) -> Path:
        return Path(self.site, self.study_uid)

    def __str__(self) -> str:
        return f"{self.site}/study-{uid_tag(self.study_uid)}"


@dataclass(frozen=True, order=True)
class SeriesRef:
    """One series of one site's study, where its instances are stored: ``{site}/{study}/{series}``."""

    site: str
    study_uid: str
    series_uid: str

    def __post_init__(self) -> None:
        if not (is_dicom_uid(self.study_uid) and is_dicom_uid(self.series_uid)):
            raise ValueError("study and series instance UIDs must be DICOM UIDs")
        _check_site(self.site)

    @property
    def study(self) -> StudyRef:
        return StudyRef(self.site, self.study_uid)

    @property
    def relative(self) -> Path:
        return Path(self.site, self.study_uid, self.series_uid)

    def __str__(self) -> str:
        return f"{self.site}/series-{uid_tag(self.series_uid)}"


@dataclass(frozen=True)
class SpooledStudy:
    """What the spool knows of one study: where it stands, how big it is, its last upload."""

    ref: StudyRef
    stage: str
    """``incoming`` (being received), ``claimed`` (being uploaded) or ``sent``."""
    series: int
    instances: int
    updated_at: float
    """Epoch seconds of its last change (an instance received, the move to ``sent/``)."""
    upload: dict[str, str] | None
    """``{"key": ..., "job_id": ...}`` once uploaded."""


@dataclass(frozen=True)
class StudyZip:
    """A study packed for upload: the zip file, its sha256 (the key's name), its series and instance counts."""

    path: Path
    digest: str
    series: int
    instances: int


class Spool:
    """The folders above with their byte count; safe to use from every association's thread."""

    def __init__(self, root: Path, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.clock = clock
        self._lock = threading.Lock()
        for name in (INCOMING, CLAIMED, SENT, TMP):
            (root / name).mkdir(parents=True, exist_ok=True)
        # Leftovers of a killed gateway: half-written instances and zips are never part of a study.
        for leftover in (root / TMP).iterdir():
            _remove(leftover)
        self._used = sum(f.stat().st_size for f in self._files(INCOMING, CLAIMED, SENT))
        self._reserved = 0
        """Bytes of instances being written to ``tmp/`` right now (see :meth:`_write`)."""
        now = clock()
        # A study found on start waits a full idle time: its sender may be resuming it right now.
        self._touched: dict[StudyRef, float] = dict.fromkeys(self.studies(INCOMING), now)

    @property
    def used_bytes(self) -> int:
        """Bytes of the instances in ``incoming``, ``claimed`` and ``sent``."""
        return self._used

    @property
    def accounted_bytes(self) -> int:
        """:attr:`used_bytes` plus the bytes reserved for instances being written: never above the bound."""
        with self._lock:
            return self._used + self._reserved

    # ------------------------------------------------------------------ receiving

    def store(self, ref: SeriesRef, sop_uid: str, data: bytes) -> None:
        """Write one instance, given as bytes, durably; :class:`SpoolFull` past the bound."""
        self._write(ref, sop_uid, len(data), lambda out: out.write(data))

    def store_file(self, ref: SeriesRef, sop_uid: str, source: Path) -> None:
        """Copy one instance from a file (the one the network layer streamed it into) durably, in
        chunks: an instance of any size costs :data:`COPY_CHUNK` bytes of memory. :class:`SpoolFull`
        past the bound."""
        with source.open("rb") as data:
            size = os.fstat(data.fileno()).st_size
            self._write(ref, sop_uid, size, lambda out: shutil.copyfileobj(data, out, COPY_CHUNK))

    def _write(self, ref: SeriesRef, sop_uid: str, size: int, write: Callable[[BinaryIO], object]) -> None:
        """Reserve ``size`` bytes, write to ``tmp/``, fsync, rename into the series folder, settle the count.

        The room is reserved under the lock *before* the write and given back after it: checking
        first and counting only once written let parallel associations each see room for
        themselves and together pass the bound (8 associations left 1,057,712 bytes against
        1,000,000). So :attr:`accounted_bytes` never exceeds the bound, nor does the disk.
        """
        if not is_dicom_uid(sop_uid):
            raise ValueError("the SOP instance UID is not a DICOM UID")
        with self._lock:
            if self._used + self._reserved + size > self.max_bytes:
                self._evict_sent(self._used + self._reserved + size - self.max_bytes)
            if self._used + self._reserved + size > self.max_bytes:
                raise SpoolFull(f"spool holds {self._used + self._reserved} bytes, bound {self.max_bytes}")
            self._reserved += size
        temp: Path | None = None
        reserved = size
        try:
            fd, name = tempfile.mkstemp(dir=self.root / TMP, suffix=".dcm")
            temp = Path(name)
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
                written = out.tell()
            if written != size:  # the bound holds for what was reserved only
                raise OSError(f"wrote {written} bytes of an instance of {size}")
            with self._lock:
                folder = self.root / INCOMING / ref.relative
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / f"{sop_uid}.dcm"
                replaced = target.stat().st_size if target.exists() else 0
                os.replace(temp, target)
                temp = None
                _fsync_dir(folder)
                # Reserved becomes used in one step: never counted twice, never not at all.
                self._used += size - replaced
                self._reserved -= reserved
                reserved = 0
                self._touched[ref.study] = self.clock()  # any series keeps its whole study open
        finally:
            if reserved:
                with self._lock:
                    self._reserved -= reserved
            if temp is not None:
                _remove(temp)

    # ------------------------------------------------------------------ completing

    def studies(self, stage: str) -> list[StudyRef]:
        """The study folders under ``incoming``, ``claimed`` or ``sent``, sorted."""
        found = []
        base = self.root / stage
        for folder in base.glob("*/*"):
            if folder.is_dir():
                site, study = folder.relative_to(base).parts
                try:
                    found.append(StudyRef(site, study))
                except ValueError:
                    log.warning("spool: ignoring a folder that is no study (%s)", stage)
        return sorted(found)

    def idle(self, idle_seconds: float) -> list[StudyRef]:
        """Incoming studies none of whose series got an instance for ``idle_seconds``: complete."""
        now = self.clock()
        with self._lock:
            return sorted(ref for ref, touched in self._touched.items() if now - touched >= idle_seconds)

    def claim(self, ref: StudyRef) -> bool:
        """Move a complete incoming study, all its series, to ``claimed/`` (one rename); False while an
        earlier claim of the same study is still being uploaded (this one waits its turn, then joins it)."""
        with self._lock:
            source, target = self.root / INCOMING / ref.relative, self.root / CLAIMED / ref.relative
            if not source.is_dir():  # removed by hand: nothing to claim, stop tracking it
                self._touched.pop(ref, None)
                return False
            if target.exists():
                return False
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(source, target)
            _fsync_dir(target.parent)
            self._touched.pop(ref, None)
            _prune(self.root / INCOMING, source.parent)
            return True

    def claimed_instances(self, ref: StudyRef) -> int:
        """How many instances of the study are still in ``claimed/`` (0: a move to ``sent/`` had finished)."""
        return len(_study_files(self.root / CLAIMED / ref.relative))

    def pack(self, ref: StudyRef) -> StudyZip:
        """The claimed study and what was already sent of it as one deterministic zip in ``tmp/``.

        Members ``{series uid}/{sop uid}.dcm`` sorted by name, fixed timestamps and attributes,
        stored uncompressed (the digest must not depend on the zlib build; DICOM pixel data is
        often compressed already).
        """
        members = {_member(p): p for p in _study_files(self.root / SENT / ref.relative)}
        members.update({_member(p): p for p in _study_files(self.root / CLAIMED / ref.relative)})
        path = self.root / TMP / f"{uuid.uuid4().hex}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name in sorted(members):
                info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                info.create_system = 3
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_STORED
                # Streamed member by member: an Enhanced CT instance can be hundreds of MB.
                info.file_size = members[name].stat().st_size
                with members[name].open("rb") as member, archive.open(info, "w") as out:
                    shutil.copyfileobj(member, out, COPY_CHUNK)
        digest = hashlib.sha256()
        with path.open("rb") as packed:
            for chunk in iter(lambda: packed.read(1 << 20), b""):
                digest.update(chunk)
        series = {name.split("/", 1)[0] for name in members}
        return StudyZip(path, digest.hexdigest(), len(series), len(members))

    def mark_sent(self, ref: StudyRef, upload: dict[str, str] | None = None) -> None:
        """S3 has the claimed study: move its instances into ``sent/`` (the study's retention clock
        restarts), with ``upload`` (its key and job id) recorded beside them."""
        with self._lock:
            source = self.root / CLAIMED / ref.relative
            target = self.root / SENT / ref.relative
            for path in _study_files(source):
                folder = target / path.parent.name
                folder.mkdir(parents=True, exist_ok=True)
                replaced = folder / path.name
                if replaced.exists():
                    self._used -= replaced.stat().st_size
                os.replace(path, replaced)
            target.mkdir(parents=True, exist_ok=True)
            if upload is not None:
                record = self.root / TMP / f"{uuid.uuid4().hex}.json"
                record.write_text(json.dumps(upload))
                os.replace(record, target / UPLOAD_RECORD)
            for folder in (p for p in target.iterdir() if p.is_dir()):
                _fsync_dir(folder)
            _fsync_dir(target)
            os.utime(target)
            shutil.rmtree(source, ignore_errors=True)
            _prune(self.root / CLAIMED, source.parent)

    def overview(self) -> list[SpooledStudy]:
        """Every study in the spool, newest change first (for the status page: no file is opened
        but the small upload records)."""
        found = []
        for stage in (INCOMING, CLAIMED, SENT):
            for ref in self.studies(stage):
                folder = self.root / stage / ref.relative
                files = _study_files(folder)
                try:
                    updated = max([folder.stat().st_mtime, *(p.stat().st_mtime for p in files)])
                    record = folder / UPLOAD_RECORD
                    upload = json.loads(record.read_text()) if record.is_file() else None
                except (OSError, ValueError):  # moved or expired meanwhile: it shows on the next look
                    continue
                series = len({p.parent.name for p in files})
                found.append(SpooledStudy(ref, stage, series, len(files), updated, upload))
        return sorted(found, key=lambda study: -study.updated_at)

    # ------------------------------------------------------------------ forgetting

    def expire_sent(self, retention_seconds: float) -> int:
        """Delete sent studies older than the retention; returns how many."""
        cutoff = time.time() - retention_seconds
        expired = 0
        with self._lock:
            for ref, mtime in self._sent_by_age():
                if mtime >= cutoff:
                    break
                self._delete_sent(ref)
                expired += 1
        return expired

    def _evict_sent(self, needed: int) -> None:
        """Make room by forgetting the oldest sent studies first (caller holds the lock)."""
        for ref, _ in self._sent_by_age():
            if needed <= 0:
                return
            needed -= self._delete_sent(ref)

    def _sent_by_age(self) -> list[tuple[StudyRef, float]]:
        aged = [(ref, (self.root / SENT / ref.relative).stat().st_mtime) for ref in self.studies(SENT)]
        return sorted(aged, key=lambda pair: pair[1])

    def _delete_sent(self, ref: StudyRef) -> int:
        folder = self.root / SENT / ref.relative
        freed = sum(p.stat().st_size for p in _study_files(folder))
        shutil.rmtree(folder, ignore_errors=True)
        _prune(self.root / SENT, folder.parent)
        self._used -= freed
        return freed

    def _files(self, *stages: str) -> Iterator[Path]:
        for stage in stages:
            yield from (p for p in (self.root / stage).rglob("*.dcm") if p.is_file())


def _study_files(folder: Path) -> list[Path]:
    """The instances of a study folder, ``{series uid}/{sop uid}.dcm``, sorted."""
    return sorted(p for p in folder.glob("*/*.dcm") if p.is_file()) if folder.is_dir() else []


def _member(path: Path) -> str:
    """The zip member name of a spooled instance: ``{series uid}/{sop uid}.dcm``."""
    return f"{path.parent.name}/{path.name}"


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (the file's own fsync does not cover its directory entry)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(base: Path, folder: Path) -> None:
    """Remove ``folder`` and its parents up to ``base`` while they are empty."""
    while folder != base and base in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
