"""Tap and callback outcomes: one list shared by the writers and the exporter, and their families.

The outcome constants are imported from the modules that write them, so an outcome added there
without an entry in ``ledger/outcomes.py`` fails here rather than going unseen by the alerts.
"""

from __future__ import annotations

from exporter_fixtures import add_store, scrape
from sqlalchemy.ext.asyncio import AsyncEngine

import ledger.btcpay_cards as proxy
import ledger.taps as ledger_taps
import lnurl_gateway.claim_refusals as claim_refusals
import lnurl_gateway.handlers as handlers
from exporter.catalogue import BY_NAME
from ledger.outcomes import (
    BTCPAY_CALLBACK_OUTCOMES,
    CALLBACK_OUTCOMES,
    GATEWAY_TAP_OUTCOMES,
    PROXY_TAP_OUTCOMES,
    TAP_OUTCOMES,
)

# Outcome constants of each writer, by the counter they label. ``ledger.taps.CLAIMING`` is left
# out on purpose: it marks a callback in progress in card_taps and is never counted.
GATEWAY_TAPS = ("ACCEPTED", "MALFORMED", "BAD_P", "UNKNOWN_CARD", "WIPED", "DISABLED")
GATEWAY_TAPS += ("BAD_MAC", "REPLAY", "LIMIT")
GATEWAY_CALLBACKS = ("PAID", "INVOICE_REFUSED", "DUPLICATE_INVOICE", "OVER_LIMIT")
GATEWAY_CALLBACKS += ("CARD_UNUSABLE", "BTCPAY_REFUSED", "BTCPAY_UNAVAILABLE")
PROXY_TAPS = ("ACCEPTED", "REPLAY", "UNIDENTIFIED", "BTCPAY_REFUSED", "BTCPAY_ERROR")
PROXY_CALLBACKS = ("CALLBACK_OK", "CALLBACK_REFUSED", "CALLBACK_ERROR")
# Other upper-case text constants of those modules, which label nothing.
NOT_OUTCOMES = {
    handlers: set(),
    # The reasons' wording is not an outcome label, nor is a piece of SQL.
    ledger_taps: {"CLAIMING", "WIDEN_CARD_USE"}
    | {name for name in dir(ledger_taps) if name.startswith("REASON_")},
    proxy: {"ORIGIN", "SOURCE"},
    claim_refusals: {"REASON_INVOICE_EXPIRY"},
}


def constants(module) -> dict[str, str]:
    return {
        name: value
        for name, value in vars(module).items()
        if name.isupper() and not name.startswith("_") and isinstance(value, str)
    }


def test_every_gateway_outcome_is_in_the_shared_lists() -> None:
    for name in GATEWAY_TAPS:
        assert getattr(handlers, name) in GATEWAY_TAP_OUTCOMES, name
    for name in GATEWAY_CALLBACKS:
        assert getattr(handlers, name) in CALLBACK_OUTCOMES, name
    assert ledger_taps.ACCEPTED in GATEWAY_TAP_OUTCOMES
    assert ledger_taps.PAID in CALLBACK_OUTCOMES
    assert claim_refusals.BTCPAY_REFUSED_EXPIRY in CALLBACK_OUTCOMES


def test_every_btcpay_proxy_outcome_is_in_the_shared_lists() -> None:
    for name in PROXY_TAPS:
        assert getattr(proxy, name) in PROXY_TAP_OUTCOMES, name
    for name in PROXY_CALLBACKS:
        assert getattr(proxy, name) in BTCPAY_CALLBACK_OUTCOMES, name


def test_a_new_outcome_constant_in_a_writer_fails_until_it_is_listed() -> None:
    # The named lists above could miss a constant added later: every text constant of the
    # writers must be an outcome we list, or be declared as labelling nothing.
    listed = set(TAP_OUTCOMES) | set(CALLBACK_OUTCOMES) | set(BTCPAY_CALLBACK_OUTCOMES)
    for module, others in NOT_OUTCOMES.items():
        unknown = {
            name: value
            for name, value in constants(module).items()
            if name not in others and value not in listed
        }
        assert not unknown, f"{module.__name__} defines outcomes missing in ledger/outcomes.py"


def test_the_lists_hold_no_outcome_twice() -> None:
    for outcomes in (GATEWAY_TAP_OUTCOMES, PROXY_TAP_OUTCOMES, CALLBACK_OUTCOMES):
        assert len(set(outcomes)) == len(outcomes)
    assert set(TAP_OUTCOMES) == set(GATEWAY_TAP_OUTCOMES) | set(PROXY_TAP_OUTCOMES)


def test_the_catalogue_describes_the_callback_families() -> None:
    for name in ("flash_callbacks_total", "flash_btcpay_callbacks_total"):
        assert BY_NAME[name].type == "counter"
        assert BY_NAME[name].labels == ("store", "outcome")


async def test_callbacks_are_counted_by_store_and_outcome(engine: AsyncEngine) -> None:
    await add_store(engine, "store-a")
    async with engine.begin() as conn:
        for outcome in (handlers.PAID, handlers.PAID, handlers.OVER_LIMIT):
            tap_id = await ledger_taps.record_tap(
                conn, outcome=handlers.ACCEPTED, store_id="store-a"
            )
            await ledger_taps.finish_tap(conn, tap_id, store_id="store-a", outcome=outcome)
        await proxy.count_callback(conn, "store-a", proxy.CALLBACK_OK)
        await proxy.count_callback(conn, None, proxy.CALLBACK_ERROR)

    reg = await scrape(engine)

    def value(family: str, outcome: str, store: str = "store-a") -> float | None:
        return reg.get_sample_value(family, {"store": store, "outcome": outcome})

    assert value("flash_taps_total", "accepted") == 3
    assert value("flash_callbacks_total", "paid") == 2
    assert value("flash_callbacks_total", "over_limit") == 1
    assert value("flash_callbacks_total", "card_unusable") == 0
    assert value("flash_btcpay_callbacks_total", "ok") == 1
    assert value("flash_btcpay_callbacks_total", "btcpay_error") == 0
    # A callback of a tap no store was found for is kept, with an empty store label.
    assert value("flash_btcpay_callbacks_total", "btcpay_error", store="") == 1


async def test_every_known_outcome_has_a_zero_series_before_it_happens(
    engine: AsyncEngine,
) -> None:
    await add_store(engine, "quiet")
    reg = await scrape(engine)
    s = {"store": "quiet"}
    for family, outcomes in (
        ("flash_taps_total", TAP_OUTCOMES),
        ("flash_callbacks_total", CALLBACK_OUTCOMES),
        ("flash_btcpay_callbacks_total", BTCPAY_CALLBACK_OUTCOMES),
    ):
        for outcome in outcomes:
            assert reg.get_sample_value(family, s | {"outcome": outcome}) == 0, (family, outcome)
