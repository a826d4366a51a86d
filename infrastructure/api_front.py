"""The local HTTP front for the API: what API Gateway's HTTP API does, for the local stack.

Each request is matched against the routes of ``functions/openapi.json`` (the document generated
from the API function's code, the one the app developers read), then treated as an HTTP API with a
Lambda authorizer (payload 2.0, simple responses, identity source ``$request.header.Authorization``)
treats it:

- a body over :data:`MAX_BODY_BYTES` (HTTP API's 10 MB payload limit): 413, nothing is called;
- a path the API has but not with this method: 405 with ``Allow`` (API Gateway would say 404; the
  contract says 405, and the routes are the same either way);

- no ``Authorization`` header: 401 ``{"message":"Unauthorized"}``, the authorizer is not called;
- the authorizer answers ``isAuthorized: false``: 403 ``{"message":"Forbidden"}``;
- the authorizer or the API function errors: 500 ``{"message":"Internal Server Error"}``;
- otherwise the API function's response, with the authorizer's context in
  ``requestContext.authorizer.lambda``.

One local-only extra route, ``POST /_local/token {"uid": ...}``, mints an ID token from the stack's
token issuer (what Firebase Auth's sign-in gives the app); it does not exist in the cloud.
And ``GET /viewer/...`` serves the static results viewer (``viewer/``), without authorisation (the
page holds no data; it calls the API with the user's token); in the cloud Firebase Hosting serves it.
Every viewer response carries :func:`viewer_headers`, a Content-Security-Policy among them: the
page may talk to its API (here the front itself, ``'self'``) and the bucket's presigned links only.
``firebase.json`` carries the same headers for Firebase Hosting (a test compares the two).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from infrastructure.lambda_runtime import LocalFunction, authorizer_event, http_api_event

OPENAPI = Path(__file__).resolve().parents[1] / "functions" / "openapi.json"
LOCAL_TOKEN_PATH = "/_local/token"
VIEWER_DIR = Path(__file__).resolve().parents[1] / "viewer"
VIEWER_ROUTE = "/viewer/"
VIEWER_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
MAX_BODY_BYTES = 10 * 1024 * 1024
"""API Gateway HTTP API's request payload limit (10 MB); bigger requests never reach a function."""


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    public: bool = False
    """Served without a token: the operation's ``security`` is ``[]`` (template.yaml: no authorizer)."""

    @property
    def key(self) -> str:
        return f"{self.method} {self.template}"


def routes_from_openapi(path: Path = OPENAPI) -> list[Route]:
    """The API's routes as the OpenAPI description declares them (one source for docs and front)."""
    document = json.loads(path.read_text())
    routes = []
    for template, operations in document["paths"].items():
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$"
        for method, operation in operations.items():
            if method.lower() in ("get", "post", "put", "patch", "delete"):
                public = operation.get("security") == []
                routes.append(Route(method.upper(), template, re.compile(regex), public))
    return routes


