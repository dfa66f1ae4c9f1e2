"""Pooled PostgreSQL connections: pinged only after idling, and replaced when found dead."""

from __future__ import annotations

import psycopg
from sqlalchemy import text

from ledger import db


async def backend_pid(engine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()


def terminate(url: str, pid: int) -> None:
    conninfo = db.sync_url(url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def test_a_connection_closed_by_the_server_while_idle_is_replaced(pg_db_url, monkeypatch):
    engine = db.create_engine(pg_db_url, pool_size=1)
    try:
        first = await backend_pid(engine)
        terminate(pg_db_url, first)
        monkeypatch.setattr(db, "PING_AFTER_IDLE", 0.0)
        second = await backend_pid(engine)
        assert second != first
    finally:
        await engine.dispose()


async def test_a_connection_just_handed_back_is_reused_without_a_new_session(pg_db_url):
    engine = db.create_engine(pg_db_url, pool_size=1)
    try:
        pids = {await backend_pid(engine) for _ in range(5)}
        assert len(pids) == 1
    finally:
        await engine.dispose()
