"""`flash-payouts cards ...`: issue, import and manage Boltcards. Every answer is JSON.

`cards add` prints the programming apps' document and `cards wipe` the wipe document: both
carry the card's keys, because programming or resetting the card needs them. Nothing else
prints a key.

`cards add` and `cards import` first read the card's pull payment from the store's BTCPay (or
``--btcpay-url`` for a store not connected yet): one BTCPay does not have is refused, and one
whose settings would refuse or hold the card's claims is named on standard error with its fix
(``flash_payouts.pull_payments``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.stores import get_store
from lnurl_gateway.app import GatewayConfig, make_registry
from lnurl_gateway.registry import CardRegistry, RegistryError

from ..pull_payments import read_all
from ..runtime import ledger_secret_box, open_ledger, secret_box
from ..settings import Settings, load
from . import CommandError


def _sats(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of sats") from None
    if number < 0:
        raise argparse.ArgumentTypeError("sats must not be negative")
    return number


def _counter(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a counter value") from None


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    cards = sub.add_parser(
        "cards",
        help="issue, import and manage Boltcards",
        description="Manage the Boltcards the gateway accepts. Output is JSON.",
    )
    actions = cards.add_subparsers(dest="cards_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, parents=parents, help=help_text, description=help_text)

    add = action(
        "add",
        "Issue a card with keys derived from the store's issuer key (or random keys) and print "
        "the programming apps' JSON. Adding a wiped card's UID again re-programs it under the "
        "next key version.",
    )
    add.add_argument("--store", required=True, help="BTCPay store id")
    add.add_argument("--pull-payment", required=True, help="the card's pull payment id")
    add.add_argument("--uid", required=True, help="the card's 7-byte NTAG UID, hex")
    add.add_argument("--alias", help="a name for the card")
    add.add_argument("--tx-limit", type=_sats, metavar="SATS", help="per-transaction limit")
    add.add_argument("--day-limit", type=_sats, metavar="SATS", help="per-day limit")
    add.add_argument(
        "--random-keys", action="store_true", help="random keys instead of derived ones"
    )
    add.set_defaults(handler=_run, run=_add, checks_pull_payment=True)

    imp = action("import", "Register a card programmed elsewhere, with its keys.")
    imp.add_argument("--store", required=True, help="BTCPay store id")
    imp.add_argument("--pull-payment", required=True, help="the card's pull payment id")
    imp.add_argument("--uid", required=True, help="the card's 7-byte NTAG UID, hex")
    imp.add_argument("--k1", required=True, metavar="HEX", help="K1 (decrypts p)")
    imp.add_argument("--k2", required=True, metavar="HEX", help="K2 (authenticates c)")
    imp.add_argument("--k0", metavar="HEX", help="K0 (needed to wipe the card)")
    imp.add_argument("--k3", metavar="HEX", help="K3")
    imp.add_argument("--k4", metavar="HEX", help="K4")
    imp.add_argument("--counter", type=_counter, metavar="N", help="last counter the card has used")
    imp.add_argument("--alias", help="a name for the card")
    imp.add_argument("--tx-limit", type=_sats, metavar="SATS", help="per-transaction limit")
    imp.add_argument("--day-limit", type=_sats, metavar="SATS", help="per-day limit")
    imp.set_defaults(handler=_run, run=_import, checks_pull_payment=True)

    lst = action("list", "List cards (never their keys).")
    lst.add_argument("--store", help="only this store's cards")
    lst.set_defaults(handler=_run, run=_list)

    show = action("show", "Show one card.")
    show.add_argument("card", help="card id")
    show.set_defaults(handler=_run, run=_show)

    alias = action("alias", "Name a card ('' removes the name).")
    alias.add_argument("card", help="card id")
    alias.add_argument("alias", help="the new name")
    alias.set_defaults(handler=_run, run=_alias)

    enable = action("enable", "Accept the card's taps again.")
    enable.add_argument("card", help="card id")
    enable.set_defaults(handler=_run, run=_enable)

    disable = action("disable", "Refuse the card's taps until it is enabled.")
    disable.add_argument("card", help="card id")
    disable.set_defaults(handler=_run, run=_disable)

    wipe = action(
        "wipe",
        "Mark the card wiped and print the keys a programming app needs to reset it.",
    )
    wipe.add_argument("card", help="card id")
    wipe.set_defaults(handler=_run, run=_wipe)

    limits = action("limits", "Show or change a card's limits, in sats.")
    limits.add_argument("card", help="card id")
    limits.add_argument("--tx-limit", type=_sats, metavar="SATS", help="per-transaction limit")
    limits.add_argument("--day-limit", type=_sats, metavar="SATS", help="per-day limit")
    limits.set_defaults(handler=_run, run=_limits)


async def _run(args: argparse.Namespace) -> int:
    settings = load(args)
    box = secret_box(settings)
    engine = await open_ledger(settings)
    notes: list[str] = []
    try:
        if getattr(args, "checks_pull_payment", False):
            notes = await _check_pull_payment(engine, settings, args.store, args.pull_payment)
        box = await ledger_secret_box(box, engine)
        config = GatewayConfig(
            public_url=settings.gateway_base_url,
            default_tx_limit_sats=settings.default_tx_limit_sats,
            default_day_limit_sats=settings.default_day_limit_sats,
        )
        registry = make_registry(engine, box, config)
        try:
            result = await args.run(registry, args)
        except RegistryError as exc:
            raise CommandError(str(exc)) from None
    finally:
        await engine.dispose()
    print(json.dumps(result, indent=2))
    for note in notes:
        print(note, file=sys.stderr)
    return 0


async def _check_pull_payment(
    engine: AsyncEngine, settings: Settings, store_id: str, pull_payment_id: str
) -> list[str]:
    """The lines to show once the card is registered; CommandError for a pull payment BTCPay
    does not have."""
    async with engine.connect() as conn:
        store = await get_store(conn, store_id)
    btcpay_url = (store.btcpay_url if store is not None else None) or settings.btcpay_url
    if not btcpay_url:
        return [
            f"note: pull payment {pull_payment_id} not checked: store {store_id} is not "
            "connected and no --btcpay-url was given"
        ]
    lines, unknown = await read_all(btcpay_url, [pull_payment_id], timeout=settings.btcpay_timeout)
    if unknown:
        raise CommandError(f"BTCPay at {btcpay_url} has no pull payment {pull_payment_id}")
    return [f"warning: {line}" for line in lines]


async def _add(registry: CardRegistry, args: argparse.Namespace) -> Any:
    return await registry.add_card(
        args.store,
        pull_payment_id=args.pull_payment,
        uid=args.uid,
        alias=args.alias,
        tx_limit_sats=args.tx_limit,
        day_limit_sats=args.day_limit,
        random_keys=args.random_keys,
    )


async def _import(registry: CardRegistry, args: argparse.Namespace) -> Any:
    return await registry.import_card(
        args.store,
        pull_payment_id=args.pull_payment,
        uid=args.uid,
        k0=args.k0,
        k1=args.k1,
        k2=args.k2,
        k3=args.k3,
        k4=args.k4,
        counter=args.counter,
        alias=args.alias,
        tx_limit_sats=args.tx_limit,
        day_limit_sats=args.day_limit,
    )


async def _list(registry: CardRegistry, args: argparse.Namespace) -> Any:
    return await registry.list(args.store)


async def _show(registry: CardRegistry, args: argparse.Namespace) -> Any:
    return await registry.show(args.card)


async def _alias(registry: CardRegistry, args: argparse.Namespace) -> Any:
    return await registry.set_alias(args.card, args.alias)


async def _enable(registry: CardRegistry, args: argparse.Namespace) -> Any:
    return await registry.enable(args.card)


async def _disable(registry: CardRegistry, args: argparse.Namespace) -> Any:
    return await registry.disable(args.card)


async def _wipe(registry: CardRegistry, args: argparse.Namespace) -> Any:
    return await registry.wipe(args.card)


async def _limits(registry: CardRegistry, args: argparse.Namespace) -> Any:
    if args.tx_limit is None and args.day_limit is None:
        return await registry.show(args.card)
    return await registry.set_limits(
        args.card, tx_limit_sats=args.tx_limit, day_limit_sats=args.day_limit
    )
