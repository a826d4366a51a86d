"""Calling the inference endpoint: SageMaker runtime or a plain URL, one retry policy for both.

The wire format is :mod:`ichseg.endpoint_protocol`. Transient trouble (throttling, 5xx, a model
not yet in service, connection errors, timeouts) is retried with exponential backoff and full
jitter; anything else (a 4xx: the request itself is wrong) fails at once, because repeating it
cannot help. When retries run out the error propagates, SQS redelivers the message later, and the
last delivery fails the job (see :mod:`ichseg.pipeline.failures`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ichseg.endpoint_protocol import (
    CONTENT_TYPE,
    CUSTOM_ATTRIBUTES_HEADER,
    ProtocolError,
    RequestAttributes,
    ResponseAttributes,
    decode_slices,
    encode_slices,
    trim_context,
)

log = logging.getLogger("ichseg.pipeline.endpoint")

RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalServerError",
        "ModelNotReadyException",
        "ModelNotReady",
        "RequestTimeout",
    }
)


class EndpointError(RuntimeError):
    """The endpoint could not segment a batch. ``retryable`` says whether trying later may help."""

    def __init__(self, message: str, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


@dataclass(frozen=True)
class EndpointResult:
    """One batch's answer: probability maps (x255) and what the model says about itself."""

    probabilities_u8: np.ndarray
    """(N, H, W) uint8, hemorrhage probability x 255 at the input's resolution."""
    attributes: ResponseAttributes
    attempts: int
    seconds: float


class Transport(Protocol):
    """Sends one encoded request; returns (body, custom attributes text) or raises EndpointError."""

    def __call__(self, body: bytes, custom_attributes: str = "") -> tuple[bytes, str]: ...


class SageMakerTransport:
    """boto3 ``sagemaker-runtime`` InvokeEndpoint (``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` redirects it locally)."""

    def __init__(self, client: Any, endpoint_name: str) -> None:
        self.client = client
        self.endpoint_name = endpoint_name

    def __call__(self, body: bytes, custom_attributes: str = "") -> tuple[bytes, str]:
        from botocore.exceptions import BotoCoreError, ClientError

        request: dict[str, Any] = {"CustomAttributes": custom_attributes} if custom_attributes else {}
        try:
            response = self.client.invoke_endpoint(
                EndpointName=self.endpoint_name, ContentType=CONTENT_TYPE, Accept=CONTENT_TYPE, Body=body, **request
            )
            return response["Body"].read(), response.get("CustomAttributes", "")
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # ModelError wraps the container's own status: a 5xx there is the model server failing.
            original = exc.response.get("OriginalStatusCode")
            retryable = code in RETRYABLE_CODES or (status or 0) >= 500 or (original or 0) >= 500 or status == 429
            message = f"{code or 'error'} ({status}): {error.get('Message', exc)}"
            raise EndpointError(message, retryable, status) from exc
        except BotoCoreError as exc:  # connection refused/reset, read timeout, DNS...
            raise EndpointError(f"{type(exc).__name__}: {exc}", retryable=True) from exc


class HttpTransport:
    """``POST {url}/invocations`` with the same contract (an endpoint on EC2 or anywhere else)."""

    def __init__(self, url: str, timeout_seconds: float) -> None:
        import urllib3

        self.url = f"{url.rstrip('/')}/invocations"
        self.timeout = urllib3.Timeout(connect=min(5.0, timeout_seconds), read=timeout_seconds)
        # Retries are ours (one policy for both transports), so urllib3 must not add its own.
        self.pool = urllib3.PoolManager(retries=False)

    def __call__(self, body: bytes, custom_attributes: str = "") -> tuple[bytes, str]:
        import urllib3

        headers = {"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE}
        if custom_attributes:
            headers[CUSTOM_ATTRIBUTES_HEADER] = custom_attributes
        try:
            response = self.pool.request(
                "POST",
                self.url,
                body=body,
                headers=headers,
                timeout=self.timeout,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise EndpointError(f"{type(exc).__name__}: {exc}", retryable=True) from exc
        if response.status != 200:
            text = response.data[:300].decode("utf-8", "replace")
            retryable = response.status >= 500 or response.status == 429
            raise EndpointError(f"HTTP {response.status} from {self.url}: {text}", retryable, response.status)
        return response.data, response.headers.get(CUSTOM_ATTRIBUTES_HEADER, "")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: ``uniform(0, base * 2**attempt)``, capped."""

    attempts: int = 5
    base_seconds: float = 0.5
    cap_seconds: float = 20.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        return rng() * min(self.cap_seconds, self.base_seconds * 2**attempt)


class EndpointClient:
    """Segments batches of windowed slices through a transport, retrying what is transient."""

    def __init__(
        self,
        transport: Transport,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[int, EndpointError], None] | None = None,
    ) -> None:
        self.transport = transport
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self.on_retry = on_retry

    def segment(self, slices_u8: np.ndarray, context: RequestAttributes | None = None) -> EndpointResult:
        """Send ``(N, H, W)`` uint8 slices; the maps and attributes of the slices that are not
        ``context`` (the neighbours at each end), or EndpointError."""
        context = context or RequestAttributes()
        expected = context.answered(len(slices_u8))
        body = encode_slices(slices_u8)
        started = time.perf_counter()
        last: EndpointError | None = None
        for attempt in range(1, self.policy.attempts + 1):
            try:
                payload, attributes_text = self.transport(body, context.encode())
                result = self._parse(slices_u8, payload, attributes_text, context, expected)
                return EndpointResult(result[0], result[1], attempt, time.perf_counter() - started)
            except EndpointError as exc:
                last = exc
                if not exc.retryable or attempt == self.policy.attempts:
                    break
                delay = self.policy.delay(attempt - 1)
                log.warning("endpoint attempt %d failed (%s); retrying in %.2f s", attempt, exc, delay)
                if self.on_retry is not None:
                    self.on_retry(attempt, exc)
                self.sleep(delay)
        assert last is not None
        raise EndpointError(
            f"endpoint failed after {attempt} attempt(s): {last}", retryable=last.retryable, status=last.status
        ) from last

    @staticmethod
    def _parse(
        slices_u8: np.ndarray, payload: bytes, attributes_text: str, context: RequestAttributes, expected: int
    ) -> tuple[np.ndarray, ResponseAttributes]:
        try:
            probabilities = decode_slices(payload)
            attributes = ResponseAttributes.decode(attributes_text)
        except ProtocolError as exc:
            # A malformed answer is the server's fault and may be a transient bad instance.
            raise EndpointError(f"malformed endpoint response: {exc}", retryable=True) from exc
        answered = len(probabilities)
        if answered == len(slices_u8) and answered != expected:
            # An endpoint that ignores the request's context answers for every slice: drop the context's.
            before, after = context.context_before, context.context_after
            probabilities, attributes = trim_context(probabilities, before, after), attributes.trimmed(before, after)
        if probabilities.shape != (expected, *slices_u8.shape[1:]) or len(attributes.slice_probabilities) != expected:
            raise EndpointError(
                f"endpoint answered {probabilities.shape} maps and {len(attributes.slice_probabilities)} slice "
                f"probabilities for {slices_u8.shape} slices ({expected} of them to answer for)",
                retryable=True,
            )
        return probabilities, attributes
