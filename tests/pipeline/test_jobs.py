"""The job model's state machine and its conditional writes (DynamoDB via moto, in process)."""

from __future__ import annotations

import threading
import uuid

import pytest

from ichseg.errors import ErrorCode
from ichseg.pipeline.jobs import TOMBSTONE_MIN_SECONDS, JobDeleted, JobNotFound, JobSource, JobState, JobStore, Stage
from tests.stack_fixtures import aws_client, create_jobs_table


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock, moto_url: str) -> JobStore:
    client = aws_client(moto_url, "dynamodb")
    table = f"jobs-{uuid.uuid4().hex[:8]}"
    create_jobs_table(client, table)
    return JobStore(client, table, ttl_days=30, clock=clock)


def _segmenting(store: JobStore, job_id: str = "j1", batches: int = 3) -> None:
    store.create(job_id, JobSource.APP, "alice", f"uploads/alice/{job_id}/scan", 900)
    assert store.mark_split(job_id, batches, batches * 4, {"format": "mp4"})
    assert store.mark_segmenting(job_id)


def test_create_is_idempotent_and_keeps_the_first_row(store: JobStore, clock: Clock) -> None:
    job, created = store.create("j1", JobSource.APP, "alice", "uploads/alice/j1/scan", 900, content_type="video/mp4")
    assert created and job.state == JobState.RECEIVED and job.owner == "alice"
    clock.now += 10
    again, created_again = store.create("j1", JobSource.INGEST, None, "ingest/other", 5)
    assert not created_again and again.owner == "alice" and again.source == JobSource.APP
    stored = store.require("j1")
    assert stored.deadline_at == pytest.approx(1_800_000_900.0) and stored.expires_at == 1_800_000_000 + 30 * 86400
    assert stored.created_at == "2027-01-15T08:00:00.000Z" and stored.content_type == "video/mp4"


def test_transitions_only_move_forward(store: JobStore) -> None:
    store.create("j1", JobSource.APP, "alice", "k", 900)
    assert not store.mark_segmenting("j1")  # RECEIVED -> SEGMENTING skips SPLIT: refused
    assert not store.mark_assembling("j1")
    assert store.mark_split("j1", 2, 8, {"format": "mp4"})
    assert not store.mark_split("j1", 5, 20, {})  # a second split does not reset the totals
    assert store.require("j1").total_batches == 2
    assert store.mark_segmenting("j1") and not store.mark_segmenting("j1")
    assert not store.mark_done("j1", {}, {}, None, None)  # DONE only from ASSEMBLING
    assert store.require("j1").state == JobState.SEGMENTING


def test_a_batch_counts_once_however_often_it_is_reported(store: JobStore) -> None:
    _segmenting(store, batches=2)
    first = store.mark_batch_done("j1", "b0000", 4)
    assert first is not None and first.done_batches == {"b0000"} and first.progress == (4, 8)
    assert store.mark_batch_done("j1", "b0000", 4) is None
    assert store.require("j1").done_slices == 4
    last = store.mark_batch_done("j1", "b0001", 4)
    assert last is not None and last.progress == (8, 8) and len(last.done_batches) == last.total_batches


def test_batches_done_while_the_job_is_still_split_are_accepted(store: JobStore) -> None:
    store.create("j1", JobSource.APP, "alice", "k", 900)
    store.mark_split("j1", 1, 4, {})
    assert store.mark_batch_done("j1", "b0000", 4) is not None
    assert store.mark_assembling("j1")
    assert not store.mark_segmenting("j1")  # the split's late transition loses harmlessly


