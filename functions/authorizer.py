"""HTTP API Lambda authorizer (payload v2, simple responses): verifies Firebase ID tokens.

``Authorization: Bearer <ID token>`` is verified by firebase-admin (RS256 signature against
Google's certificates, expiry, audience = ``FIREBASE_PROJECT_ID``, issuer); the verified uid goes
into the authorizer context, where the API reads it (``requestContext.authorizer.lambda.uid``).
HTTP API answers 401 when the header is missing and 403 when this returns ``isAuthorized: false``.

A refusal is logged with its reason (:class:`~ichseg.pipeline.auth.TokenRefusal`) and nothing of the
token, well-formed or not: a token in a log is a credential for whoever reads the log.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Metrics, Tracer
from aws_lambda_powertools.utilities.data_classes import event_source
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerEventV2,
    APIGatewayAuthorizerResponseV2,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions import handler_logger
from ichseg.pipeline.auth import FirebaseTokenVerifier, InvalidToken

logger = handler_logger()
tracer = Tracer()
metrics = Metrics()
_verifiers: dict[str, FirebaseTokenVerifier] = {}


def verifier() -> FirebaseTokenVerifier:
    project = os.environ.get("FIREBASE_PROJECT_ID", "")
    if project not in _verifiers:
        _verifiers[project] = FirebaseTokenVerifier(project)
    return _verifiers[project]


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=APIGatewayAuthorizerEventV2)
def handler(event: APIGatewayAuthorizerEventV2, context: LambdaContext) -> dict[str, Any]:
    try:
        uid = verifier().uid_from_header(event.headers.get("authorization"))
    except InvalidToken as exc:
        logger.warning(
            "token rejected",
            extra={"reason": exc.refusal.value, "detail": exc.refusal.description, "route": event.route_key},
        )
        metrics.add_metric("TokensRejected", "Count", 1)
        return APIGatewayAuthorizerResponseV2(authorize=False).asdict()
    logger.thread_safe_append_keys(uid=uid)
    return APIGatewayAuthorizerResponseV2(authorize=True, context={"uid": uid}).asdict()
