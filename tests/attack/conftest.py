"""Fixtures of the attack suites: a SQLite ledger of each test's own (the app-level ``client``
is tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from sidecar.persistence.db import create_engine, migrate, resolve_url


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A migrated SQLite ledger of this test's own."""
    e = create_engine(resolve_url(None, tmp_path))
    await migrate(e)
    yield e
    await e.dispose()
