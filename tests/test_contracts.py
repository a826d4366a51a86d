"""The typed contracts between the stages and with the app: closed sets are enums, and the API
spec's closed sets are generated from them."""

from __future__ import annotations


def test_openapi_closed_sets_are_generated_from_the_enums() -> None:
    """The state, error-code and content-type enums of the API spec are the code's own."""
    from functions.openapi import SPEC, main, render

    assert main(["--check"]) == 0
    assert "# generated: ErrorCode" in SPEC.read_text()
    stale = SPEC.read_text().replace("deadline_exceeded, ", "")
    assert render(stale) != stale and render(stale) == SPEC.read_text()
