"""Every SQL panel query of the boards, run on PostgreSQL as Grafana's read-only role.

Grafana's macros and the boards' variables are expanded as Grafana would for the board's
default period; each query must run and return rows from a ledger filled through the ledger's
own write functions. The role must read the views and nothing else.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest
from exporter_fixtures import add_card, add_store, card_payout, utcnow
from sqlalchemy import insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from dashboards import sql
from dashboards.loader import sql_queries
from dashboards.macros import Frame, expand_sql
from ledger.payouts import upsert_payout
from ledger.schema import CardTap
from ledger.status import STATUSES

pytestmark = pytest.mark.postgres

STORES = ["store-a", "store-b"]
CARD = "cafe0000beef"
PAYOUT = "P-card-1"


async def fill(engine: AsyncEngine) -> None:
    for store in STORES:
        await add_store(engine, store)
    now = utcnow()
    async with engine.begin() as conn:
        await add_card(conn, CARD, "store-a", alias="Till 1")
    await card_payout(engine, PAYOUT, "store-a", CARD, 2_100, now - timedelta(hours=3))
    await card_payout(
        engine, "P-card-2", "store-a", CARD, 5_000, now - timedelta(days=2), state="AwaitingPayment"
    )
    from exporter_fixtures import payout

    async with engine.begin() as conn:
        await upsert_payout(
            conn,
            payout("P-b-1", "store-b", "Cancelled", 900, now - timedelta(hours=5)),
            source="webhook",
        )
        for outcome, card, store in (
            ("accepted", CARD, "store-a"),
            ("replay", CARD, "store-a"),
            ("bad_mac", CARD, "store-a"),
            ("unknown_card", None, None),
        ):
            await conn.execute(
                insert(CardTap.__table__).values(
                    store_id=store,
                    card_id=card,
                    outcome=outcome,
                    reason=None if outcome == "accepted" else f"refused: {outcome}",
                    counter=7,
                    amount_msat=2_100_000 if outcome == "accepted" else None,
                    payout_id=PAYOUT if outcome == "accepted" else None,
                    k1_hash=f"{outcome:0<64}"[:64],
                    created_at=now - timedelta(hours=3),
                    updated_at=now - timedelta(hours=3),
                )
            )


def reader_conninfo(db_url: str) -> str:
    url = make_url(db_url)
    return psycopg.conninfo.make_conninfo(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        dbname=url.database,
        user="flash_grafana",
        password="flash_grafana",
    )


def board_frame(**overrides: Any) -> Frame:
    variables: dict[str, Any] = {
        "store": STORES,
        "status": list(STATUSES),
        "card": CARD,
        "search": "",
        "payout": PAYOUT,
    }
    variables.update(overrides)
    return Frame.last(timedelta(days=7), variables=variables, interval="1h")


async def run_as_reader(db_url: str, query: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(reader_conninfo(db_url)) as conn:
        cur = await conn.execute(query)  # type: ignore[arg-type]
        return await cur.fetchall()


def test_every_board_has_sql_panels_to_check() -> None:
    boards = {uid for uid, _, _ in sql_queries()}
    assert boards == {
        "flash-payouts-overview",
        "flash-payout-detail",
        "flash-boltcards",
        "flash-service-health",  # its store picker
    }
    assert len(sql_queries()) >= 24


async def test_every_sql_panel_query_returns_rows_as_the_read_only_role(
    pg_engine: AsyncEngine, pg_db_url: str
) -> None:
    await fill(pg_engine)
    empty = []
    for uid, title, raw in sql_queries():
        rows = await run_as_reader(pg_db_url, expand_sql(raw, board_frame()))
        if not rows:
            empty.append(f"{uid}: {title}")
    assert not empty, f"queries without rows: {empty}"


async def test_payout_list_filters_by_status_card_and_search(
    pg_engine: AsyncEngine, pg_db_url: str
) -> None:
    await fill(pg_engine)

    async def ids(**variables: Any) -> list[str]:
        query = expand_sql(sql.PAYOUTS_TABLE, board_frame(**variables))
        return [row[0] for row in await run_as_reader(pg_db_url, query)]

    assert await ids(card="") == ["P-card-1", "P-b-1", "P-card-2"]
    assert await ids(card="", status=["Failed"]) == ["P-b-1"]
    assert await ids(card="Till 1") == ["P-card-1", "P-card-2"]
    assert await ids(card="", store=["store-b"]) == ["P-b-1"]
    assert await ids(card="", search="P-card-2") == ["P-card-2"]
    assert await ids(card="", search="5000") == ["P-card-2"]  # by sats
    assert await ids(card="", search="0.00000900") == ["P-b-1"]  # by amount
    # Text that is neither an id nor a number matches nothing and is never SQL.
    assert await ids(card="", search="x' OR '1'='1") == []


async def test_reader_role_reads_the_views_but_no_secret_and_cannot_write(
    pg_engine: AsyncEngine, pg_db_url: str
) -> None:
    await fill(pg_engine)
    assert await run_as_reader(pg_db_url, "SELECT count(*) FROM grafana_payouts") == [(3,)]
    # The views run with the reader's rights (for row-level security), so it may read the
    # columns they show; never a sealed key, a keyed hash, a tapper's address or a token.
    for table, column in (
        ("boltcards", "keys_sealed"),
        ("boltcards", "uid_hash"),
        ("boltcards", "uid"),  # shown through the views only where the store tracks cards
        ("payouts", "card_uid"),
        ("card_taps", "uid"),
        ("card_taps", "k1_hash"),
        ("card_taps", "remote_addr"),
        ("stores", "webhook_secret_sealed"),
        ("stores", "api_key_sealed"),
        ("payouts", "metadata"),
        ("api_tokens", "token_hash"),
        ("key_material", "sealed"),
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await run_as_reader(pg_db_url, f"SELECT {column} FROM {table} LIMIT 1")
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        await run_as_reader(pg_db_url, "CREATE TEMP TABLE t (x int)")


async def test_views_expose_no_keys_or_keyed_lookups(
    pg_engine: AsyncEngine, pg_db_url: str
) -> None:
    await fill(pg_engine)
    columns = await run_as_reader(
        pg_db_url,
        "SELECT column_name FROM information_schema.columns WHERE table_name LIKE 'grafana_%'",
    )
    names = {c for (c,) in columns}
    assert names, "the reader sees no view columns"
    for secret in ("keys_sealed", "uid_hash", "k1_fingerprint", "k1_hash", "remote_addr", "bolt11"):
        assert secret not in names


async def test_card_uid_is_hidden_when_the_store_turned_card_tracking_off(
    pg_engine: AsyncEngine, pg_db_url: str
) -> None:
    from ledger.stores import set_card_tracking

    await fill(pg_engine)
    shown = await run_as_reader(
        pg_db_url, f"SELECT card_ntag FROM grafana_cards WHERE card_id = '{CARD}'"
    )
    assert shown == [("04a1b2c3d4e5f6",)]
    async with pg_engine.begin() as conn:
        await set_card_tracking(conn, "store-a", False)
    hidden = await run_as_reader(
        pg_db_url, f"SELECT card_ntag FROM grafana_cards WHERE card_id = '{CARD}'"
    )
    assert hidden == [(None,)]
