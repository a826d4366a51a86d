"""Shared paths and fixtures for the ichseg test suite.

The tests are grouped by deployable, then feature: ``core/`` (the ichseg library and its CLI),
``pipeline/`` (the AWS application: ``ichseg/pipeline`` and ``functions/``), ``serving/``,
``gateway/``, ``client/``, ``viewer/``, ``infrastructure/`` (template, local stack, deployment) and
``training/`` (training and export, in their own environment). Whether a test needs the local stack
is a marker, ``stack``, given here to every test that uses its fixture.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.stack_fixtures", "tests.browser_fixtures"]

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the local stack, directly or through another fixture, ``stack``,
    and run those last: the stack lives from its first test to the end of the session, and the
    tests that measure this process (``tests/core/test_scan_memory.py``'s tracemalloc peaks) must
    not count its threads' allocations."""
    uses_stack = [item for item in items if "stack" in getattr(item, "fixturenames", ())]
    for item in uses_stack:
        item.add_marker(pytest.mark.stack)
    marked = set(map(id, uses_stack))
    items[:] = [item for item in items if id(item) not in marked] + uses_stack
