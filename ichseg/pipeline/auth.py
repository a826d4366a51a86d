"""Firebase ID token verification for the API's Lambda authorizer (firebase-admin, plus one check).

``verify_id_token`` checks the RS256 signature against Google's published certificates, the
expiry, the issue time, the audience (the Firebase project id) and the issuer
(``https://securetoken.google.com/<project>``); the sign-in time (``auth_time``) is checked here.
No Google credential is needed: public certificates are public, so the app is initialised with an
anonymous one.
"""

from __future__ import annotations

import os
import time
from functools import cached_property
from typing import Any

from ichseg.pipeline.config import ConfigError
from ichseg.pipeline.mirror import anonymous_credential, firebase_app

BEARER = "bearer "
CLOCK_SKEW_SECONDS = 5
"""Tolerance for a sign-in stamped by a clock slightly ahead of this one."""


class InvalidToken(Exception):
    """The caller's token is missing, malformed, forged, expired or for another project."""


class FirebaseTokenVerifier:
    """Verifies ``Authorization: Bearer <Firebase ID token>`` headers for one Firebase project."""

    def __init__(self, project_id: str) -> None:
        if not project_id:
            raise ConfigError("missing configuration: FIREBASE_PROJECT_ID")
        if os.environ.get("FIREBASE_AUTH_EMULATOR_HOST"):
            # With it set, firebase-admin accepts unsigned tokens and skips the expiry check.
            raise ConfigError("FIREBASE_AUTH_EMULATOR_HOST is set: ID tokens would not be verified; unset it")
        self.project_id = project_id

    @cached_property
    def app(self) -> Any:
        return firebase_app(f"ichseg-auth:{self.project_id}", anonymous_credential(), {"projectId": self.project_id})

    def uid_from_header(self, authorization: str | None) -> str:
        """The verified uid of the token in an Authorization header; :class:`InvalidToken` otherwise."""
        if not authorization or not authorization.lower().startswith(BEARER):
            raise InvalidToken("expected 'Authorization: Bearer <Firebase ID token>'")
        return self.uid_from_token(authorization[len(BEARER) :].strip())

    def uid_from_token(self, token: str) -> str:
        from firebase_admin import auth

        try:
            claims = auth.verify_id_token(token, app=self.app)
        except (auth.InvalidIdTokenError, auth.ExpiredIdTokenError, auth.RevokedIdTokenError, ValueError) as exc:
            raise InvalidToken(str(exc)) from exc
        # CertificateFetchError (Google unreachable) propagates: that is our outage, not a bad token.
        # Firebase's rules say auth_time (when the user signed in) must be in the past; the Admin
        # SDK checks iat and exp but not auth_time, so a token claiming a future sign-in is refused here.
        auth_time = claims.get("auth_time")
        if not isinstance(auth_time, int | float) or isinstance(auth_time, bool):
            raise InvalidToken("the ID token has no auth_time claim")
        if auth_time > time.time() + CLOCK_SKEW_SECONDS:
            raise InvalidToken("the ID token's auth_time is in the future")
        return str(claims["uid"])
