"""One synthetic patient, and the one search for their identifiers outside the hospital's results.

Every hospital series the tests send carries these identifiers in every field a site fills. The
tests then search logs, job rows, error reasons, reports and Firebase for them: a hit is a leak.

A search over logs must never hit by chance. Logs hold millisecond timestamps, ports, PIDs, UUIDs
and UIDs, all of them arbitrary digit runs: a short numeric needle (a five-digit StudyID, say) turns
up inside an EMF ``Timestamp`` sooner or later. So every needle is distinctive (a word of at least
six letters, or an identifier that bears letters, or a digit run of at least eight digits), and a
needle that begins or ends with a digit is only found as a whole number, never as a run of digits
inside a longer one. A real leak still fails: the full identifier, any of its distinctive words or
its digits reformatted (``MRN_QZ44871093``, ``mrn 44871093``) are all found, in any letter case.
"""

from __future__ import annotations

import re

PATIENT_IDENTIFIERS: dict[str, str] = {
    "PatientName": "Quetzal^Marisol^Anneliese",
    "PatientID": "MRN-QZ44871093",
    "PatientBirthDate": "19560317",
    "OtherPatientIDs": "NHS-QZ9434765919",
    "PatientAddress": "17 Larkspur Crescent Wexford",
    "AccessionNumber": "ACC-QZ77120594",
    "StudyID": "STU-QZ55102093",
    "StudyDescription": "CT HEAD Quetzal Marisol MRN-QZ44871093",
    "SeriesDescription": "Axial 5mm Quetzal 1956-03-17",
    "InstitutionName": "Saint Brigid Larkspur Hospital",
    "ReferringPhysicianName": "Okonkwo-Reyes^Tiberius",
    "OperatorsName": "Vandersloot^Henrike",
    "PerformingPhysicianName": "Abernathy-Quist^Cornelius",
    "RequestingPhysician": "Fairweather^Ignatius",
    "ProtocolName": "Head Quetzal MRN-QZ44871093",
    "ImageComments": "Patient Quetzal fell at home 1956-03-17",
}
"""What a real head CT carries about its patient, in every field a site fills."""

PATIENT_FOLDER = "Quetzal_Marisol_MRN-QZ44871093/1956-03-17 CT HEAD ACC-QZ77120594"
"""How a router names a patient's folder in a zip (routers name folders after patients)."""

IDENTIFIER_NEEDLES: tuple[str, ...] = (
    # Whole identifiers.
    "MRN-QZ44871093",
    "NHS-QZ9434765919",
    "ACC-QZ77120594",
    "STU-QZ55102093",
    "Quetzal^Marisol",
    # Their digits, as whole numbers: an identifier reformatted by a careless log line.
    "44871093",
    "9434765919",
    "77120594",
    "55102093",
    "19560317",
    "1956-03-17",
    # Every name and place, one word at a time.
    "Quetzal",
    "Marisol",
    "Anneliese",
    "Larkspur",
    "Wexford",
    "Okonkwo",
    "Tiberius",
    "Vandersloot",
    "Henrike",
    "Abernathy",
    "Cornelius",
    "Fairweather",
    "Ignatius",
    "Brigid",
)
"""What is searched for: each one distinctive enough that a chance match is impossible."""


def is_distinctive(needle: str) -> bool:
    """A needle that cannot turn up by chance in logs: six letters or more, or eight digits or more."""
    letters = sum(character.isalpha() for character in needle)
    digits = sum(character.isdigit() for character in needle)
    return letters >= 6 or digits >= 8


def _pattern(needle: str) -> re.Pattern[str]:
    # A needle's digit edge may not continue into more digits: 55102093 is not found in
    # 1796592551020931 (a timestamp), and is found in "STU 55102093," or "x55102093".
    before = r"(?<![0-9])" if needle[0].isdigit() else ""
    after = r"(?![0-9])" if needle[-1].isdigit() else ""
    return re.compile(before + re.escape(needle) + after, re.IGNORECASE)


_PATTERNS = [(needle, _pattern(needle)) for needle in IDENTIFIER_NEEDLES]


def identifier_leaks(text: str) -> list[str]:
    """The needles found in ``text``; ``[]`` when it holds nothing of the patient."""
    return [needle for needle, pattern in _PATTERNS if pattern.search(text)]
