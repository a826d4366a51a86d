"""The patient-data search finds every real leak and nothing by chance."""

from __future__ import annotations

import json

import pytest

from tests.patient_identifiers import IDENTIFIER_NEEDLES, PATIENT_IDENTIFIERS, identifier_leaks, is_distinctive


def test_every_needle_is_distinctive() -> None:
    assert [needle for needle in IDENTIFIER_NEEDLES if not is_distinctive(needle)] == []


def test_every_identifier_is_searched_for() -> None:
    # Each field the fixture fills is found by at least one needle, so no identifier goes unsearched.
    assert [keyword for keyword, value in PATIENT_IDENTIFIERS.items() if not identifier_leaks(value)] == []


@pytest.mark.parametrize(
    "text",
    [
        # The EMF line that once matched a five-digit StudyID: its digits run on around the needle.
        json.dumps({"_aws": {"Timestamp": 1796592551020931, "CloudWatchMetrics": []}, "port": 44871093123}),
        "uid 1.2.826.0.1.3680043.8.498.194487109377120594055102093196",
        "took 0.1955 s, pid 19560, port 55102, size 9434765919000 bytes",
    ],
)
def test_digit_runs_inside_longer_numbers_are_no_leak(text: str) -> None:
    assert identifier_leaks(text) == []


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ('{"patient": "MRN-QZ44871093"}', ["MRN-QZ44871093", "44871093"]),
        ("mrn_qz44871093 done", ["44871093"]),
        ("study STU 55102093, accession 77120594.", ["77120594", "55102093"]),
        ("born 19560317", ["19560317"]),
        ("folder QUETZAL_Marisol", ["Quetzal", "Marisol"]),
        ("sent by Dr Fairweather", ["Fairweather"]),
    ],
)
def test_a_real_leak_is_found_in_any_form(text: str, found: list[str]) -> None:
    assert identifier_leaks(text) == found
