"""One ledger connection per request, shared by the credential check and the handler.

Every checkout of a pooled connection costs round trips to the database (the pool's liveness
ping, and on PostgreSQL the BEGIN and ROLLBACK of a transaction). A request that looked up its
token on one connection and read its answer on another paid them twice. Here the first reader
opens the connection and the request's end closes it, whatever happened in between.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


def request_reads(engine: AsyncEngine) -> AsyncEngine:
    """The engine (already read-only) that requests read through.

    On PostgreSQL these reads run in autocommit: under READ COMMITTED each statement takes its own
    snapshot whether or not a transaction surrounds it, so BEGIN and ROLLBACK would buy nothing
    but two round trips. On SQLite a deferred read transaction keeps one snapshot and takes no
    write lock. Streams (server-side cursors) need a transaction: they keep the plain engine.
    """
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


class RequestReader:
    """A read connection opened on first use; ``close`` gives it back (safe to call twice)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None

    async def connection(self) -> AsyncConnection:
        if self._conn is None:
            self._conn = await self._engine.connect()
        return self._conn

    async def close(self) -> None:
        """Give the connection back; long streams call this before they start streaming."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
