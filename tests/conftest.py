"""Shared fixtures: a fresh ledger on SQLite and on a real PostgreSQL server for every test.

PostgreSQL comes from ``FLASH_TEST_POSTGRES_URL`` (default: the local server, user postgres).
Each test gets its own database, created and dropped around it. Where no server answers the
PostgreSQL cases skip, unless ``FLASH_TEST_REQUIRE_SERVICES=1``, where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import migrate
from ledger.db import create_engine

POSTGRES_URL = os.environ.get(
    "FLASH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_SERVICES = os.environ.get("FLASH_TEST_REQUIRE_SERVICES") == "1"


def service_missing(reason: str) -> None:
    """Skip, or fail when the run requires every service."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing: {reason}", pytrace=False)
    pytest.skip(reason)


def _admin_conninfo() -> str:
    url = make_url(POSTGRES_URL).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


_pg_checked: dict[str, str | None] = {}


def postgres_unavailable() -> str | None:
    if "reason" not in _pg_checked:
        try:
            with psycopg.connect(_admin_conninfo(), connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _pg_checked["reason"] = None
        except Exception as exc:  # any failure to connect means: no server to test against
            _pg_checked["reason"] = f"no PostgreSQL at {POSTGRES_URL}: {exc}".splitlines()[0]
    return _pg_checked["reason"]


def create_postgres_database() -> tuple[str, str]:
    """Create an empty database; returns (its async URL, its name)."""
    reason = postgres_unavailable()
    if reason:
        service_missing(reason)
    name = f"flash_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(POSTGRES_URL).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False), name


def drop_postgres_database(name: str) -> None:
    with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """An empty PostgreSQL database (no schema)."""
    url, name = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        return
    url, name = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(name)


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """A database migrated to head, on SQLite and on PostgreSQL."""
    migrate.upgrade(empty_db_url)
    return empty_db_url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(db_url)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
def pg_db_url(postgres_url: str) -> str:
    """A PostgreSQL database migrated to head (for the tests that are about concurrency)."""
    migrate.upgrade(postgres_url)
    return postgres_url


@pytest.fixture
async def pg_engine(pg_db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(pg_db_url, pool_size=20)
    try:
        yield eng
    finally:
        await eng.dispose()


MASTER_KEY_HEX = "7f" * 32


@pytest.fixture
def master_key_hex() -> str:
    return MASTER_KEY_HEX
