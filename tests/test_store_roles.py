"""Each store's own role, made by `flash-payouts dashboards roles`, reads its store's rows only.

Through every Grafana view and every SQL query of every board (macros and variables expanded
as Grafana would, the store picker set to both stores, the card and payout boxes to either
store's), store A's role reads none of store B's rows and all of its own: exactly what the
all-stores role reads of store A. PostgreSQL's row-level security does it, in the database.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import stat
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from exporter_fixtures import add_card, add_store, card_payout, payout, utcnow
from sqlalchemy import insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from dashboards.loader import sql_queries
from dashboards.macros import Frame, expand_sql
from flash_payouts.cli import main
from ledger.payouts import record_event, upsert_payout
from ledger.readers import role_name
from ledger.schema import CardTap
from ledger.status import STATUSES

pytestmark = pytest.mark.postgres

VIEWS = (
    "grafana_payouts",
    "grafana_payout_events",
    "grafana_cards",
    "grafana_card_taps",
    "grafana_card_usage",
    "grafana_payout_daily",
    "grafana_stores",
    "grafana_payout_keys",
)
UNKNOWN_TAP = "refused: no store knows this card"


class Stores:
    """Two stores with ids of their own (roles are shared by every database of the server)."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.a, self.b = f"rls-a-{tag}", f"rls-b-{tag}"
        self.card = {self.a: f"ca{tag}", self.b: f"cb{tag}"}
        self.alias = {self.a: "Till A", self.b: "Till B"}
        self.payout = {self.a: f"PA-{tag}", self.b: f"PB-{tag}"}

    def markers_of_b(self) -> list[str]:
        return [self.b, self.card[self.b], self.alias[self.b], self.payout[self.b], "777777"]


async def fill(engine: AsyncEngine, s: Stores) -> None:
    now = utcnow()
    for store in (s.a, s.b):
        await add_store(engine, store)
        async with engine.begin() as conn:
            await add_card(conn, s.card[store], store, alias=s.alias[store])
        sats = 2_100 if store == s.a else 777_777
        for n in range(3):
            await card_payout(
                engine,
                f"{s.payout[store]}{'' if n == 0 else n}",
                store,
                s.card[store],
                sats + n,
                now - timedelta(hours=3 + n),
            )
        async with engine.begin() as conn:
            await upsert_payout(
                conn,
                payout(f"{s.payout[store]}-f", store, "Cancelled", sats, now - timedelta(days=2)),
                source="webhook",
            )
            await record_event(
                conn,
                store_id=store,
                payout_id=s.payout[store],
                source="webhook",
                event_type="PayoutUpdated",
                delivery_id=f"d-{store}",
            )
            for outcome in ("accepted", "replay"):
                await conn.execute(
                    insert(CardTap.__table__).values(
                        store_id=store,
                        card_id=s.card[store],
                        outcome=outcome,
                        reason=None if outcome == "accepted" else f"refused: {outcome}",
                        counter=7,
                        amount_msat=sats * 1000 if outcome == "accepted" else None,
                        payout_id=s.payout[store] if outcome == "accepted" else None,
                        k1_hash=uuid.uuid4().hex + uuid.uuid4().hex,
                        created_at=now - timedelta(hours=3),
                        updated_at=now - timedelta(hours=3),
                    )
                )
    async with engine.begin() as conn:
        await conn.execute(
            insert(CardTap.__table__).values(
                outcome="unknown_card",
                reason=UNKNOWN_TAP,
                k1_hash=uuid.uuid4().hex + uuid.uuid4().hex,
                created_at=now - timedelta(hours=1),
                updated_at=now - timedelta(hours=1),
            )
        )


def conninfo(db_url: str, user: str, password: str) -> str:
    url = make_url(db_url)
    return psycopg.conninfo.make_conninfo(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        dbname=url.database,
        user=user,
        password=password,
    )


def rows(info: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(info) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]


