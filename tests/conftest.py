"""Shared paths and fixtures for the ichseg test suite."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE = REPO / "samples" / "ct-ich-051"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The committed real sample scan (CT-ICH patient 051)."""
    return SAMPLE


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A bare moto server for tests that need real AWS APIs without the local stack (the gateway,
    the pipeline's units, the lean functions).

    Not ``mock_aws``: moto keeps one state per process, and ``mock_aws`` resets it on entry and
    exit, which would wipe the session's local stack too. Tests name their resources uniquely.
    """
    from infrastructure.moto_server import MotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = MotoServer().start()
    yield server.url
    server.stop()
