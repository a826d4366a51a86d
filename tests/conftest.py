"""Shared paths and fixtures for the ichseg test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE = REPO / "samples" / "ct-ich-051"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The committed real sample scan (CT-ICH patient 051)."""
    return SAMPLE
