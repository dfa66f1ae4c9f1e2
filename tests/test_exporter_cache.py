"""The slow-moving readings reused between scrapes: bounded age, fresh where it matters.

Active cards over a day or 30 days and the choice of the top cards are reused for up to
``slow_max_age`` seconds and then read again in the background; the 1-hour window, the top
cards' own figures, opting out and erasure are seen by the very next scrape.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from aiohttp.test_utils import TestClient, TestServer
from exporter_fixtures import HOUR, add_card, add_store, card_payout, utcnow
from prometheus_client import CollectorRegistry
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.app import (
    STATE_KEY,
    ExporterConfig,
    ExporterState,
    build_registry,
    create_app,
    read_ledger,
)
from exporter.slow import STALE_LIMIT
from ledger.schema import Boltcard
from ledger.stores import set_card_tracking

A = {"store": "store-a"}


async def scrape(state: ExporterState) -> CollectorRegistry:
    """One scrape through the exporter's own state, as the listener makes it."""
    snapshot = await read_ledger(state.engine, state.config, 10, state.slow)
    return build_registry(snapshot, state, duration=0.0)


def active(reg: CollectorRegistry, window: str) -> float | None:
    return reg.get_sample_value("flash_active_cards", A | {"window": window})


def age_by(state: ExporterState, seconds: float) -> None:
    """Make the kept reading ``seconds`` older, as if read that long ago."""
    reading = state.slow.reading
    assert reading is not None
    state.slow.reading = dataclasses.replace(reading, at=reading.at - timedelta(seconds=seconds))


async def cards_paid(engine: AsyncEngine, *card_ids: str, ago: timedelta = HOUR / 4) -> None:
    async with engine.begin() as conn:
        for card_id in card_ids:
            await add_card(conn, card_id, "store-a", alias=card_id)
    for card_id in card_ids:
        await card_payout(engine, f"P-{card_id}", "store-a", card_id, 100, utcnow() - ago)


async def test_wide_windows_are_reused_within_their_age_while_the_hour_is_fresh(
    engine: AsyncEngine,
) -> None:
    await add_store(engine, "store-a")
    state = ExporterState(engine, ExporterConfig(slow_max_age=60))
    await cards_paid(engine, "card-one")
    first = await scrape(state)
    assert active(first, "1h") == active(first, "30d") == 1
    assert first.get_sample_value("flash_exporter_cached_readings_age_seconds") == 0

    await cards_paid(engine, "card-two")
    second = await scrape(state)
    assert active(second, "1h") == 2  # read by every scrape
    assert active(second, "1d") == active(second, "30d") == 1  # the kept reading
    assert second.get_sample_value("flash_exporter_cached_readings_age_seconds") >= 0
    assert state.slow.refreshing is None  # not old yet: nothing read in the background


async def test_an_old_reading_is_exported_once_more_and_read_again_in_the_background(
    engine: AsyncEngine,
) -> None:
    await add_store(engine, "store-a")
    state = ExporterState(engine, ExporterConfig(slow_max_age=60))
    await cards_paid(engine, "card-one")
    await scrape(state)
    await cards_paid(engine, "card-two")
    age_by(state, 90)

    stale = await scrape(state)
    assert active(stale, "30d") == 1
    assert stale.get_sample_value("flash_exporter_cached_readings_age_seconds") >= 90
    assert state.slow.refreshing is not None
    await state.slow.refreshing

    fresh = await scrape(state)
    assert active(fresh, "1d") == active(fresh, "30d") == 2
    assert fresh.get_sample_value("flash_exporter_cached_readings_age_seconds") < 60


async def test_a_reading_past_the_stale_limit_is_never_exported(engine: AsyncEngine) -> None:
    await add_store(engine, "store-a")
    state = ExporterState(engine, ExporterConfig(slow_max_age=60))
    await cards_paid(engine, "card-one")
    await scrape(state)
    await cards_paid(engine, "card-two")
    age_by(state, 60 * STALE_LIMIT + 1)

    reg = await scrape(state)
    assert active(reg, "30d") == 2
    assert reg.get_sample_value("flash_exporter_cached_readings_age_seconds") == 0


async def test_without_reuse_every_scrape_reads_every_window(engine: AsyncEngine) -> None:
    await add_store(engine, "store-a")
    state = ExporterState(engine, ExporterConfig(slow_max_age=0))
    await cards_paid(engine, "card-one")
    await scrape(state)
    await cards_paid(engine, "card-two", ago=timedelta(days=3))
    reg = await scrape(state)
    assert active(reg, "1d") == 1
    assert active(reg, "30d") == 2
    assert state.slow.reading is None


async def test_the_top_cards_figures_are_fresh_though_their_choice_is_kept(
    engine: AsyncEngine,
) -> None:
    await add_store(engine, "store-a")
    state = ExporterState(engine, ExporterConfig(slow_max_age=60))
    await cards_paid(engine, "card-one")
    await scrape(state)
    await card_payout(engine, "P-again", "store-a", "card-one", 250, utcnow())
    reg = await scrape(state)
    card = A | {"card": "card-one"}
    assert reg.get_sample_value("flash_card_payouts_total", card) == 2
    assert reg.get_sample_value("flash_card_value_sats_total", card) == 350


async def test_opting_out_or_erasing_removes_card_series_at_the_next_scrape(
    engine: AsyncEngine,
) -> None:
    await add_store(engine, "store-a")
    state = ExporterState(engine, ExporterConfig(slow_max_age=60))
    await cards_paid(engine, "card-one", "card-two")
    before = await scrape(state)
    assert before.get_sample_value("flash_card_payouts_total", A | {"card": "card-one"}) == 1
    assert before.get_sample_value("flash_card_payouts_total", A | {"card": "card-two"}) == 1

    async with engine.begin() as conn:
        await conn.execute(
            update(Boltcard.__table__)
            .where(Boltcard.__table__.c.id == "card-one")
            .values(uid=None, alias=None, erased_at=utcnow())
        )
    erased = await scrape(state)
    assert erased.get_sample_value("flash_card_payouts_total", A | {"card": "card-one"}) is None
    assert erased.get_sample_value("flash_card_payouts_total", A | {"card": "card-two"}) == 1

    async with engine.begin() as conn:
        await set_card_tracking(conn, "store-a", False)
    private = await scrape(state)
    carded = {m.name for m in private.collect() for s in m.samples if s.labels.get("card")}
    assert carded == set()


async def test_the_listener_serves_reused_readings_and_stops_its_background_read_on_close(
    engine: AsyncEngine,
) -> None:
    await add_store(engine, "store-a")
    await cards_paid(engine, "card-one")
    app = create_app(engine, ExporterConfig(slow_max_age=60))
    state = app[STATE_KEY]
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        first = await client.get("/metrics")
        assert first.status == 200
        assert 'flash_active_cards{store="store-a",window="30d"} 1.0' in await first.text()
        age_by(state, 90)
        stale = await client.get("/metrics")
        assert stale.status == 200
        assert state.slow.refreshing is not None
    # Closing the listener leaves no read running against an engine about to be disposed.
    assert state.slow.refreshing is None
