"""`flash-payouts btcpay connect|stores|sync`: connecting BTCPay stores, syncing payouts."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from ledger.btcpay_cards import ORIGIN
from ledger.cards import list_cards
from ledger.ingest import count_pending_events, sync_state
from ledger.stores import list_stores
from lnurl_gateway.greenfield import (
    CAN_MODIFY_WEBHOOKS,
    CAN_VIEW_PAYOUTS,
    GreenfieldAuthError,
    GreenfieldError,
)
from lnurl_gateway.webhooks import WEBHOOK_PATH

from ..connect import StoreNotVisible, connect_store, reconcile_stores
from ..pull_payments import read_all
from ..runtime import ledger_secret_box, open_ledger, secret_box
from ..settings import load
from . import CommandError
from .btcpay_issuer import register_issuer

WHY = {
    CAN_VIEW_PAYOUTS: "to read payouts",
    CAN_MODIFY_WEBHOOKS: "to register the payout webhook",
}


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "btcpay",
        help="connect BTCPay stores and sync their payouts",
        description="Connect a BTCPay Server store (checks the API key, registers the payout "
        "webhook), list connected stores, or reconcile payouts now.",
    )
    actions = p.add_subparsers(dest="btcpay_command", metavar="ACTION", required=True)

    connect = actions.add_parser(
        "connect",
        parents=parents,
        help="connect a store: check the API key, register the webhook, record the store",
        description="Check the API key (--btcpay-api-key) against --btcpay-url with "
        "GET /api/v1/api-keys/current, register a webhook for payout events with a fresh "
        "secret, and record the store with its key and secret sealed by the master key. "
        f"The key needs {CAN_VIEW_PAYOUTS} and {CAN_MODIFY_WEBHOOKS} on the store. Then read "
        "the pull payments of the store's cards and name, on standard error, any that would "
        "refuse or hold their claims (BOLT11Expiration above 0, no auto-approval, no BTC-LN).",
    )
    connect.add_argument("--store", required=True, metavar="STORE_ID", help="BTCPay store id")
    connect.add_argument(
        "--webhook-url",
        metavar="URL",
        help=f"where BTCPay posts events (default: PUBLIC_URL + {WEBHOOK_PATH})",
    )
    connect.set_defaults(handler=_connect)

    stores = actions.add_parser(
        "stores", parents=parents, help="list connected stores and how their last sync went"
    )
    stores.set_defaults(handler=_stores)

    sync = actions.add_parser(
        "sync",
        parents=parents,
        help="reconcile payouts with BTCPay now",
        description="List every payout of each connected store (includeCancelled=true) and "
        "write every difference to the ledger. Shows a progress bar on a terminal.",
    )
    sync.add_argument("--store", metavar="STORE_ID", help="only this store")
    sync.set_defaults(handler=_sync)

    register_issuer(actions, parents)


async def _connect(args: argparse.Namespace) -> int:
    settings = load(args)
    store_id: str = args.store.strip()
    if not store_id:
        raise CommandError("--store must name a BTCPay store id")
    if not settings.btcpay_url:
        raise CommandError("no BTCPay URL: give --btcpay-url or FLASH_BTCPAY_URL")
    if not settings.btcpay_api_key:
        raise CommandError("no API key: give --btcpay-api-key or FLASH_BTCPAY_API_KEY")
    box = secret_box(settings)
    webhook_url = args.webhook_url or settings.gateway_base_url + WEBHOOK_PATH
    engine = await open_ledger(settings)
    try:
        box = await ledger_secret_box(box, engine)
        connected = await connect_store(
            engine,
            box,
            store_id=store_id,
            btcpay_url=settings.btcpay_url,
            api_key=settings.btcpay_api_key,
            webhook_url=webhook_url,
            timeout=settings.btcpay_timeout,
        )
        async with engine.connect() as conn:
            cards = await list_cards(conn, store_id)
    except StoreNotVisible as exc:
        raise CommandError(
            f"BTCPay at {settings.btcpay_url} shows this API key no store {store_id}: the key "
            f"holds {exc.missing_permission}, yet BTCPay refused it for that store, which it "
            "does for a store that does not exist or that the key's user cannot see"
        ) from None
    except GreenfieldAuthError as exc:
        if exc.status == 401:
            raise CommandError(
                f"BTCPay at {settings.btcpay_url} does not accept this API key"
            ) from None
        raise CommandError(_missing_message(exc.missing_permission, store_id)) from None
    except GreenfieldError as exc:
        raise CommandError(exc.message) from None
    finally:
        await engine.dispose()
    name, webhook_id = connected.name, connected.webhook_id
    print(
        f"connected store {store_id}{f' ({name})' if name else ''} at {settings.btcpay_url}: "
        f"webhook {webhook_id} -> {webhook_url}"
    )
    # The gateway's own cards of the store claim through Greenfield: read their pull payments.
    pull_payments = [
        c.pull_payment_id
        for c in cards
        if c.origin != ORIGIN and c.pull_payment_id and c.wiped_at is None
    ]
    lines, unknown = await read_all(
        settings.btcpay_url, pull_payments, timeout=settings.btcpay_timeout
    )
    lines += [f"BTCPay has no pull payment {pp}: its cards' claims are refused" for pp in unknown]
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)
    return 0


def _missing_message(permission: str | None, store_id: str) -> str:
    if permission is None:
        return f"the API key lacks a permission BTCPay requires for store {store_id}"
    why = WHY.get(permission, "")
    return (
        f"the API key lacks the permission {permission}"
        f"{' (' + why + ')' if why else ''} on store {store_id}; "
        f"create a key with {CAN_VIEW_PAYOUTS} and {CAN_MODIFY_WEBHOOKS} on it"
    )


async def _stores(args: argparse.Namespace) -> int:
    settings = load(args)
    engine = await open_ledger(settings)
    try:
        async with engine.connect() as conn:
            stores = await list_stores(conn)
            rows = []
            for store in stores:
                state = await sync_state(conn, store.id) or {}
                pending = await count_pending_events(conn, store.id)
                rows.append(
                    (
                        store.id,
                        store.name or "-",
                        store.btcpay_url or "-",
                        store.webhook_id or "-",
                        _when(state.get("last_success_at")),
                        str(state.get("payouts_seen", "-")),
                        str(pending),
                        (state.get("last_error") or "-")
                        if state.get("last_error_at")
                        and (
                            state.get("last_success_at") is None
                            or state["last_error_at"] > state["last_success_at"]
                        )
                        else "-",
                    )
                )
    finally:
        await engine.dispose()
    if not rows:
        print("no stores connected; use `flash-payouts btcpay connect --store STORE_ID`")
        return 0
    header = ("STORE", "NAME", "BTCPAY", "WEBHOOK", "LAST SYNC", "PAYOUTS", "QUEUED", "ERROR")
    _table(sys.stdout, [header, *rows])
    return 0


def _when(value) -> str:  # type: ignore[no-untyped-def]
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "never"


def _table(out: TextIO, rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


async def _sync(args: argparse.Namespace) -> int:
    settings = load(args)
    box = secret_box(settings)
    engine = await open_ledger(settings)
    bar = _ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    try:
        box = await ledger_secret_box(box, engine)
        results = await reconcile_stores(
            engine,
            box,
            timeout=settings.btcpay_timeout,
            store_id=args.store,
            progress=bar.update if bar else None,
        )
    finally:
        await engine.dispose()
    if args.store and not results:
        raise CommandError(f"store {args.store!r} is not connected (see `btcpay stores`)")
    if bar is not None:
        bar.done()
    if not results:
        print("no stores connected; use `flash-payouts btcpay connect --store STORE_ID`")
        return 0
    failed = 0
    for result in results:
        if result.ok:
            print(
                f"store {result.store_id}: {result.seen} payouts, {result.changed} changed "
                f"({result.created} new) in {result.seconds:.1f} s"
            )
        else:
            failed += 1
            print(f"store {result.store_id}: sync failed: {result.error}", file=sys.stderr)
    return 1 if failed else 0


class _ProgressBar:
    """One line on a terminal, redrawn at most ten times a second."""

    def __init__(self, out: TextIO, width: int = 30) -> None:
        self.out = out
        self.width = width
        self._last = 0.0

    def update(self, store_id: str, seen: int, received: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self._last < 0.1 and (total is None or received < total):
            return
        self._last = now
        if total:
            filled = int(self.width * min(received, total) / total)
            bar = "#" * filled + "-" * (self.width - filled)
            shown = f"[{bar}] {100 * received // total:3d}%"
        else:
            shown = f"{received / 1e6:.1f} MB"
        self.out.write(f"\r{store_id}: {shown} {seen} payouts")
        self.out.flush()

    def done(self) -> None:
        self.out.write("\n")
        self.out.flush()
