"""The typed contracts between the stages and with the app: closed sets are enums, and the API's
OpenAPI document is generated from the code (routes + pydantic models over those enums)."""

from __future__ import annotations

import json

from ichseg.errors import ErrorCode
from ichseg.findings import Finding
from ichseg.media_types import media_type_of
from ichseg.pipeline.api_models import DEFAULT_UPLOAD_MAX_BYTES, ProblemCode
from ichseg.pipeline.config import ALLOWED_UPLOAD_TYPES
from ichseg.pipeline.jobs import JobState


def test_the_committed_openapi_document_is_the_one_the_code_generates() -> None:
    from functions.openapi import SPEC, main, render

    assert main(["--check"]) == 0
    assert SPEC.read_text() == render()
    # The check can fail: a document that differs from the code's is reported.
    original = SPEC.read_text()
    try:
        SPEC.write_text(original.replace('"deadline_exceeded",', ""))
        assert main(["--check"]) == 1
    finally:
        SPEC.write_text(original)


def test_the_documents_closed_sets_are_the_codes_enums() -> None:
    from functions.openapi import SPEC

    schemas = json.loads(SPEC.read_text())["components"]["schemas"]
    assert schemas["JobState"]["enum"] == [state.value for state in JobState]
    assert schemas["ErrorCode"]["enum"] == [code.value for code in ErrorCode]
    assert schemas["UploadContentType"]["enum"] == list(ALLOWED_UPLOAD_TYPES)
    assert schemas["Finding"]["enum"] == [item.value for item in Finding]
    assert schemas["ProblemCode"]["enum"] == [code.value for code in ProblemCode]


def test_the_document_is_valid_openapi_and_states_limits_as_json_schema() -> None:
    from openapi_spec_validator import validate

    from functions.openapi import SPEC

    document = json.loads(SPEC.read_text())
    validate(document)
    text = json.dumps(document)
    # pydantic writes ``ge``/``le`` where it cannot map a constraint: keywords no validator reads.
    assert '"ge":' not in text and '"le":' not in text
    size = document["components"]["schemas"]["StartScanRequest"]["properties"]["size_bytes"]["anyOf"][0]
    assert (size["minimum"], size["maximum"]) == (1, DEFAULT_UPLOAD_MAX_BYTES)  # over it: 413, documented


def test_every_refusal_is_documented_as_a_problem_with_its_codes() -> None:
    from functions.openapi import SPEC

    document = json.loads(SPEC.read_text())
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                (media_type,) = response["content"]
                schema = response["content"][media_type]["schema"]["$ref"].rsplit("/", 1)[-1]
                if int(status) in (401, 403):  # API Gateway's own, before the code runs
                    assert (media_type, schema) == ("application/json", "GatewayError"), (path, method, status)
                    continue
                assert (media_type, schema) == ("application/problem+json", "Problem"), (path, method, status)
                codes = [code for code in ProblemCode if f"`{code.value}`" in response["description"]]
                assert codes and all(code.status == int(status) for code in codes), (path, method, status)
            assert "500" in operation["responses"], (path, method)


def test_the_clients_upload_table_is_the_cores() -> None:
    from client.api import CONTENT_TYPES

    assert all(media_type_of(f"scan{suffix}") == kind for suffix, kind in CONTENT_TYPES.items())
    assert sorted(set(CONTENT_TYPES.values())) == sorted(ALLOWED_UPLOAD_TYPES)
