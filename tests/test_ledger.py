"""The ledger: migrations, the revision rule, once-per-delivery events, rollups and card links."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import func, inspect, pool, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import migrate
from ledger.db import create_engine, sync_url
from ledger.payouts import CardLink, PayoutRecord, record_event, upsert_payout
from ledger.schema import (
    Boltcard,
    CardRollup,
    CardTap,
    Counter,
    Payout,
    PayoutEvent,
    PayoutRollup,
    Store,
)
from ledger.schema import metadata as models

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def payout(
    pid: str = "PO1", state: str = "AwaitingApproval", read: float | None = None, **kw
) -> PayoutRecord:
    """BTCPay's view of a payout, read ``read`` seconds after T0 (default: when made).

    Its revision is 0, as BTCPay's is for almost every payout whatever its state."""
    fields = dict(
        id=pid,
        store_id="store-a",
        state=state,
        revision=0,
        created_at=T0,
        pull_payment_id="pp1",
        original_amount=Decimal("0.00021"),
        original_currency="BTC",
        payout_currency="BTC",
        payout_method_id="BTC-LN",
        destination="lnbcrt210u1...",
        payment_hash="ab" * 32,
        amount_sats=21000,
    )
    if read is not None:
        fields["read_at"] = T0 + timedelta(seconds=read)
    fields.update(kw)
    return PayoutRecord(**fields)


