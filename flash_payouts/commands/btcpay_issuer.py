"""`flash-payouts btcpay issuer`: the key of the cards BTCPay Server issued, for one store.

With BTCPay's issuer key the gateway reads every tap of BTCPay's cards and names each card by
BTCPay's own id; with only the issuer's K1 it reads the taps and names cards by a keyed
pseudonym of their UID. Either is sealed with the master key before it is stored.

The pull payments BTCPay's cards are on (``--pull-payment``) are read from BTCPay: one that does
not approve claims or pay BTC-LN is named on standard error with its fix. BOLT11Expiration does
not matter to these cards: BTCPay claims their payouts through its own LNURL-withdraw, which
does not check it.
"""

from __future__ import annotations

import argparse
import string
import sys

from ledger.btcpay_cards import set_btcpay_issuer
from ledger.stores import get_store, upsert_store
from lnurl_gateway.boltcard import KEY_LEN, issuer_k1
from lnurl_gateway.btcpay_proxy import k1_fingerprint, seal_issuer_k1, seal_issuer_key

from ..pull_payments import read_all
from ..runtime import ledger_secret_box, open_ledger, secret_box
from ..settings import load
from . import CommandError


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Nothing at the top level: ``issuer`` belongs to the ``btcpay`` group (register_issuer)."""


def register_issuer(
    actions: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]
) -> None:
    p = actions.add_parser(
        "issuer",
        parents=parents,
        help="store BTCPay's Boltcard issuer key (or its K1) for a store",
        description="Let the gateway read the taps of cards BTCPay Server issued, on their way "
        "to BTCPay's /boltcard. With --issuer-key card ids equal BTCPay's own; with --k1 only, "
        "cards get a keyed pseudonym. The key is sealed with the master key. Give '-' to read "
        "the value from standard input instead of the command line.",
    )
    p.add_argument("--store", required=True, metavar="STORE_ID", help="BTCPay store id")
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--issuer-key", metavar="HEX", help="BTCPay's issuer key, 32 hex characters")
    key.add_argument("--k1", metavar="HEX", help="only the issuer's K1, 32 hex characters")
    p.add_argument(
        "--pull-payment",
        action="append",
        default=[],
        metavar="PP_ID",
        help="a pull payment BTCPay's cards are on, to check (repeat for several)",
    )
    p.set_defaults(handler=_issuer)


def _key(value: str, what: str) -> bytes:
    text = (sys.stdin.readline() if value == "-" else value).strip()
    if len(text) != 2 * KEY_LEN or not set(string.hexdigits).issuperset(text):
        raise CommandError(f"{what} must be {2 * KEY_LEN} hex characters")
    return bytes.fromhex(text)


async def _issuer(args: argparse.Namespace) -> int:
    settings = load(args)
    store_id: str = args.store.strip()
    if not store_id:
        raise CommandError("--store must name a BTCPay store id")
    if args.issuer_key is not None:
        issuer_key: bytes | None = _key(args.issuer_key, "--issuer-key")
        k1 = issuer_k1(issuer_key)
    else:
        issuer_key = None
        k1 = _key(args.k1, "--k1")
    box = secret_box(settings)
    engine = await open_ledger(settings)
    try:
        box = await ledger_secret_box(box, engine)
        async with engine.begin() as conn:
            store = await get_store(conn, store_id)
            btcpay_url = (store.btcpay_url if store is not None else None) or settings.btcpay_url
            if store is None:
                if not settings.btcpay_url:
                    raise CommandError(
                        f"store {store_id} is not connected: run `flash-payouts btcpay connect` "
                        "first, or give --btcpay-url"
                    )
                await upsert_store(conn, store_id, btcpay_url=settings.btcpay_url.rstrip("/"))
            await set_btcpay_issuer(
                conn,
                store_id,
                issuer_key_sealed=(
                    seal_issuer_key(box, store_id, issuer_key) if issuer_key is not None else None
                ),
                k1_sealed=seal_issuer_k1(box, store_id, k1) if issuer_key is None else None,
            )
    finally:
        await engine.dispose()
    naming = "BTCPay's card ids" if issuer_key is not None else "keyed pseudonyms of the UID"
    print(
        f"store {store_id}: BTCPay {'issuer key' if issuer_key is not None else 'K1'} stored "
        f"(K1 fingerprint {k1_fingerprint(box, k1)[:12]}); cards are named by {naming}"
    )
    if args.pull_payment and btcpay_url:
        lines, unknown = await read_all(
            btcpay_url,
            args.pull_payment,
            timeout=settings.btcpay_timeout,
            claims_through_greenfield=False,
        )
        lines += [f"BTCPay has no pull payment {pp}: no card can be paid from it" for pp in unknown]
        for line in lines:
            print(f"warning: {line}", file=sys.stderr)
    elif args.pull_payment:
        print("note: pull payments not checked: the store has no BTCPay URL", file=sys.stderr)
    else:
        print(
            "note: name the pull payments of BTCPay's cards with --pull-payment to have them "
            "checked",
            file=sys.stderr,
        )
    return 0
