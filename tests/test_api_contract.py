"""One list of routes: the generated OpenAPI document's, which the local front serves and which
template.yaml's HttpApi events must deploy (no route in one and not the others)."""

from __future__ import annotations

from typing import Any

from cfnlint.decode import decode

from infrastructure.api_front import routes_from_openapi
from tests.conftest import REPO


def _template_routes() -> set[str]:
    template, errors = decode(str(REPO / "template.yaml"))
    assert not errors and template is not None
    function: dict[str, Any] = template["Resources"]["ApiFunction"]["Properties"]
    return {
        f"{event['Properties']['Method'].upper()} {event['Properties']['Path']}"
        for event in function["Events"].values()
        if event["Type"] == "HttpApi"
    }


def test_template_routes_local_front_and_openapi_document_agree() -> None:
    front = {route.key for route in routes_from_openapi()}
    assert "DELETE /v1/scans/{job_id}" in front and "GET /v1/openapi.json" in front
    assert _template_routes() == front


def test_the_served_document_is_the_committed_one() -> None:
    from functions.api import openapi_json
    from functions.openapi import SPEC

    assert openapi_json() == SPEC.read_text()