def _json_response(status: int, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


class ApiFront:
    """A WSGI app that turns HTTP requests into authorizer + API function invocations."""

    def __init__(
        self,
        authorizer: LocalFunction,
        api: LocalFunction,
        region: str,
        mint_token: Callable[[str], str] | None = None,
        routes: list[Route] | None = None,
    ) -> None:
        self.authorizer = authorizer
        self.api = api
        self.region = region
        self.mint_token = mint_token
        self.routes = routes or routes_from_openapi()
        # The API is this front itself ('self'); the links are wherever the API function presigns them.
        self.viewer_headers = viewer_headers("'self'", presigned_link_origins(api.environment))

    def handle(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes, source_ip: str
    ) -> tuple[int, dict[str, str], bytes]:
        if self.mint_token is not None and method == "POST" and path == LOCAL_TOKEN_PATH:
            uid = (json.loads(body or b"{}") or {}).get("uid", "local-user")
            return _json_response(200, {"id_token": self.mint_token(str(uid)), "uid": uid})
        if method in ("GET", "HEAD") and (path + "/").startswith(VIEWER_ROUTE):
            return viewer_file(path, self.viewer_headers)
        if len(body) > MAX_BODY_BYTES:
            return _json_response(413, {"message": "Request Entity Too Large"})
        match = next(((r, m) for r in self.routes if r.method == method and (m := r.pattern.match(path))), None)
        if match is None:
            allowed = sorted({r.method for r in self.routes if r.pattern.match(path)})
            if allowed:
                status, headers, data = _json_response(405, {"message": "Method Not Allowed"})
                return status, {**headers, "Allow": ", ".join(allowed)}, data
            return _json_response(404, {"message": "Not Found"})
        route, found = match
        request = http_api_event(method, path, query, headers, body, route.key, found.groupdict() or None, source_ip)
        if route.public:
            return self._invoke_api(request)
        authorization = request["headers"].get("authorization", "")
        if not authorization.strip():
            return _json_response(401, {"message": "Unauthorized"})
        status, answer = self.authorizer.invoke(authorizer_event(request, self.region, [authorization]))
        if status != "ok" or not isinstance(answer, dict):
            return _json_response(500, {"message": "Internal Server Error"})
        if answer.get("isAuthorized") is not True:
            return _json_response(403, {"message": "Forbidden"})
        request["requestContext"]["authorizer"] = {"lambda": answer.get("context") or {}}
        return self._invoke_api(request)

    def _invoke_api(self, request: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        status, response = self.api.invoke(request)
        if status != "ok" or not isinstance(response, dict):
            return _json_response(500, {"message": "Internal Server Error"})
        return _proxy_response(response)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        from werkzeug.wrappers import Request

        request = Request(environ)
        # Refused before reading: a client declaring a huge body must not make the front buffer it.
        if (request.content_length or 0) > MAX_BODY_BYTES:
            status, headers, body = _json_response(413, {"message": "Request Entity Too Large"})
            start_response("413 Request Entity Too Large", [*headers.items(), ("Content-Length", str(len(body)))])
            return [body]
        status, headers, body = self.handle(
            request.method,
            request.path,
            request.query_string.decode(),
            dict(request.headers.items()),
            request.get_data(),
            request.remote_addr or "127.0.0.1",
        )
        from http import HTTPStatus

        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        start_response(f"{status} {reason}", [*headers.items(), ("Content-Length", str(len(body)))])
        return [body]


def viewer_csp(api_origin: str, link_origins: Sequence[str]) -> str:
    """The viewer's Content-Security-Policy: its own scripts and styles, its API (``api_origin``,
    which gets the user's token) and the presigned links (``link_origins``), nothing else.

    Even a script injected into the page, or a viewer.js bug, cannot send the token or the images
    anywhere else (``connect-src``), and the page cannot be framed (clickjacking) or re-based."""
    links = " ".join(link_origins)
    directives = {
        "default-src": "'none'",  # whatever is not named below
        "script-src": "'self'",  # config.js and viewer.js: no inline script, no eval
        "style-src": "'self'",  # viewer.css (viewer.js sets styles through the CSSOM, which CSP allows)
        # The slices' frames and masks: <img> loads on presigned links; data: is the empty favicon
        # (index.html), which keeps the browser from asking the server for /favicon.ico.
        "img-src": f"{links} data:",
        # GET /v1/scans/{id} with the token, and report.json fetched from its presigned link.
        "connect-src": f"{api_origin} {links}",
        "object-src": "'none'",
        "base-uri": "'none'",
        "form-action": "'none'",  # the token form is handled in script, never submitted (no token in a URL)
        "frame-ancestors": "'none'",
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def viewer_headers(api_origin: str, link_origins: Sequence[str]) -> dict[str, str]:
    """The headers of every viewer response: here from the front, in the cloud from Firebase
    Hosting (``firebase.json``, kept equal by a test)."""
    return {
        "Content-Security-Policy": viewer_csp(api_origin, link_origins),
        # Presigned links must not leak through Referer (index.html's meta says it too, for old browsers).
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        # no-cache: a reloaded page picks up a changed viewer (or config.js) at once; the files are small.
        "Cache-Control": "no-cache",
    }


def aws_link_origins(bucket: str, region: str) -> list[str]:
    """The origins of the API's presigned links in AWS: the bucket's virtual-hosted names.

    botocore (1.44, the Lambda's pin) signs on the global name ``<bucket>.s3.amazonaws.com``; the
    regional name ``<bucket>.s3.<region>.amazonaws.com`` is what a newer botocore or the ``regional``
    us-east-1 setting signs on. Both name this bucket only, so allowing both costs nothing."""
    return [f"https://{bucket}.s3.amazonaws.com", f"https://{bucket}.s3.{region}.amazonaws.com"]


def presigned_link_origins(environment: Mapping[str, str]) -> list[str]:
    """Where the API function's presigned links point, read from its environment: an S3 endpoint
    override (locally moto's address; botocore presigns path-style on an IP address, so the links'
    origin is the endpoint's), else the bucket's AWS names (:func:`aws_link_origins`)."""
    endpoint = environment.get("AWS_ENDPOINT_URL_S3") or environment.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint)
        return [f"{parts.scheme}://{parts.netloc}"]
    region = environment.get("AWS_REGION") or environment.get("AWS_DEFAULT_REGION") or "us-east-1"
    return aws_link_origins(environment["ICHSEG_BUCKET"], region)


def viewer_file(path: str, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
    """A file of the static viewer, with ``headers`` (:func:`viewer_headers`); ``/viewer`` redirects
    to ``/viewer/`` (the page's relative links need the slash) and ``/viewer/`` is ``index.html``.
    Only the viewer's own files are served."""
    if path == VIEWER_ROUTE.rstrip("/"):
        return 301, {**headers, "Location": VIEWER_ROUTE}, b""
    name = path[len(VIEWER_ROUTE) :] or "index.html"
    file = (VIEWER_DIR / name).resolve()
    if file.parent != VIEWER_DIR or file.suffix not in VIEWER_TYPES or not file.is_file():
        status, json_headers, body = _json_response(404, {"message": "Not Found"})
        return status, {**headers, **json_headers}, body
    return 200, {**headers, "Content-Type": VIEWER_TYPES[file.suffix]}, file.read_bytes()


def _proxy_response(response: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """A Lambda proxy response (payload 2.0) as HTTP API turns it into an HTTP response."""
    import base64

    if "statusCode" not in response:  # payload 2.0: a bare JSON value means 200 with that body
        return _json_response(200, response)
    body = response.get("body") or ""
    data = base64.b64decode(body) if response.get("isBase64Encoded") else str(body).encode()
    headers = {str(k): str(v) for k, v in (response.get("headers") or {}).items()}
    for name, values in (response.get("multiValueHeaders") or {}).items():
        headers[name] = ",".join(str(v) for v in values)
    return int(response["statusCode"]), headers, data
