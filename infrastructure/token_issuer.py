"""A locally trusted Firebase token issuer, so the real ``verify_id_token`` can be used locally.

Firebase signs ID tokens with RS256 keys whose X.509 certificates Google publishes at a fixed URL;
firebase-admin fetches them there (with requests) and checks signature, expiry, audience and issuer.
The local stack mints tokens of exactly that shape with its own key and certificate, and makes the
certificate fetch, and only that one, return its certificate (``responses`` intercepts it in the
authorizer's process; every other request goes out untouched to 127.0.0.1 or fails).

Not ``FIREBASE_AUTH_EMULATOR_HOST``: with it, firebase-admin accepts unsigned tokens and skips the
expiry check, which would make every security test pass for the wrong reason.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from typing import Any

ID_TOKEN_CERT_URL = "https://www.googleapis.com/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com"
"""Where firebase-admin fetches the ID token certificates (``firebase_admin._token_gen.ID_TOKEN_CERT_URI``)."""
ISSUER_PREFIX = "https://securetoken.google.com/"

_mock: Any = None


class LocalTokenIssuer:
    """An RSA key + self-signed certificate that mints Firebase-style ID tokens for one project."""

    def __init__(self, project_id: str, key_id: str | None = None) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.project_id = project_id
        self.key_id = key_id or uuid.uuid4().hex[:16]
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ichseg local issuer for {project_id}")])
        now = dt.datetime.now(dt.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(self._key, hashes.SHA256())
        )
        self.certificate_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def certificates(self) -> dict[str, str]:
        """The document Google serves at :data:`ID_TOKEN_CERT_URL`: key id -> PEM certificate."""
        return {self.key_id: self.certificate_pem}

    def claims(self, uid: str, lifetime_seconds: int = 3600, issued_at: float | None = None) -> dict[str, Any]:
        now = int(time.time() if issued_at is None else issued_at)
        return {
            "iss": ISSUER_PREFIX + self.project_id,
            "aud": self.project_id,
            "auth_time": now,
            "user_id": uid,
            "sub": uid,
            "iat": now,
            "exp": now + lifetime_seconds,
            "firebase": {"identities": {}, "sign_in_provider": "custom"},
        }

    def mint(self, uid: str, lifetime_seconds: int = 3600, **overrides: Any) -> str:
        """An ID token for ``uid`` as Firebase Auth would issue it (claims can be overridden for tests)."""
        import jwt

        claims = {**self.claims(uid, lifetime_seconds), **overrides}
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.key_id})

    def sign(self, claims: dict[str, Any]) -> str:
        """Exactly these claims, signed with this issuer's key (tests of claims firebase-admin lets through)."""
        return self.sign_with(claims, self._key)

    def sign_with(self, claims: dict[str, Any], key: Any, algorithm: str = "RS256", key_id: str | None = None) -> str:
        """Tokens signed by someone else (forgery tests): another key, another algorithm."""
        import jwt

        return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": key_id or self.key_id})


def trust_local_certificates(certificates: dict[str, str]) -> None:
    """Serve ``certificates`` at Google's certificate URL for this process (worker setup hook).

    Everything else passes through to 127.0.0.1/localhost (the emulators); other hosts are not
    reachable from a local stack, and an unexpected request fails instead of leaving the machine.
    """
    global _mock
    import responses

    if _mock is not None:
        _mock.stop()
    mock = responses.RequestsMock(assert_all_requests_are_fired=False)
    mock.add(responses.GET, ID_TOKEN_CERT_URL, json=certificates, headers={"Cache-Control": "public, max-age=3600"})
    mock.add_passthru(re.compile(r"^https?://(127\.0\.0\.1|localhost)[:/]"))
    mock.start()
    _mock = mock
