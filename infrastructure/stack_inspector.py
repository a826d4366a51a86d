"""What tests, the demo and the benchmarks read of a running local stack, as a client would.

Nothing here changes the stack: the jobs table through :class:`~ichseg.pipeline.jobs.JobStore`, the
dead-letter queues with visibility 0 (the messages stay), the Firebase Storage emulator through its
JSON API, and the event pump's record of invocations.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from ichseg.pipeline.jobs import Job, JobState, JobStore
from infrastructure.event_pump import EventPump, Invocation, QueueInfo


class StackInspector:
    """Reads of one running stack's table, queues, Firebase bucket and invocations."""

    def __init__(
        self,
        aws: Callable[[str], Any],
        table: str,
        queues: dict[str, QueueInfo],
        pump: EventPump,
        firebase_url: Callable[[], str],
        firebase_bucket: str,
    ) -> None:
        self._aws, self._table, self._queues, self._pump = aws, table, queues, pump
        self._firebase_url, self._firebase_bucket = firebase_url, firebase_bucket

    @property
    def store(self) -> JobStore:
        return JobStore(self._aws("dynamodb"), self._table)

    def wait_for_job(
        self, job_id: str, timeout: float = 120.0, states: tuple[JobState, ...] = (JobState.DONE, JobState.FAILED)
    ) -> Job:
        """Poll the table until the job reaches one of ``states``."""
        store = self.store
        deadline = time.time() + timeout
        while True:
            job = store.get(job_id)
            if job is not None and job.state in states:
                return job
            if time.time() > deadline:
                raise TimeoutError(f"job {job_id} is {job.state.value if job else 'missing'} after {timeout:.0f} s")
            time.sleep(0.2)

    def invocations_of(self, function: str, containing: str = "") -> list[Invocation]:
        """The settled invocations of ``function`` with a message body containing ``containing``."""
        return [i for i in self._pump.recorded() if i.function == function and any(containing in b for b in i.bodies)]

    def dlq_bodies(self, queue: str) -> list[str]:
        """Messages waiting in a queue's dead-letter queue (left in place: visibility 0)."""
        response = self._aws("sqs").receive_message(
            QueueUrl=self._queues[queue].dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0
        )
        return [m["Body"] for m in response.get("Messages", [])]

    def firebase_objects(self, prefix: str) -> list[dict[str, Any]]:
        """Objects in the Firebase Storage emulator under ``prefix`` (its JSON API, as any client sees it)."""
        url = f"{self._firebase_url()}/storage/v1/b/{self._firebase_bucket}/o?prefix={quote(prefix)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return [
                {"name": item["name"], "size": int(item.get("size", 0)), "content_type": item.get("contentType")}
                for item in json.load(response).get("items", [])
            ]

    def firebase_download(self, name: str) -> bytes:
        """One object's bytes from the Firebase Storage emulator."""
        url = f"{self._firebase_url()}/download/storage/v1/b/{self._firebase_bucket}/o/{quote(name, safe='')}?alt=media"
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()
