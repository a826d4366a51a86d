"""The typed contracts between the stages and with the app: closed sets are enums, and the API's
OpenAPI document is generated from the code (routes + pydantic models over those enums)."""

from __future__ import annotations

import json

from ichseg.errors import ErrorCode
from ichseg.findings import Finding
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
    finding = json.dumps(schemas["Headline"]["properties"]["finding"])
    assert all(f'"{item.value}"' in finding for item in Finding)
