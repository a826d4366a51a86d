"""Push to the app when a job ends: one FCM notification per registered device of the job's owner.

Sent once, by the call that moved the job to DONE or FAILED (the conditional write that won), so a
redelivered message never notifies twice. What it carries: the job id, the state, and the finding
(DONE) or the error code (FAILED). Never patient data: no names, ids, dates or images; the app
fetches the rest through the API with the user's token.

A push is a convenience, never the record: a failure to push is logged and counted
(``PushFailures``), and the job stays as it is. Tokens that FCM reports as no longer registered
(the app was uninstalled, or the token belongs to another sender) are dropped from the user's
devices. Without ``ICHSEG_PUSH_PROJECT_ID`` (the local stack: FCM has no emulator) nothing is sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from ichseg.errors import ErrorCode
from ichseg.pipeline.config import PipelineConfig
from ichseg.pipeline.devices import DeviceRegistry
from ichseg.pipeline.jobs import JobSource, JobState, JobStore

log = logging.getLogger("ichseg.pipeline.push")

HTTP_TIMEOUT_SECONDS = 10.0
"""One FCM request's timeout (firebase-admin's default is 120 s: too long inside a stage)."""


@dataclass(frozen=True)
class JobEnded:
    """What the app hears: everything here is in the notification, and nothing else is."""

    job_id: str
    state: JobState
    finding: str | None = None
    error_code: ErrorCode | None = None

    def data(self) -> dict[str, str]:
        """The FCM data payload (strings only, as FCM requires)."""
        data = {"job_id": self.job_id, "state": self.state.value}
        if self.finding:
            data["finding"] = self.finding
        if self.error_code:
            data["error_code"] = self.error_code.value
        return data

    def text(self) -> tuple[str, str]:
        """The notification's title and body, as the phone shows them."""
        if self.state == JobState.DONE:
            return "ichseg: scan ready", f"{self.finding or 'Result'}. Open the app to read it (not for clinical use)."
        return "ichseg: scan failed", f"The scan could not be read ({self.error_code or 'error'}). Open the app."


class PushContext(Protocol):
    """What a push needs of the :class:`~ichseg.pipeline.context.PipelineContext` (which builds the
    messenger from this module: a protocol, not an import, keeps the arrow one way)."""

    @property
    def config(self) -> PipelineConfig: ...
    @property
    def store(self) -> JobStore: ...
    @property
    def messenger(self) -> Any: ...
    @property
    def metrics(self) -> Any: ...


@dataclass(frozen=True)
class PushResult:
    sent: int = 0
    failed: int = 0
    dropped: int = 0


class FirebaseMessenger:
    """Sends FCM messages through firebase-admin with the project's service account."""

    def __init__(self, config: PipelineConfig, secrets: Any = None) -> None:
        self.config = config
        self._secrets = secrets

    @cached_property
    def app(self) -> Any:
        from ichseg.pipeline.mirror import firebase_app, firebase_credential

        options = {"projectId": self.config.push_project_id, "httpTimeout": HTTP_TIMEOUT_SECONDS}
        credential = firebase_credential(self.config, self._secrets)
        return firebase_app(f"ichseg-push:{self.config.push_project_id}", credential, options)

    def send_each(self, messages: list[Any]) -> Any:
        """One FCM v1 request per message; firebase-admin's ``BatchResponse``."""
        from firebase_admin import messaging

        return messaging.send_each(messages, app=self.app)


def fcm_message(token: str, event: JobEnded) -> Any:
    """The FCM message for one device: high priority (minutes matter), the data and a notification."""
    from firebase_admin import messaging

    title, body = event.text()
    return messaging.Message(
        token=token,
        data=event.data(),
        notification=messaging.Notification(title=title, body=body),
        android=messaging.AndroidConfig(priority="high", collapse_key=event.job_id),
        apns=messaging.APNSConfig(headers={"apns-priority": "10", "apns-collapse-id": event.job_id}),
    )


def notify_job_ended(ctx: PushContext, source: JobSource | None, owner: str | None, event: JobEnded) -> PushResult:
    """Tell every device of an app job's ``owner`` that the job ended; never raises."""
    metrics = ctx.metrics
    if not ctx.config.push_project_id or source != JobSource.APP or not owner:
        return PushResult()
    try:
        devices = DeviceRegistry(ctx.store)
        registered = devices.devices(owner)
        if not registered:
            return PushResult()
        answer = ctx.messenger.send_each([fcm_message(d.token, event) for d in registered])
        gone = {d.token for d, r in zip(registered, answer.responses, strict=True) if _unregistered(r.exception)}
        dropped = devices.drop_tokens(owner, gone) if gone else 0
        result = PushResult(answer.success_count, answer.failure_count, dropped)
    except Exception as exc:  # the push is a convenience: the job's outcome stands whatever FCM does
        log.warning("push for job %s failed: %s: %s", event.job_id, type(exc).__name__, exc)
        metrics.add_metric("PushFailures", "Count", 1)
        return PushResult(failed=1)
    if result.failed:
        metrics.add_metric("PushFailures", "Count", result.failed)
    if result.sent:
        metrics.add_metric("PushesSent", "Count", result.sent)
    log.info(
        "push for job %s: %d sent, %d failed, %d devices dropped",
        event.job_id,
        result.sent,
        result.failed,
        result.dropped,
    )
    return result


def _unregistered(error: Exception | None) -> bool:
    from firebase_admin import messaging

    return isinstance(error, messaging.UnregisteredError | messaging.SenderIdMismatchError)
