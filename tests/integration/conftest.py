"""Fixtures for the integration tests that spawn real server processes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.test_serve_process import LOGS


@pytest.fixture(autouse=True)
async def no_leftover_servers() -> AsyncIterator[None]:
    """A test that fails half-way must not leave its `tickwire serve` running."""
    yield
    for proc in list(LOGS):
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        LOGS.pop(proc, None)
