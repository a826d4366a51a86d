"""Lambda's event sources, locally: one SQS poller per queue-triggered function, and the watchdog's schedule.

Each poller long-polls its queue with the template's batch size, passes Lambda's SQS event JSON to
the function, deletes what succeeded and honours ``batchItemFailures`` (what Lambda's event source
mapping does), leaving a failed message to come back when its visibility timeout ends. A function
never has more invocations in flight than its local concurrency. Every invocation is recorded
(:class:`Invocation`) for tests, the demo's timing and the benchmarks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from infrastructure.cloud_template import CloudTemplate
from infrastructure.lambda_runtime import ACCOUNT_ID, LocalFunction, scheduled_event, sqs_event

log = logging.getLogger("ichseg.local_stack")

DUPLICATE_ATTRIBUTE = "ichseg-duplicate"


@dataclass
class Invocation:
    """One function invocation by the pump (for tests and the demo's timing)."""

    function: str
    bodies: list[str]
    failed_ids: list[str]
    error: dict[str, Any] | None
    started: float
    seconds: float
    receive_counts: list[int]


@dataclass(frozen=True)
class QueueInfo:
    """One of the template's queues as created locally."""

    name: str
    url: str
    arn: str
    dlq_url: str


@dataclass(frozen=True)
class PumpSettings:
    region: str
    poll_wait_seconds: int = 1
    duplicate_deliveries: bool = False
    """Chaos: every message received is sent to its queue once more (SQS's at-least-once, made certain)."""
    watchdog_interval_seconds: float | None = None
    """Override of the watchdog's schedule (None: the template's rate)."""


class EventPump:
    """Started by :meth:`start` with the stack's queues and functions; :meth:`stop` joins its threads."""

    def __init__(self, settings: PumpSettings, sqs_client: Callable[[], Any]) -> None:
        self.settings = settings
        self._sqs_client = sqs_client
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._invocations: list[Invocation] = []
        self._functions: Mapping[str, LocalFunction] = {}

    @property
    def watchdog_rule(self) -> str:
        return f"arn:aws:events:{self.settings.region}:{ACCOUNT_ID}:rule/ichseg-watchdog"

    def start(
        self, template: CloudTemplate, queues: Mapping[str, QueueInfo], functions: Mapping[str, LocalFunction]
    ) -> None:
        """A poller per SQS event source in ``template`` and the watchdog's schedule, in daemon threads."""
        self._functions = functions
        self._deleter = self._sqs_client()  # boto3 clients are thread-safe: one for every settle callback
        for function in template.functions.values():
            if function.sqs is not None:
                queue, batch_size = queues[function.sqs.queue], function.sqs.batch_size
                self._spawn(self._poll, queue, functions[function.name], batch_size, name=f"ichseg-pump-{queue.name}")
        interval = self.settings.watchdog_interval_seconds or template.functions["watchdog"].schedule_seconds
        self._spawn(self._watchdog_ticks, interval or 300.0, name="ichseg-watchdog")

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=self.settings.poll_wait_seconds + 5)

    def alive(self) -> bool:
        """Every poller and the watchdog's schedule still run (a crashed function must not stop its poller)."""
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    def recorded(self) -> list[Invocation]:
        """A copy of every invocation settled so far."""
        with self._lock:
            return list(self._invocations)

    def tick_watchdog(self) -> tuple[str, Any]:
        """Invoke the watchdog now, with the event its schedule would send."""
        return self._functions["watchdog"].invoke(scheduled_event(self.watchdog_rule, self.settings.region))

    def _spawn(self, target: Any, *args: Any, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _watchdog_ticks(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            self.tick_watchdog()

    def _poll(self, queue: QueueInfo, function: LocalFunction, batch_size: int) -> None:
        """Long-poll one queue and invoke its function like Lambda's SQS event source mapping."""
        slots = threading.BoundedSemaphore(function.spec.concurrency)
        sqs = self._sqs_client()
        while not self._stopping.is_set():
            if not slots.acquire(timeout=0.5):
                continue
            try:
                messages = sqs.receive_message(
                    QueueUrl=queue.url,
                    MaxNumberOfMessages=batch_size,
                    WaitTimeSeconds=self.settings.poll_wait_seconds,
                    MessageSystemAttributeNames=["All"],
                    MessageAttributeNames=["All"],
                ).get("Messages", [])
            except Exception as exc:  # moto stopping, a transient error: poll again
                slots.release()
                if not self._stopping.is_set():
                    log.warning("receive from %s failed: %s", queue.name, exc)
                    time.sleep(0.5)
                continue
            if not messages:
                slots.release()
                continue
            if self.settings.duplicate_deliveries:
                self._duplicate(sqs, queue, messages)
            started = time.time()
            try:
                future = function.submit(sqs_event(messages, queue.arn, self.settings.region))
            except Exception:  # not even a fresh worker starts: the messages come back after their timeout
                log.exception("could not invoke %s", function.spec.name)
                slots.release()
                time.sleep(0.5)
                continue
            future.add_done_callback(
                lambda done, m=messages, t=started: self._settle(queue, function.spec.name, m, done, t, slots)
            )

    @staticmethod
    def _duplicate(sqs: Any, queue: QueueInfo, messages: list[dict[str, Any]]) -> None:
        """Send a copy of each original (not already duplicated) message to its queue."""
        for message in messages:
            if DUPLICATE_ATTRIBUTE not in message.get("MessageAttributes", {}):
                sqs.send_message(
                    QueueUrl=queue.url,
                    MessageBody=message["Body"],
                    MessageAttributes={DUPLICATE_ATTRIBUTE: {"DataType": "String", "StringValue": "1"}},
                )

    def _settle(
        self,
        queue: QueueInfo,
        name: str,
        messages: list[dict[str, Any]],
        future: Future[Any],
        started: float,
        slots: threading.BoundedSemaphore,
    ) -> None:
        """Delete what succeeded; leave failures to reappear after the visibility timeout."""
        try:
            try:
                status, response = future.result()
            except Exception as exc:  # the worker process died: like a Lambda crash
                status, response = "error", {"errorType": type(exc).__name__, "errorMessage": str(exc)}
            failed: set[str] = set()
            if status == "ok":
                failed = {f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])}
                done = [m for m in messages if m["MessageId"] not in failed]
                if done and not self._stopping.is_set():
                    self._deleter.delete_message_batch(
                        QueueUrl=queue.url,
                        Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
                    )
            else:
                failed = {m["MessageId"] for m in messages}
            invocation = Invocation(
                function=name,
                bodies=[m["Body"] for m in messages],
                failed_ids=sorted(failed),
                error=response if status != "ok" else None,
                started=started,
                seconds=time.time() - started,
                receive_counts=[int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)) for m in messages],
            )
            with self._lock:
                self._invocations.append(invocation)
        except Exception:
            log.exception("settling an invocation of %s failed", name)
        finally:
            slots.release()