@pytest.fixture
async def world(pg_engine: AsyncEngine, pg_db_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Stores()
    await fill(pg_engine, s)
    folder = tmp_path / "passwords"
    assert (
        await asyncio.to_thread(
            main,
            ["dashboards", "roles", "--password-dir", str(folder), "--database-url", pg_db_url],
        )
        == 0
    )
    try:
        yield s, folder
    finally:
        admin = conninfo(pg_db_url, "postgres", "")
        with psycopg.connect(admin, autocommit=True) as conn:
            for store in (s.a, s.b):
                conn.execute(f'DROP OWNED BY "{role_name(store)}"')
                conn.execute(f'DROP ROLE IF EXISTS "{role_name(store)}"')


def reader_of(db_url: str, folder: Path, store: str) -> str:
    role = role_name(store)
    return conninfo(db_url, role, (folder / role).read_text())


async def test_a_store_role_reads_its_own_rows_of_every_view_and_none_of_another(
    world, pg_db_url: str
) -> None:
    s, folder = world
    as_a = reader_of(pg_db_url, folder, s.a)
    admin = conninfo(pg_db_url, "postgres", "")
    for view in VIEWS:
        mine = rows(as_a, f"SELECT * FROM {view}")
        everything = rows(admin, f"SELECT * FROM {view}")
        column = [
            c
            for (c,) in rows(
                admin,
                "SELECT column_name FROM information_schema.columns "
                f"WHERE table_name = '{view}' ORDER BY ordinal_position",
            )
        ].index("store_id")
        assert mine, view
        assert sorted(mine, key=repr) == sorted(
            (r for r in everything if r[column] == s.a), key=repr
        ), view
        assert any(r[column] == s.b for r in everything), view  # B's rows exist


async def test_a_store_role_reads_through_every_board_query_only_its_store(
    world, pg_db_url: str
) -> None:
    s, folder = world
    as_a = reader_of(pg_db_url, folder, s.a)
    all_stores = conninfo(pg_db_url, "flash_grafana", "flash_grafana")

    def frame(stores: list[str], owner: str) -> Frame:
        return Frame.last(
            timedelta(days=7),
            variables={
                "store": stores,
                "status": list(STATUSES),
                "card": s.card[owner],
                "search": "",
                "payout": s.payout[owner],
            },
            interval="1h",
        )

    queries = sql_queries()
    assert len(queries) >= 24
    for uid, title, raw in queries:
        where = f"{uid}: {title}"
        # Asking for B's payout and card, and for both stores: none of B's rows comes back.
        leaked = rows(as_a, expand_sql(raw, frame([s.a, s.b], s.b)))
        for marker in s.markers_of_b():
            assert marker not in repr(leaked), (where, marker, leaked)
        # Asking for A's: what the all-stores role reads of store A alone.
        mine = rows(as_a, expand_sql(raw, frame([s.a, s.b], s.a)))
        stores = [s.a] if "$store" in raw else [s.a, s.b]
        expected = [
            r
            for r in rows(all_stores, expand_sql(raw, frame(stores, s.a)))
            if not any(m in repr(r) for m in [*s.markers_of_b(), UNKNOWN_TAP])
        ]
        assert sorted(mine, key=repr) == sorted(expected, key=repr), where


async def test_roles_keep_their_password_in_a_private_file_and_only_a_verifier_in_postgres(
    world, pg_db_url: str
) -> None:
    s, folder = world
    admin = conninfo(pg_db_url, "postgres", "")
    for store in (s.a, s.b):
        path = folder / role_name(store)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        password = path.read_text()
        [(verifier, read_only)] = rows(
            admin,
            "SELECT rolpassword, (SELECT setconfig FROM pg_db_role_setting "
            "WHERE setrole = a.oid) FROM pg_authid a "
            f"WHERE rolname = '{role_name(store)}'",
        )
        assert "default_transaction_read_only=on" in read_only
        # SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>: the file's password
        # derives the stored key, so the password Grafana reads is the role's.
        m = verifier.split("$")
        iterations, salt = m[1].split(":")
        stored = m[2].split(":")[0]
        salted = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        assert base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored
    # Running it again keeps the passwords (the files are the source) and the roles.
    before = {p.name: p.read_text() for p in folder.iterdir()}
    assert (
        await asyncio.to_thread(
            main,
            ["dashboards", "roles", "--password-dir", str(folder), "--database-url", pg_db_url],
        )
        == 0
    )
    assert {p.name: p.read_text() for p in folder.iterdir()} == before


async def test_a_store_role_cannot_write_or_read_secrets(world, pg_db_url: str) -> None:
    s, folder = world
    as_a = reader_of(pg_db_url, folder, s.a)
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        rows(as_a, "CREATE TEMP TABLE t (x int)")
    for table, column in (("boltcards", "keys_sealed"), ("stores", "webhook_secret_sealed")):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            rows(as_a, f"SELECT {column} FROM {table}")
    # The mapping of roles to stores shows the role its own line only.
    assert rows(as_a, "SELECT store_id FROM store_readers") == [(s.a,)]


async def test_org_per_store_provisions_each_store_with_its_own_role(
    world, pg_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s, _ = world
    out = tmp_path / "out"
    args = ["dashboards", "generate", "--out", str(out), "--org-per-store"]
    assert await asyncio.to_thread(main, [*args, "--database-url", pg_db_url]) == 0
    printed = capsys.readouterr().out
    sources = yaml.safe_load((out / "grafana/datasources/stores.yaml").read_text())["datasources"]
    providers = yaml.safe_load((out / "grafana/dashboards/stores.yaml").read_text())["providers"]
    orgs = yaml.safe_load((out / "grafana/organisations.yaml").read_text())["organisations"]
    assert [o["store"] for o in orgs] == [s.a, s.b] and [o["orgId"] for o in orgs] == [2, 3]
    for org in orgs:
        assert f"{org['orgId']}\t{org['name']}" in printed
        ledger = [d for d in sources if d["orgId"] == org["orgId"] and d["uid"] == "flash-postgres"]
        assert len(ledger) == 1 and ledger[0]["user"] == role_name(org["store"])
        assert ledger[0]["secureJsonData"]["password"] == (
            f"$__file{{/etc/grafana/flash-stores/{role_name(org['store'])}}}"
        )
        assert [p["orgId"] for p in providers].count(org["orgId"]) == 1
    # The main organisation keeps the all-stores role.
    main_sources = yaml.safe_load((out / "grafana/datasources/flash.yaml").read_text())
    assert {d["orgId"] for d in main_sources["datasources"]} == {1}


def test_roles_need_postgresql_and_say_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ledger import migrate

    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    code = main(["dashboards", "roles", "--password-dir", str(tmp_path), "--database-url", url])
    err = capsys.readouterr().err
    assert code == 1 and "need the ledger on PostgreSQL" in err and len(err.splitlines()) == 1