def tables_of(url: str) -> set[str]:
    engine = create_sync_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_go_up_down_and_up_again(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    assert {"payouts", "payout_events", "boltcards", "card_taps", "stores"} <= tables_of(
        empty_db_url
    )
    assert migrate.current_revision(empty_db_url) is not None
    migrate.downgrade(empty_db_url, "base")
    assert tables_of(empty_db_url) <= {"alembic_version"}
    migrate.upgrade(empty_db_url)
    assert set(models.tables) <= tables_of(empty_db_url)


def test_migrated_schema_equals_the_models(db_url: str) -> None:
    engine = create_sync_engine(sync_url(db_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, models)
    finally:
        engine.dispose()
    assert diff == []


async def count(engine: AsyncEngine, stmt) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(stmt)).scalar_one()


async def rollup(engine: AsyncEngine) -> dict[str, tuple[int, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(PayoutRollup.status, PayoutRollup.count, PayoutRollup.amount_sats)
        )
        return {status: (c, sats) for status, c, sats in rows if c}


async def counters(engine: AsyncEngine) -> dict[tuple[str, str], Decimal]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(Counter.name, Counter.label, Counter.value))
        return {(n, lbl): v for n, lbl, v in rows}


async def test_payout_moves_through_states_and_rollups_follow(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        res = await upsert_payout(conn, payout(), source="webhook")
    assert res.created and res.status == "Pending"
    assert await rollup(engine) == {"Pending": (1, 21000)}

    async with engine.begin() as conn:
        res = await upsert_payout(conn, payout(state="AwaitingPayment"), source="webhook")
    assert res.changed and res.previous_status == "Pending" and res.status == "Processing"
    assert await rollup(engine) == {"Processing": (1, 21000)}

    later = T0 + timedelta(seconds=40)
    async with engine.begin() as conn:
        await upsert_payout(conn, payout(state="Completed"), source="reconcile", now=later)
    assert await rollup(engine) == {"Completed": (1, 21000)}
    c = await counters(engine)
    assert c[("payouts_created", "")] == 1
    assert c[("payouts_completed", "")] == 1
    assert c[("sats_completed", "")] == 21000
    assert c.get(("completion_seconds_bucket", "30"), 0) == 0
    assert c[("completion_seconds_bucket", "60")] == 1
    assert c[("completion_seconds_count", "")] == 1
    async with engine.connect() as conn:
        row = (await conn.execute(select(Payout).where(Payout.id == "PO1"))).one()
        events = (await conn.execute(select(func.count()).select_from(PayoutEvent))).scalar_one()
    assert row.state == "Completed" and row.status == "Completed" and row.revision == 0
    assert row.completed_at == later
    assert events == 3


async def held(engine: AsyncEngine) -> tuple[str, datetime]:
    async with engine.connect() as conn:
        return tuple((await conn.execute(select(Payout.state, Payout.btcpay_read_at))).one())


async def test_a_stale_in_progress_view_delivered_after_completed_leaves_completed(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await upsert_payout(conn, payout(state="AwaitingPayment", read=1), source="gateway")
        await upsert_payout(conn, payout(state="Completed", read=5), source="webhook")
    async with engine.begin() as conn:
        # A slow fetch, asked for before the payout completed, answers last.
        stale = await upsert_payout(conn, payout(state="InProgress", read=3), source="webhook")

    assert not stale.changed and stale.status == "Completed"
    assert await held(engine) == ("Completed", T0 + timedelta(seconds=5))
    assert await rollup(engine) == {"Completed": (1, 21000)}
    assert (await counters(engine))[("payouts_completed", "")] == 1


async def test_completed_is_final_whatever_the_read_times(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await upsert_payout(conn, payout(state="InProgress", read=9), source="reconcile")
        # Completed read "earlier" (another replica's clock): BTCPay never leaves Completed.
        done = await upsert_payout(conn, payout(state="Completed", read=8), source="webhook")
        after = await upsert_payout(conn, payout(state="AwaitingPayment", read=20), source="x")

    assert done.changed and not after.changed
    assert (await held(engine))[0] == "Completed"


async def test_no_view_read_earlier_overwrites_cancelled_but_a_later_one_may(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await upsert_payout(conn, payout(state="Cancelled", read=10), source="webhook")
        stale = await upsert_payout(conn, payout(state="AwaitingPayment", read=4), source="x")
    assert not stale.changed and (await held(engine))[0] == "Cancelled"

    # BTCPay lets a merchant mark a Cancelled payout AwaitingApproval again.
    async with engine.begin() as conn:
        reopened = await upsert_payout(conn, payout(state="AwaitingApproval", read=12), source="x")
    assert reopened.changed and reopened.previous_status == "Failed"
    assert await rollup(engine) == {"Pending": (1, 21000)}


async def test_between_states_on_the_way_the_view_read_later_wins_whichever_arrives_last(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await upsert_payout(conn, payout(state="InProgress", read=2), source="webhook")
        # BTCPay's own step back: the payment failed and will be tried again.
        retried = await upsert_payout(conn, payout(state="AwaitingPayment", read=6), source="x")
        # The reconciler's page, read before both, is written after them.
        page = await upsert_payout(conn, payout(state="AwaitingApproval", read=1), source="x")

    assert retried.changed and not page.changed
    assert await held(engine) == ("AwaitingPayment", T0 + timedelta(seconds=6))


async def test_a_later_view_saying_the_same_moves_only_the_read_time(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await upsert_payout(conn, payout(state="AwaitingPayment", read=1), source="webhook")
        same = await upsert_payout(conn, payout(state="AwaitingPayment", read=7), source="x")
        # Read between the two: older than what the ledger now knows BTCPay said at 7 s.
        between = await upsert_payout(conn, payout(state="InProgress", read=4), source="x")

    assert not same.changed and not between.changed
    assert await held(engine) == ("AwaitingPayment", T0 + timedelta(seconds=7))
    assert await count(engine, select(func.count()).select_from(PayoutEvent)) == 1


async def test_same_revision_and_same_data_is_not_a_change(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await upsert_payout(conn, payout(), source="webhook")
    async with engine.begin() as conn:
        res = await upsert_payout(conn, payout(), source="reconcile")
    assert not res.changed
    assert await count(engine, select(func.count()).select_from(PayoutEvent)) == 1


async def test_a_delivery_is_recorded_once(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        first = await record_event(
            conn,
            store_id="s",
            payout_id="p",
            source="webhook",
            event_type="PayoutCreated",
            delivery_id="d1",
        )
        again = await record_event(
            conn,
            store_id="s",
            payout_id="p",
            source="webhook",
            event_type="PayoutCreated",
            delivery_id="d1",
        )
    assert first is not None and again is None
    assert (await counters(engine))[("webhook_events", "PayoutCreated")] == 1


async def test_payout_links_to_its_tap_whichever_arrives_first(engine: AsyncEngine) -> None:
    from ledger.payouts import link_tap_to_payout

    now = T0
    async with engine.begin() as conn:
        await conn.execute(
            Store.__table__.insert().values(id="store-a", name="A", created_at=now, updated_at=now)
        )
        await conn.execute(
            Boltcard.__table__.insert().values(
                id="card1",
                store_id="store-a",
                origin="issued",
                uid="04996c6a926980",
                key_version=1,
                last_counter=3,
                enabled=True,
                created_at=now,
                updated_at=now,
            )
        )
        tap_a = (
            await conn.execute(
                CardTap.__table__.insert()
                .values(
                    store_id="store-a",
                    card_id="card1",
                    uid="04996c6a926980",
                    outcome="accepted",
                    payment_hash="aa" * 32,
                    created_at=now,
                    updated_at=now,
                )
                .returning(CardTap.id)
            )
        ).scalar_one()
    # Tap first, then the payout arrives by webhook: the payout links itself to the tap.
    async with engine.begin() as conn:
        res = await upsert_payout(conn, payout("POA", payment_hash="aa" * 32), source="webhook")
    assert res.linked

    # Payout first, then the tap records the same payment hash: the tap links the payout.
    async with engine.begin() as conn:
        await upsert_payout(conn, payout("POB", payment_hash="bb" * 32), source="webhook")
        tap_b = (
            await conn.execute(
                CardTap.__table__.insert()
                .values(
                    store_id="store-a",
                    card_id="card1",
                    uid="04996c6a926980",
                    outcome="accepted",
                    payment_hash="bb" * 32,
                    created_at=now,
                    updated_at=now,
                )
                .returning(CardTap.id)
            )
        ).scalar_one()
        assert await link_tap_to_payout(conn, tap_b, "bb" * 32)
        # A second attempt, from either side, links nothing more.
        assert not await link_tap_to_payout(conn, tap_b, "bb" * 32)

    async with engine.connect() as conn:
        links = dict((await conn.execute(select(Payout.id, Payout.card_id))).all())
        taps = dict((await conn.execute(select(CardTap.id, CardTap.payout_id))).all())
        usage = (await conn.execute(select(CardRollup.payouts, CardRollup.amount_sats))).one()
    assert links == {"POA": "card1", "POB": "card1"}
    assert taps == {tap_a: "POA", tap_b: "POB"}
    assert tuple(usage) == (2, 42000)


async def test_explicit_card_link_is_made_once(engine: AsyncEngine) -> None:
    link = CardLink("card9", "04aabbccddeeff")
    async with engine.begin() as conn:
        first = await upsert_payout(conn, payout(), source="gateway", card=link)
    async with engine.begin() as conn:
        again = await upsert_payout(
            conn, payout(state="AwaitingPayment"), source="webhook", card=link
        )
    assert first.linked and not again.linked
    async with engine.connect() as conn:
        assert (await conn.execute(select(CardRollup.payouts))).scalar_one() == 1


@pytest.mark.postgres
async def test_concurrent_writers_converge_on_the_view_read_last(pg_engine: AsyncEngine) -> None:
    # A payment failing and tried again and again, with no revision moving: whichever writer
    # commits last, the view read last stays.
    states = ["AwaitingPayment", "InProgress"]
    records = [payout(state=states[r % 2], read=r) for r in range(12)] * 3

    async def write(rec: PayoutRecord) -> None:
        async with pg_engine.begin() as conn:
            await upsert_payout(conn, rec, source="webhook")

    await asyncio.gather(*(write(r) for r in reversed(records)))
    assert await held(pg_engine) == ("InProgress", T0 + timedelta(seconds=11))
    # Whatever order the writers ran in, the rollups hold exactly one payout.
    assert await rollup(pg_engine) == {"Processing": (1, 21000)}
    assert (await counters(pg_engine))[("payouts_created", "")] == 1


@pytest.mark.postgres
async def test_concurrent_duplicate_deliveries_are_recorded_once(pg_engine: AsyncEngine) -> None:
    async def deliver(delivery: str) -> int | None:
        async with pg_engine.begin() as conn:
            return await record_event(
                conn,
                store_id="s",
                payout_id="p",
                source="webhook",
                event_type="PayoutUpdated",
                delivery_id=delivery,
            )

    results = await asyncio.gather(*(deliver(f"d{i % 5}") for i in range(50)))
    assert sum(r is not None for r in results) == 5
    assert await count(pg_engine, select(func.count()).select_from(PayoutEvent)) == 5
    assert (await counters(pg_engine))[("webhook_events", "PayoutUpdated")] == 5


async def test_sqlite_default_url_and_engine_work_on_a_file(tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    migrate.upgrade(url)
    eng = create_engine(url)
    try:
        async with eng.begin() as conn:
            await upsert_payout(conn, payout(), source="webhook")
        assert await count(eng, select(func.count()).select_from(Payout)) == 1
    finally:
        await eng.dispose()


async def test_store_upsert_keeps_fields_not_given_and_opt_out_sticks(engine: AsyncEngine) -> None:
    from ledger.stores import get_store, list_stores, set_card_tracking, upsert_store

    async with engine.begin() as conn:
        await upsert_store(conn, "S1", name="Shop", webhook_secret_sealed="v1:sealed")
        await upsert_store(conn, "S1", btcpay_url="http://btcpay")
        assert await set_card_tracking(conn, "S1", False)
        assert not await set_card_tracking(conn, "missing", False)
    async with engine.connect() as conn:
        store = await get_store(conn, "S1")
        assert [s.id for s in await list_stores(conn)] == ["S1"]
    assert store is not None
    assert (store.name, store.btcpay_url, store.webhook_secret_sealed) == (
        "Shop",
        "http://btcpay",
        "v1:sealed",
    )
    assert store.card_tracking is False
    assert "sealed" not in repr(store)
