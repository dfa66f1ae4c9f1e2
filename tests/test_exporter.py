"""The exporter's families against ledger contents written here, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from exporter_fixtures import (
    DAY,
    HOUR,
    add_card,
    add_store,
    card_payout,
    payout,
    refused_tap,
    scrape,
    utcnow,
)
from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.app import ExporterConfig
from exporter.catalogue import CATALOGUE, TAP_OUTCOMES, WEBHOOK_EVENTS, metrics_markdown
from ledger.payouts import record_event, upsert_payout
from ledger.schema import Boltcard, CardTap, SyncState
from ledger.status import STATUSES

ROOT = Path(__file__).resolve().parent.parent


def series_count(registry) -> int:
    return sum(len(m.samples) for m in registry.collect())


async def test_payout_gauges_and_counters_follow_the_ledger(engine: AsyncEngine) -> None:
    await add_store(engine, "store-a")
    t0 = utcnow() - HOUR
    async with engine.begin() as conn:
        await upsert_payout(
            conn, payout("P1", "store-a", "AwaitingApproval", 1_000, t0), source="webhook"
        )
        await upsert_payout(
            conn, payout("P2", "store-a", "AwaitingPayment", 2_000, t0), source="webhook"
        )
        await upsert_payout(
            conn, payout("P3", "store-a", "AwaitingPayment", 30_000, t0), source="webhook"
        )
        # P3 completes 40 s after creation: it lands in the 60 s bucket, not the 30 s one.
        await upsert_payout(
            conn,
            payout("P3", "store-a", "Completed", 30_000, t0, revision=1),
            source="webhook",
            now=t0 + timedelta(seconds=40),
        )
        await upsert_payout(
            conn,
            payout(
                "P4",
                "store-a",
                "Cancelled",
                500,
                t0,
                original_currency="USD",
                original_amount=Decimal("0.35"),
            ),
            source="reconcile",
        )

    reg = await scrape(engine)
    s = {"store": "store-a"}
    assert reg.get_sample_value("flash_up") == 1
    assert reg.get_sample_value("flash_payouts", s | {"status": "Pending"}) == 1
    assert reg.get_sample_value("flash_payouts", s | {"status": "Processing"}) == 1
    assert reg.get_sample_value("flash_payouts", s | {"status": "Completed"}) == 1
    assert reg.get_sample_value("flash_payouts", s | {"status": "Failed"}) == 1
    assert reg.get_sample_value("flash_payouts_value_sats", s | {"status": "Pending"}) == 1_000
    assert reg.get_sample_value("flash_payouts_value_sats", s | {"status": "Processing"}) == 2_000
    assert reg.get_sample_value("flash_payouts_value_sats", s | {"status": "Completed"}) == 30_000
    assert (
        reg.get_sample_value("flash_payouts_amount", s | {"status": "Failed", "currency": "USD"})
        == 0.35
    )
    assert (
        reg.get_sample_value("flash_payouts_amount", s | {"status": "Completed", "currency": "BTC"})
        == 0.0003
    )
    assert reg.get_sample_value("flash_payouts_created_total", s) == 4
    assert reg.get_sample_value("flash_payouts_completed_total", s) == 1
    assert reg.get_sample_value("flash_payouts_failed_total", s) == 1
    assert reg.get_sample_value("flash_payouts_created_value_sats_total", s) == 33_500
    assert reg.get_sample_value("flash_payouts_completed_value_sats_total", s) == 30_000
    assert (
        reg.get_sample_value("flash_payouts_created_amount_total", s | {"currency": "USD"}) == 0.35
    )
    assert (
        reg.get_sample_value("flash_payouts_created_amount_total", s | {"currency": "BTC"})
        == 0.00033
    )

    def bucket(le: str) -> float | None:
        return reg.get_sample_value("flash_payout_completion_seconds_bucket", s | {"le": le})

    assert bucket("30.0") == 0
    assert bucket("60.0") == 1
    assert bucket("86400.0") == 1
    assert bucket("+Inf") == 1
    assert reg.get_sample_value("flash_payout_completion_seconds_count", s) == 1
    assert reg.get_sample_value("flash_payout_completion_seconds_sum", s) == 40


async def test_known_statuses_outcomes_and_events_are_exported_as_zero_before_they_happen(
    engine: AsyncEngine,
) -> None:
    await add_store(engine, "quiet")
    reg = await scrape(engine)
    s = {"store": "quiet"}
    for status in STATUSES:
        assert reg.get_sample_value("flash_payouts", s | {"status": status}) == 0
        assert reg.get_sample_value("flash_payouts_value_sats", s | {"status": status}) == 0
    for outcome in TAP_OUTCOMES:
        assert reg.get_sample_value("flash_taps_total", s | {"outcome": outcome}) == 0
    for event in WEBHOOK_EVENTS:
        assert reg.get_sample_value("flash_webhook_events_total", s | {"event": event}) == 0
    for window in ("1h", "1d", "30d"):
        assert reg.get_sample_value("flash_active_cards", s | {"window": window}) == 0
    assert reg.get_sample_value("flash_payouts_created_total", s) == 0
    assert reg.get_sample_value("flash_payout_completion_seconds_bucket", s | {"le": "+Inf"}) == 0
    assert reg.get_sample_value("flash_reconcile_last_success_timestamp_seconds", s) == 0
    assert reg.get_sample_value("flash_newest_event_age_seconds", s) is None
    assert (
        reg.get_sample_value(
            "flash_store_info", s | {"name": "Store quiet", "card_tracking": "true"}
        )
        == 1
    )


async def test_taps_are_counted_by_store_and_outcome_including_new_outcomes(
    engine: AsyncEngine,
) -> None:
    await add_store(engine, "store-a")
    for _ in range(3):
        await refused_tap(engine, "store-a", "replay")
    await refused_tap(engine, "store-a", "bad_mac")
    await refused_tap(engine, None, "unknown_card")
    await refused_tap(engine, "store-a", "tamper_suspected")

    reg = await scrape(engine)
    s = {"store": "store-a"}
    assert reg.get_sample_value("flash_taps_total", s | {"outcome": "replay"}) == 3
    assert reg.get_sample_value("flash_taps_total", s | {"outcome": "bad_mac"}) == 1
    assert reg.get_sample_value("flash_taps_total", s | {"outcome": "accepted"}) == 0
    assert reg.get_sample_value("flash_taps_total", s | {"outcome": "tamper_suspected"}) == 1
    # A tap from a card nobody knows has no store: it is exported with an empty store label.
    assert reg.get_sample_value("flash_taps_total", {"store": "", "outcome": "unknown_card"}) == 1


async def test_webhook_events_are_counted_once_per_delivery(engine: AsyncEngine) -> None:
    await add_store(engine, "store-a")
    async with engine.begin() as conn:
        for delivery in ("d1", "d1", "d2"):
            await record_event(
                conn,
                store_id="store-a",
                payout_id="P1",
                source="webhook",
                event_type="PayoutCreated",
                delivery_id=delivery,
            )
        await record_event(
            conn,
            store_id="store-a",
            payout_id="P1",
            source="webhook",
            event_type="PayoutApproved",
            delivery_id="d3",
        )
    reg = await scrape(engine)
    s = {"store": "store-a"}
    assert reg.get_sample_value("flash_webhook_events_total", s | {"event": "PayoutCreated"}) == 2
    assert reg.get_sample_value("flash_webhook_events_total", s | {"event": "PayoutApproved"}) == 1
    assert reg.get_sample_value("flash_webhook_events_total", s | {"event": "PayoutUpdated"}) == 0


async def test_active_cards_count_cards_paid_within_each_window(engine: AsyncEngine) -> None:
    await add_store(engine, "store-a")
    now = utcnow()
    ages = {"c-recent": 10 * 60, "c-today": 5 * 3600, "c-month": 10 * 86400, "c-old": 90 * 86400}
    async with engine.begin() as conn:
        for card_id in [*ages, "c-never"]:
            await add_card(conn, card_id, "store-a")
    for i, (card_id, age) in enumerate(ages.items()):
        await card_payout(engine, f"P{i}", "store-a", card_id, 100, now - timedelta(seconds=age))

    reg = await scrape(engine)
    s = {"store": "store-a"}
    assert reg.get_sample_value("flash_active_cards", s | {"window": "1h"}) == 1
    assert reg.get_sample_value("flash_active_cards", s | {"window": "1d"}) == 2
    assert reg.get_sample_value("flash_active_cards", s | {"window": "30d"}) == 3


async def test_top_cards_are_labelled_by_alias_or_id_prefix_never_by_uid(
    engine: AsyncEngine,
) -> None:
    await add_store(engine, "store-a")
    now = utcnow()
    async with engine.begin() as conn:
        await add_card(conn, "c0ffee0123456789abcdef", "store-a", uid="04aabbccddeeff")
        await add_card(conn, "beef00112233", "store-a", uid="04112233445566", alias="Till 1")
    await card_payout(engine, "P1", "store-a", "c0ffee0123456789abcdef", 1_500, now - HOUR)
    await card_payout(engine, "P2", "store-a", "c0ffee0123456789abcdef", 2_500, now - 2 * DAY)
    await card_payout(engine, "P3", "store-a", "beef00112233", 700, now - HOUR)
    await refused_tap(engine, "store-a", "limit", card_id="beef00112233")

    reg = await scrape(engine)
    anon = {"store": "store-a", "card": "c0ffee01"}
    till = {"store": "store-a", "card": "Till 1"}
    assert reg.get_sample_value("flash_card_payouts_total", anon) == 2
    assert reg.get_sample_value("flash_card_value_sats_total", anon) == 4_000
    assert reg.get_sample_value("flash_card_taps_total", anon) == 2
    assert reg.get_sample_value("flash_card_refused_taps_total", anon) == 0
    assert reg.get_sample_value("flash_card_payouts_total", till) == 1
    assert reg.get_sample_value("flash_card_taps_total", till) == 2
    assert reg.get_sample_value("flash_card_refused_taps_total", till) == 1
    last_used = reg.get_sample_value("flash_card_last_used_timestamp_seconds", till)
    assert last_used is not None and abs(last_used - now.timestamp()) < 120

    labels = {
        value
        for metric in reg.collect()
        for sample in metric.samples
        for value in sample.labels.values()
    }
    assert not any("04aabbccddeeff" in v or "04112233445566" in v for v in labels)


async def test_only_the_top_k_cards_get_series_and_the_busiest_win(engine: AsyncEngine) -> None:
    await add_store(engine, "store-a")
    now = utcnow()
    async with engine.begin() as conn:
        for i in range(5):
            await add_card(conn, f"card{i:04d}xxxx", "store-a", alias=f"card {i}")
    # card 0 is the busiest over the last days; card 4 paid last but only once.
    for n in range(4):
        await card_payout(engine, f"A{n}", "store-a", "card0000xxxx", 10, now - DAY - n * HOUR)
    for i in range(1, 5):
        await card_payout(engine, f"B{i}", "store-a", f"card{i:04d}xxxx", 10, now - (5 - i) * HOUR)

    reg = await scrape(engine, ExporterConfig(top_cards=2))
    cards = {
        s.labels["card"] for m in reg.collect() if m.name == "flash_card_payouts" for s in m.samples
    }
    assert cards == {"card 0", "card 4"}

    off = await scrape(engine, ExporterConfig(top_cards=0))
    assert (
        off.get_sample_value("flash_card_payouts_total", {"store": "store-a", "card": "card 0"})
        is None
    )


async def test_stores_that_opted_out_of_card_tracking_export_no_card_series(
    engine: AsyncEngine,
) -> None:
    await add_store(engine, "private", tracking=False)
    async with engine.begin() as conn:
        await add_card(conn, "hidden0001", "private", alias="Secret card")
    await card_payout(engine, "P1", "private", "hidden0001", 100, utcnow() - HOUR / 2)

    reg = await scrape(engine)
    names = {m.name for m in reg.collect() for s in m.samples if s.labels.get("card")}
    assert names == set()
    # The store's aggregates stay: only per-card detail is withheld.
    assert reg.get_sample_value("flash_active_cards", {"store": "private", "window": "1h"}) == 1
    assert reg.get_sample_value("flash_payouts_created_total", {"store": "private"}) == 1


async def test_erasing_a_card_and_pruning_taps_never_lowers_a_counter(
    engine: AsyncEngine,
) -> None:
    await add_store(engine, "store-a")
    async with engine.begin() as conn:
        await add_card(conn, "erasable01", "store-a", alias="Alice's card")
        await conn.execute(
            CardTap.__table__.insert().values(
                store_id="store-a",
                card_id="erasable01",
                outcome="accepted",
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        )
    await card_payout(engine, "P1", "store-a", "erasable01", 1_000, utcnow() - HOUR)
    await refused_tap(engine, "store-a", "replay", card_id="erasable01")
    before = await scrape(engine)

    async with engine.begin() as conn:
        await conn.execute(
            update(Boltcard.__table__)
            .where(Boltcard.__table__.c.id == "erasable01")
            .values(uid=None, uid_hash=None, alias=None, erased_at=utcnow())
        )
        await conn.execute(delete(CardTap.__table__))
    after = await scrape(engine)

    for metric in CATALOGUE:
        if metric.type != "counter" or metric.name.startswith("flash_card_"):
            continue
        for fam in before.collect():
            for sample in fam.samples:
                if sample.name != metric.name:
                    continue
                assert after.get_sample_value(sample.name, sample.labels) == sample.value, sample
    assert (
        after.get_sample_value("flash_taps_total", {"store": "store-a", "outcome": "replay"}) == 1
    )
    # The erased card loses its own series rather than exposing a pseudonymised one.
    assert (
        after.get_sample_value(
            "flash_card_payouts_total", {"store": "store-a", "card": "Alice's card"}
        )
        is None
    )


async def test_reconcile_time_and_newest_event_age_are_exported(engine: AsyncEngine) -> None:
    await add_store(engine, "store-a")
    now = utcnow()
    async with engine.begin() as conn:
        await conn.execute(
            SyncState.__table__.insert().values(
                store_id="store-a",
                last_success_at=now - timedelta(minutes=5),
                payouts_seen=0,
                payouts_changed=0,
            )
        )
        await record_event(
            conn,
            store_id="store-a",
            payout_id="P1",
            source="webhook",
            event_type="PayoutCreated",
            delivery_id="d1",
            now=now - timedelta(minutes=2),
        )
    reg = await scrape(engine)
    s = {"store": "store-a"}
    reconciled = reg.get_sample_value("flash_reconcile_last_success_timestamp_seconds", s)
    assert reconciled == (now - timedelta(minutes=5)).timestamp()
    age = reg.get_sample_value("flash_newest_event_age_seconds", s)
    assert age is not None and 120 <= age < 180


async def test_series_count_does_not_grow_with_payouts_or_cards(engine: AsyncEngine) -> None:
    await add_store(engine, "store-a")
    now = utcnow()
    async with engine.begin() as conn:
        for i in range(6):
            await add_card(conn, f"grow{i:06d}", "store-a")
    for i in range(6):
        await card_payout(engine, f"G{i}", "store-a", f"grow{i:06d}", 10, now - i * HOUR)
    config = ExporterConfig(top_cards=3)
    small = series_count(await scrape(engine, config))

    async with engine.begin() as conn:
        for i in range(6, 40):
            await add_card(conn, f"grow{i:06d}", "store-a")
    for i in range(6, 40):
        await card_payout(engine, f"G{i}", "store-a", f"grow{i:06d}", 10, now - i * HOUR)
        await card_payout(engine, f"H{i}", "store-a", f"grow{i:06d}", 10, now - i * DAY)
    assert series_count(await scrape(engine, config)) == small


def test_metrics_reference_is_generated_from_the_catalogue() -> None:
    assert (ROOT / "docs" / "metrics.md").read_text() == metrics_markdown()


def test_catalogue_names_follow_the_naming_rules() -> None:
    for metric in CATALOGUE:
        assert metric.name.startswith("flash_"), metric.name
        assert metric.name.endswith("_total") == (metric.type == "counter"), metric.name
        assert "type" not in metric.labels
        if metric.unit:
            assert metric.family.endswith("_" + metric.unit), metric.name
    assert len({m.name for m in CATALOGUE}) == len(CATALOGUE)
