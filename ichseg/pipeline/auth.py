"""Firebase ID token verification for the API's Lambda authorizer (firebase-admin, plus two checks).

``verify_id_token`` checks the RS256 signature against Google's published certificates, the
expiry, the issue time, the audience (the Firebase project id) and the issuer
(``https://securetoken.google.com/<project>``); the token's shape is checked here first, and the
sign-in time (``auth_time``) after. No Google credential is needed: public certificates are public,
so the app is initialised with an anonymous one.

A refused token is reported as a :class:`TokenRefusal`, a closed set of reasons with fixed
descriptions: never the token, and never the verifier's own message, which quotes the token or the
pieces it could not parse (``Wrong number of segments in token: b'eyJ...'``) and the claims an
attacker wrote (``... but got "<aud>"``). A bearer token in a log is a credential anyone who reads
the log can replay until it expires.
"""

from __future__ import annotations

import os
import re
import time
from enum import StrEnum
from functools import cached_property
from typing import Any

from ichseg.pipeline.config import ConfigError
from ichseg.pipeline.mirror import anonymous_credential, firebase_app

BEARER = "bearer "
CLOCK_SKEW_SECONDS = 5
"""Tolerance for a sign-in stamped by a clock slightly ahead of this one."""
MAX_TOKEN_CHARS = 8192
"""Firebase ID tokens are about 1 KB (custom claims add at most 1,000 bytes); anything far longer
is not one, and is refused before a byte of it is decoded."""
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
"""A compact JWS: header and payload in unpadded base64url, then the signature (left possibly empty
here so that ``alg: none`` is reported as the wrong algorithm, which is what it is)."""


class TokenRefusal(StrEnum):
    """Why a token was refused: what the authorizer logs instead of the token."""

    NO_BEARER = "no_bearer"
    MALFORMED = "malformed"
    CUSTOM_TOKEN = "custom_token"
    NO_KEY_ID = "no_key_id"
    WRONG_ALGORITHM = "wrong_algorithm"
    WRONG_AUDIENCE = "wrong_audience"
    WRONG_ISSUER = "wrong_issuer"
    BAD_SUBJECT = "bad_subject"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    REVOKED = "revoked"
    NO_SIGN_IN_TIME = "no_sign_in_time"
    FUTURE_SIGN_IN = "future_sign_in"
    INVALID = "invalid"
    """firebase-admin refused it for a reason not classified above (still refused)."""

    @property
    def description(self) -> str:
        """The reason for people (fixed text: nothing in it comes from the request)."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    TokenRefusal.NO_BEARER: "no 'Authorization: Bearer <Firebase ID token>' header",
    TokenRefusal.MALFORMED: "not a JWT (three base64url segments, at most 8 KB) or not decodable as one",
    TokenRefusal.CUSTOM_TOKEN: "a Firebase custom token, not an ID token",
    TokenRefusal.NO_KEY_ID: "the token's header has no key id (kid)",
    TokenRefusal.WRONG_ALGORITHM: "the token is not signed with RS256",
    TokenRefusal.WRONG_AUDIENCE: "the token's audience (aud) is not this Firebase project",
    TokenRefusal.WRONG_ISSUER: "the token's issuer (iss) is not this Firebase project's",
    TokenRefusal.BAD_SUBJECT: "the token's subject (sub) is missing, empty or too long",
    TokenRefusal.UNKNOWN_KEY: "the token's key id is not one of Google's current certificates",
    TokenRefusal.BAD_SIGNATURE: "the token's signature does not verify",
    TokenRefusal.NOT_YET_VALID: "the token was issued in the future (iat)",
    TokenRefusal.EXPIRED: "the token has expired",
    TokenRefusal.REVOKED: "the token has been revoked",
    TokenRefusal.NO_SIGN_IN_TIME: "the token has no sign-in time (auth_time)",
    TokenRefusal.FUTURE_SIGN_IN: "the token's sign-in time (auth_time) is in the future",
    TokenRefusal.INVALID: "firebase-admin refused the token",
}

_LIBRARY_REASONS = (
    ("custom token", TokenRefusal.CUSTOM_TOKEN),
    ('no "kid" claim', TokenRefusal.NO_KEY_ID),
    ("incorrect algorithm", TokenRefusal.WRONG_ALGORITHM),
    ('"aud" (audience)', TokenRefusal.WRONG_AUDIENCE),
    ('"iss" (issuer)', TokenRefusal.WRONG_ISSUER),
    ('"sub" (subject)', TokenRefusal.BAD_SUBJECT),
    ("Certificate for key id", TokenRefusal.UNKNOWN_KEY),
    ("Could not verify token signature", TokenRefusal.BAD_SIGNATURE),
    ("Token used too early", TokenRefusal.NOT_YET_VALID),
    ("Wrong number of segments", TokenRefusal.MALFORMED),
    ("Can't parse segment", TokenRefusal.MALFORMED),
    ("should be a JSON object", TokenRefusal.MALFORMED),
    ("Incorrect padding", TokenRefusal.MALFORMED),
)
"""Markers in firebase-admin's and google-auth's messages (the pinned versions'), first match wins.
They only choose which fixed reason is logged: a message no marker matches (a library upgrade) is
logged as ``invalid``, and the token is refused all the same."""


class InvalidToken(Exception):
    """The caller's token is missing, malformed, forged, expired or for another project.

    ``str()`` is the refusal's fixed description: safe to log, as is :attr:`refusal`.
    """

    def __init__(self, refusal: TokenRefusal) -> None:
        super().__init__(refusal.description)
        self.refusal = refusal


def classify_library_refusal(exc: Exception) -> TokenRefusal:
    """The reason behind firebase-admin's refusal, read from its type and message (never logged)."""
    from firebase_admin import auth

    if isinstance(exc, auth.ExpiredIdTokenError):
        return TokenRefusal.EXPIRED
    if isinstance(exc, auth.RevokedIdTokenError):
        return TokenRefusal.REVOKED
    message = str(exc)
    return next((refusal for marker, refusal in _LIBRARY_REASONS if marker in message), TokenRefusal.INVALID)


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
            raise InvalidToken(TokenRefusal.NO_BEARER)
        return self.uid_from_token(authorization[len(BEARER) :].strip())

    def uid_from_token(self, token: str) -> str:
        from firebase_admin import auth

        if len(token) > MAX_TOKEN_CHARS or not _JWT_SHAPE.fullmatch(token):
            raise InvalidToken(TokenRefusal.MALFORMED)
        try:
            claims = auth.verify_id_token(token, app=self.app)
        except (auth.InvalidIdTokenError, auth.ExpiredIdTokenError, auth.RevokedIdTokenError, ValueError) as exc:
            # ``from None``: the library's exception (which quotes the token) must not ride along
            # as the cause, where a traceback or an ``exc_info`` log would print it.
            raise InvalidToken(classify_library_refusal(exc)) from None
        # CertificateFetchError (Google unreachable) propagates: that is our outage, not a bad token.
        # Firebase's rules say auth_time (when the user signed in) must be in the past; the Admin
        # SDK checks iat and exp but not auth_time, so a token claiming a future sign-in is refused here.
        auth_time = claims.get("auth_time")
        if not isinstance(auth_time, int | float) or isinstance(auth_time, bool):
            raise InvalidToken(TokenRefusal.NO_SIGN_IN_TIME)
        if auth_time > time.time() + CLOCK_SKEW_SECONDS:
            raise InvalidToken(TokenRefusal.FUTURE_SIGN_IN)
        return str(claims["uid"])
