"""Ledger contents and clients for the API tests, written through the ledger's write functions.

Payouts go through ``upsert_payout`` (so the rollups are what production keeps), cards and taps
are inserted as rows and counted with the ledger's rollup functions, as the gateway does. Every
payout written is also returned as a plain record, so tests compute their expectations from it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from conftest import create_postgres_database, drop_postgres_database
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from api.context import ApiConfig
from ledger import migrate
from ledger.db import create_engine
from ledger.payouts import CardLink, PayoutRecord, upsert_payout
from ledger.rollups import bump_card_rollup
from ledger.schema import Boltcard, CardTap
from ledger.stores import upsert_store
from ledger.tokens import create_token

STORE_A, STORE_B = "storeaaaa", "storebbbb"
BASE = datetime(2024, 3, 1, tzinfo=UTC)
STATES = ("AwaitingApproval", "AwaitingPayment", "InProgress", "Completed", "Cancelled")
AMOUNTS = (Decimal("0.5"), Decimal("1"), Decimal("2.25"), Decimal("10"), Decimal("1500"), None)


@dataclass
class Written:
    id: str
    store_id: str
    status: str
    state: str
    amount: Decimal | None
    created_at: datetime
    card_id: str | None


@dataclass
class Seed:
    payouts: list[Written]
    cards: dict[str, str]  # card id -> store id
    tokens: dict[str, str]  # "A-viewer", "A-manager", "B-viewer" -> token text

    def of(self, store_id: str) -> list[Written]:
        return [p for p in self.payouts if p.store_id == store_id]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


async def add_card(
    engine: AsyncEngine, card_id: str, store_id: str, *, uid: str = "04a1b2c3d4e5f6", alias=None
) -> None:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            insert(Boltcard.__table__).values(
                id=card_id,
                store_id=store_id,
                origin="issued",
                uid=uid,
                uid_hash="h" + card_id,
                alias=alias,
                key_version=1,
                last_counter=0,
                enabled=True,
                created_at=now,
                updated_at=now,
            )
        )


async def add_tap(
    engine: AsyncEngine,
    card_id: str,
    store_id: str,
    at: datetime,
    *,
    outcome: str = "accepted",
    remote_addr: str = "203.0.113.7",
    user_agent: str = "WalletOfSatoshi/2.0",
) -> int:
    async with engine.begin() as conn:
        tap_id = (
            await conn.execute(
                insert(CardTap.__table__)
                .values(
                    store_id=store_id,
                    card_id=card_id,
                    uid="04a1b2c3d4e5f6",
                    counter=1,
                    outcome=outcome,
                    remote_addr=remote_addr,
                    user_agent=user_agent,
                    created_at=at,
                    updated_at=at,
                )
                .returning(CardTap.__table__.c.id)
            )
        ).scalar_one()
        await bump_card_rollup(
            conn,
            card_id=card_id,
            store_id=store_id,
            at=at,
            taps=1,
            refused_taps=0 if outcome == "accepted" else 1,
        )
    return tap_id


async def write_payout(
    engine: AsyncEngine,
    pid: str,
    store_id: str,
    state: str,
    amount: Decimal | None,
    created_at: datetime,
    card_id: str | None = None,
) -> Written:
    record = PayoutRecord(
        id=pid,
        store_id=store_id,
        state=state,
        revision=1,
        created_at=created_at,
        pull_payment_id="pp" + store_id,
        original_amount=amount,
        original_currency="SATS" if amount is not None else None,
        payout_amount=amount,
        payout_currency="BTC",
        payout_method_id="BTC-LN",
        destination="lnbc1" + pid,
        amount_sats=int(amount) if amount is not None else None,
        error_message="cancelled by the merchant" if state == "Cancelled" else None,
    )
    async with engine.begin() as conn:
        link = CardLink(card_id, "04a1b2c3d4e5f6") if card_id else None
        result = await upsert_payout(conn, record, source="reconcile", card=link)
    return Written(pid, store_id, result.status, state, amount, created_at, card_id)


async def seed(engine: AsyncEngine, n_a: int = 60, n_b: int = 15) -> Seed:
    """Two stores with payouts over ten days; some share a creation time or an amount, so the
    tie-breaks of every sort are exercised."""
    rng = random.Random(7)
    async with engine.begin() as conn:
        await upsert_store(conn, STORE_A, name="A")
        await upsert_store(conn, STORE_B, name="B")
        tokens = {}
        for store, label in ((STORE_A, "A"), (STORE_B, "B")):
            for role in ("viewer", "manager"):
                _, text = await create_token(conn, store, role, f"{label} {role}")
                tokens[f"{label}-{role}"] = text
    cards = {"carda1": STORE_A, "carda2": STORE_A, "carda3": STORE_A, "cardb1": STORE_B}
    for card_id, store_id in cards.items():
        await add_card(engine, card_id, store_id, alias=f"alias {card_id}")
    written = []
    for store_id, n, card_ids in (
        (STORE_A, n_a, ["carda1", "carda2", "carda3", None]),
        (STORE_B, n_b, ["cardb1", None]),
    ):
        for i in range(n):
            # Every fourth payout shares the previous one's time: ties for the keyset.
            minutes = (i - i % 4 // 3) * 217
            written.append(
                await write_payout(
                    engine,
                    f"{store_id[-1]}{rng.choice('abc')}{i:03d}",
                    store_id,
                    rng.choice(STATES),
                    rng.choice(AMOUNTS),
                    BASE + timedelta(minutes=minutes),
                    rng.choice(card_ids),
                )
            )
    return Seed(written, cards, tokens)


async def api_client(aiohttp_client, engine: AsyncEngine, **config):  # type: ignore[no-untyped-def]
    config.setdefault("rate", 0)
    return await aiohttp_client(create_app(engine, ApiConfig(**config)))


def shared_ledger(
    kind: str, tmp_path_factory, fill: Callable[[AsyncEngine], Awaitable[Seed]]
) -> Iterator[tuple[str, Seed]]:  # type: ignore[no-untyped-def]
    """A migrated ledger filled once by ``fill`` and read by many tests: (its URL, the seed).

    For module-scoped fixtures of tests that only read. The filling runs in a thread of its own
    with its own event loop and engine, so it never touches the loops the tests run on; each test
    then opens its own engine on the URL.
    """
    if kind == "sqlite":
        url, name = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}", None
    else:
        url, name = create_postgres_database()
    try:
        migrate.upgrade(url)

        async def run() -> Seed:
            engine = create_engine(url)
            try:
                return await fill(engine)
            finally:
                await engine.dispose()

        with ThreadPoolExecutor(1) as pool:
            seeded = pool.submit(asyncio.run, run()).result()
        yield url, seeded
    finally:
        if name is not None:
            drop_postgres_database(name)


@asynccontextmanager
async def client_on(aiohttp_client, url: str, **config) -> AsyncIterator:  # type: ignore[no-untyped-def]
    """An API client on its own engine over an existing ledger, disposed afterwards."""
    engine = create_engine(url)
    try:
        yield engine, await api_client(aiohttp_client, engine, **config)
    finally:
        await engine.dispose()


def summary_tables(ws) -> dict[str, list[dict]]:
    """The summary sheet's titled tables, each as rows keyed by its header."""
    tables: dict[str, list[dict]] = {}
    rows = list(ws.iter_rows(values_only=True))
    i = 0
    while i < len(rows):
        first = rows[i][0] if rows[i] else None
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        if isinstance(first, str) and nxt and nxt[0] and nxt[1] and first not in tables:
            header = [h for h in nxt if h is not None]
            body = []
            i += 2
            while i < len(rows) and any(v is not None for v in rows[i]):
                if rows[i][0] != "none":
                    body.append(dict(zip(header, rows[i][: len(header)], strict=True)))
                i += 1
            tables[first] = body
        i += 1
    return tables
