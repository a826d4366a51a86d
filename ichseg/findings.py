"""The scan's verdict, in a module of its own: the API's slim image reads it without numpy."""

from __future__ import annotations

from enum import StrEnum


class Finding(StrEnum):
    """The scan's verdict in ``report.json`` and the API's result summary."""

    HEMORRHAGE_DETECTED = "Hemorrhage detected"
    NORMAL = "Normal"
