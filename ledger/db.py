"""Engines and transactions for PostgreSQL (production) and SQLite (the embedded default)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

T = TypeVar("T")

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./flash-payouts.db"
# A pooled PostgreSQL connection idle longer than this is pinged before it is handed out.
PING_AFTER_IDLE = 5.0


class DatabaseUrlError(ValueError):
    """The database URL cannot be used."""


def parse_database_url(url: str) -> URL:
    """Parse and normalise a database URL to an async driver, or raise DatabaseUrlError."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseUrlError(f"malformed database URL {url!r}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        if parsed.get_driver_name() not in ("psycopg", "psycopg_async", "psycopg2", ""):
            raise DatabaseUrlError(
                f"unsupported PostgreSQL driver in {parsed!r}; use postgresql+psycopg://"
            )
        return parsed.set(drivername="postgresql+psycopg")
    raise DatabaseUrlError(
        f"unsupported database {backend!r}; use sqlite+aiosqlite:///FILE or postgresql+psycopg://..."
    )


def sync_url(url: str | URL) -> URL:
    """The same database through a synchronous driver (for Alembic and bulk tools)."""
    parsed = parse_database_url(str(url) if isinstance(url, URL) else url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite")
    return parsed.set(drivername="postgresql+psycopg")


def create_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> AsyncEngine:
    """An async engine. SQLite gets WAL, foreign keys, a busy timeout and IMMEDIATE transactions.

    IMMEDIATE matters: with SQLite's default deferred transactions two writers that both read
    first deadlock on the upgrade to a write lock; taking the write lock at BEGIN serialises them.
    """
    parsed = parse_database_url(url)
    kwargs: dict[str, Any] = {"echo": echo}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size)
    engine = create_async_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        _configure_sqlite(engine)
    else:
        _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Check a connection's liveness only when it has sat idle in the pool for a while.

    ``pool_pre_ping`` pings on every checkout, a round trip that a busy reader (an API request
    is one checkout and two or three statements) pays on each request. A connection handed
    back moments ago is as alive as the ping would say; one that idled may have been closed by
    a restart or a proxy, and a failed ping here makes the pool replace it (and, as with
    ``pool_pre_ping``, every connection older than the failure).
    """
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["flash_idle_since"] = time.monotonic()

    @event.listens_for(sync_engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("flash_idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE:
            return
        try:
            sync_engine.dialect.do_ping(dbapi_conn)
        except Exception as error:  # whatever broke it, a fresh connection is the remedy
            raise exc.DisconnectionError(type(error).__name__) from error


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("flash_readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def is_sqlite(engine_or_conn: AsyncEngine | AsyncConnection) -> bool:
    return engine_or_conn.dialect.name == "sqlite"


def readonly(engine: AsyncEngine) -> AsyncEngine:
    """The same engine for readers: on SQLite their transactions take no write lock."""
    return engine.execution_options(flash_readonly=True)


async def check_connection(engine: AsyncEngine, timeout: float = 5.0) -> None:
    """Raise if the database cannot be reached within ``timeout`` seconds."""
    from sqlalchemy import text

    async def ping() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    await asyncio.wait_for(ping(), timeout)


# PostgreSQL: deadlock_detected, serialization_failure. Batches of payouts take their shared
# rows (payment-hash locks, payouts, rollups, counters) in one sorted order, so two batches do
# not deadlock each other; a single-payout write elsewhere (a card tap's transaction) still
# takes its rows in its own order and can meet a batch in a cycle. The server then aborts one,
# and running it again is the cure.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def is_retryable(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) in _RETRYABLE_SQLSTATES:
        return True
    return "database is locked" in str(orig or "")  # SQLite past its busy timeout


async def in_transaction(
    engine: AsyncEngine,
    work: Callable[[AsyncConnection], Awaitable[T]],
    *,
    attempts: int = 5,
) -> T:
    """Run ``work`` in one transaction, again from the start if the database aborted it."""
    for attempt in range(attempts):
        try:
            async with engine.begin() as conn:
                return await work(conn)
        except DBAPIError as exc:
            if attempt + 1 >= attempts or not is_retryable(exc):
                raise
        await asyncio.sleep(random.uniform(0, 0.05 * 2**attempt))
    raise AssertionError("unreachable")