def test_exactly_one_of_many_racing_finishers_starts_assembly(store: JobStore) -> None:
    _segmenting(store, batches=8)
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def finish(batch: str) -> None:
        barrier.wait()
        job = store.mark_batch_done("j1", batch, 4)
        if job is not None and len(job.done_batches) == job.total_batches and store.mark_assembling("j1"):
            winners.append(batch)
        # a duplicate delivery of every batch, racing too
        duplicate = store.mark_batch_done("j1", batch, 4)
        if duplicate is not None:
            winners.append("duplicate counted")

    threads = [threading.Thread(target=finish, args=(f"b{i:04d}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    job = store.require("j1")
    assert len(winners) <= 1 and "duplicate counted" not in winners
    assert job.done_slices == 32 and len(job.done_batches) == 8
    # If the last two finishers raced so that neither saw 8/8 first... one of them always does:
    assert len(winners) == 1 and job.state == JobState.ASSEMBLING


def test_fail_keeps_the_first_reason_and_never_overrides_done(store: JobStore) -> None:
    _segmenting(store, "j1")
    assert store.fail("j1", ErrorCode.SEGMENT_FAILED, "the endpoint is down", Stage.SEGMENT)
    assert not store.fail("j1", ErrorCode.DEADLINE_EXCEEDED, "too slow", Stage.WATCHDOG)
    job = store.require("j1")
    assert (job.state, job.error_code, job.error_reason, job.failed_stage) == (
        JobState.FAILED,
        "segment_failed",
        "the endpoint is down",
        "segment",
    )
    assert store.mark_batch_done("j1", "b0000", 4) is None  # a failed job takes no more work

    _segmenting(store, "j2", batches=1)
    store.mark_batch_done("j2", "b0000", 4)
    store.mark_assembling("j2")
    assert store.mark_done("j2", {"overlay": "results/j2/overlay.mp4"}, {"finding": "Normal"}, None, None)
    assert not store.fail("j2", ErrorCode.DEADLINE_EXCEEDED, "late", Stage.WATCHDOG)
    assert store.require("j2").state == JobState.DONE


def test_failing_an_unknown_job_leaves_a_failed_row(store: JobStore) -> None:
    assert store.fail(
        "ingest-abc",
        ErrorCode.SPLIT_FAILED,
        "cannot read",
        Stage.SPLIT,
        source=JobSource.INGEST,
        upload_key="ingest/x.zip",
    )
    job = store.require("ingest-abc")
    assert job.state == JobState.FAILED and job.owner is None and job.upload_key == "ingest/x.zip"


def test_failing_an_unknown_app_job_creates_no_row_for_anyone(store: JobStore) -> None:
    unknown = "0123456789abcdef0123456789abcdef"
    assert not store.fail(
        unknown,
        ErrorCode.SPLIT_FAILED,
        "cannot read",
        Stage.SPLIT,
        source=JobSource.APP,
        owner="mallory",
        upload_key=f"uploads/{unknown}/scan",
    )
    assert not store.fail(unknown, ErrorCode.SPLIT_FAILED, "x", Stage.SPLIT, upload_key=f"uploads/{unknown}/scan")
    assert not store.fail(unknown, ErrorCode.DEADLINE_EXCEEDED, "x", Stage.WATCHDOG)
    assert store.get(unknown) is None


def test_overdue_lists_active_jobs_past_their_deadline(store: JobStore, clock: Clock) -> None:
    store.create("old", JobSource.APP, "alice", "k", 100)
    _segmenting(store, "busy")  # deadline 900
    store.create("done", JobSource.APP, "alice", "k", 100)
    store.fail("done", ErrorCode.NO_FRAMES, "y", Stage.SPLIT)
    clock.now += 200
    assert [job.job_id for job in store.overdue()] == ["old"]
    clock.now += 1000
    assert sorted(job.job_id for job in store.overdue()) == ["busy", "old"]


def test_stage_timings_and_listing_by_owner(store: JobStore, clock: Clock) -> None:
    store.create("a1", JobSource.APP, "alice", "k", 900)
    clock.now += 1.5
    store.mark_received("a1", 900)
    clock.now += 2
    store.mark_split("a1", 1, 4, {})
    clock.now += 0.25
    store.mark_segmenting("a1")
    assert store.require("a1").stage_seconds() == {
        "created->received": 1.5,
        "received->split": 2.0,
        "split->segmenting": 0.25,
    }
    store.create("a2", JobSource.APP, "alice", "k", 900)
    store.create("b1", JobSource.APP, "bob", "k", 900)
    store.create("h1", JobSource.INGEST, None, "ingest/x", 900)
    assert [job.job_id for job in store.page_for_owner("alice")[0]] == ["a2", "a1"]


def test_a_deleted_job_is_a_tombstone_that_nothing_brings_back(store: JobStore, clock: Clock) -> None:
    store.create("gone", JobSource.APP, "alice", "uploads/alice/gone/scan", 900)
    store.create("kept", JobSource.APP, "alice", "uploads/alice/kept/scan", 900)
    assert not store.delete_ended("gone", "alice")  # still running: never deleted from under a stage
    store.fail("gone", ErrorCode.NO_FRAMES, "not a scan", Stage.SPLIT)
    assert not store.delete_ended("gone", "bob")  # not bob's
    clock.now += 60
    assert store.delete_ended("gone", "alice")
    assert not store.delete_ended("gone", "alice")  # a second (or concurrent) delete finds no job

    # Read as no job by everyone: the API, the stages, the lists, the watchdog.
    assert store.get("gone") is None
    with pytest.raises(JobDeleted):
        store.require("gone")
    assert [job.job_id for job in store.page_for_owner("alice")[0]] == ["kept"]
    clock.now += 10_000
    assert [job.job_id for job in store.overdue()] == ["kept"]

    # The id stays spent: no create (app or ingest), no failure, no transition revives it.
    for source, owner in ((JobSource.APP, "alice"), (JobSource.INGEST, None)):
        with pytest.raises(JobDeleted):
            store.create("gone", source, owner, "uploads/alice/gone/scan", 900)
    assert not store.fail("gone", ErrorCode.SPLIT_FAILED, "late", Stage.SPLIT, source=JobSource.APP, owner="alice")
    assert not store.fail("gone", ErrorCode.SPLIT_FAILED, "late", Stage.SPLIT, upload_key="ingest/x.zip")
    assert not store.mark_received("gone", 900)
    assert not store.mark_split("gone", 1, 4, {})
    assert store.mark_batch_done("gone", "b0000", 4) is None
    assert not store.mark_assembly_enqueued("gone")

    # What is left holds nothing of the job, and expires with the jobs' retention.
    item = store.client.get_item(TableName=store.table, Key={"job_id": {"S": "gone"}})["Item"]
    assert set(item) == {"job_id", "deleted_at", "expires_at"}
    assert float(item["deleted_at"]["N"]) == 1_800_000_060
    assert int(item["expires_at"]["N"]) == 1_800_000_060 + 30 * 86400


def test_an_unknown_job_is_not_found_and_not_deleted(store: JobStore) -> None:
    with pytest.raises(JobNotFound) as raised:
        store.require("never")
    assert not isinstance(raised.value, JobDeleted)


def test_a_tombstone_outlives_every_queued_message_even_with_a_short_job_ttl(store: JobStore, clock: Clock) -> None:
    short = JobStore(store.client, store.table, ttl_days=1, clock=clock)
    short.create("brief", JobSource.APP, "alice", "uploads/alice/brief/scan", 900)
    short.fail("brief", ErrorCode.NO_FRAMES, "not a scan", Stage.SPLIT)
    assert short.delete_ended("brief", "alice")
    item = store.client.get_item(TableName=store.table, Key={"job_id": {"S": "brief"}})["Item"]
    assert int(item["expires_at"]["N"]) == int(clock.now) + TOMBSTONE_MIN_SECONDS == int(clock.now) + 14 * 86400
