"""One list of routes: the generated OpenAPI document's, which the local front serves and which
template.yaml's HttpApi events must deploy (no route in one and not the others)."""

from __future__ import annotations

from typing import Any

from cfnlint.decode import decode

from infrastructure.api_front import routes_from_openapi
from tests.conftest import REPO


def _template_events() -> list[dict[str, Any]]:
    template, errors = decode(str(REPO / "template.yaml"))
    assert not errors and template is not None
    function: dict[str, Any] = template["Resources"]["ApiFunction"]["Properties"]
    return [event["Properties"] for event in function["Events"].values() if event["Type"] == "HttpApi"]


def _key(event: dict[str, Any]) -> str:
    return f"{event['Method'].upper()} {event['Path']}"


def test_template_routes_local_front_and_openapi_document_agree() -> None:
    front = {route.key for route in routes_from_openapi()}
    assert "DELETE /v1/scans/{job_id}" in front and "GET /v1/openapi.json" in front
    assert {_key(event) for event in _template_events()} == front


def test_only_the_document_is_public_and_the_template_agrees() -> None:
    public = {route.key for route in routes_from_openapi() if route.public}
    assert public == {"GET /v1/openapi.json"}
    unauthorized = {_key(e) for e in _template_events() if e.get("Auth", {}).get("Authorizer") == "NONE"}
    assert unauthorized == public


def test_the_served_document_is_the_committed_one() -> None:
    from functions.api import openapi_json
    from functions.openapi import SPEC

    assert openapi_json() == SPEC.read_text()
