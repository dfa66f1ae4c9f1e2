"""The reconciler: a full pass over every payout BTCPay has for a store, fixing the ledger.

Webhooks get lost, and BTCPay's auto-cancel of a too-small payout sends none at all, so only a
full listing (``includeCancelled=true``) is sure to see everything. The list arrives as one
unpaged array; it is parsed as it streams and handled a page at a time: the ledger's view of
the page is read in one query, and only payouts that differ are written (source "reconcile"),
all in one transaction through ``upsert_payouts``, which keeps the ordering rule and the
rollups exactly as one write per payout would. Every payout of the list is a view read when
the list was asked for: a page written after a webhook's fetch of a payout does not undo it.

A payout whose destination the ledger already holds is not decoded again: its payment hash and
invoice amount are taken from the ledger, which makes a routine pass cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.db import in_transaction, readonly
from ledger.ingest import (
    PAYOUT_FIELDS,
    KnownPayout,
    known_payouts,
    sync_failed,
    sync_started,
    sync_succeeded,
)
from ledger.payouts import PayoutRecord, upsert_payouts

from .btcpay_stores import StoreClients
from .greenfield import GreenfieldClient, GreenfieldError
from .payout_shape import PayoutShapeError, decoder_knowing, normalise_payout

log = logging.getLogger("lnurl_gateway.reconcile")

PAGE_SIZE = 500

# progress(store_id, payouts_seen, bytes_read, bytes_total or None)
Progress = Callable[[str, int, int, int | None], None]


@dataclass
class ReconcileResult:
    store_id: str
    seen: int = 0
    changed: int = 0
    created: int = 0
    skipped: int = 0  # payouts BTCPay sent that cannot be read (logged)
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _differs(record: PayoutRecord, known: KnownPayout | None) -> bool:
    """Whether the page's view says anything the ledger does not hold. Whether it may say it
    is the ledger's rule (``view_supersedes``): a payout changed since the list was read keeps
    the newer view."""
    if known is None:
        return True
    return any(getattr(record, name) != getattr(known, name) for name in PAYOUT_FIELDS)


async def reconcile_store(
    engine: AsyncEngine,
    client: GreenfieldClient,
    store_id: str,
    *,
    page_size: int = PAGE_SIZE,
    progress: Progress | None = None,
) -> ReconcileResult:
    """One full pass over a store's payouts. Failures are recorded in ``sync_state``."""
    result = ReconcileResult(store_id)
    started = time.perf_counter()
    async with engine.begin() as conn:
        await sync_started(conn, store_id)
    received = [0, None]

    def on_bytes(count: int, total: int | None = None) -> None:
        received[0], received[1] = count, total

    page: list[dict[str, Any]] = []
    writer = _PageWriter(engine, result)
    # BTCPay reads the whole list when asked; every payout on it is a view as of then.
    asked_at = datetime.now(UTC)
    try:
        try:
            async for item in client.iter_payouts(store_id, True, progress=on_bytes):
                page.append(item)
                if len(page) >= page_size:
                    await writer.submit(await _read_page(engine, store_id, page, result, asked_at))
                    page = []
                    if progress is not None:
                        progress(store_id, result.seen, received[0], received[1])
            if page:
                await writer.submit(await _read_page(engine, store_id, page, result, asked_at))
        finally:
            await writer.finish()
        if progress is not None:
            progress(store_id, result.seen, received[0], received[1])
    except GreenfieldError as exc:
        result.error = exc.message
    except Exception as exc:  # recorded in sync_state for the operator, then raised
        result.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        async with engine.begin() as conn:
            await sync_failed(conn, store_id, result.error)
        raise
    result.seconds = time.perf_counter() - started
    async with engine.begin() as conn:
        if result.error is None:
            await sync_succeeded(conn, store_id, seen=result.seen, changed=result.changed)
        else:
            await sync_failed(conn, store_id, result.error)
    if result.error is None:
        log.info(
            "store %s reconciled: %d payouts, %d changed (%d new) in %.1f s",
            store_id,
            result.seen,
            result.changed,
            result.created,
            result.seconds,
        )
    else:
        log.warning("store %s: reconcile failed: %s", store_id, result.error)
    return result


async def _read_page(
    engine: AsyncEngine,
    store_id: str,
    page: list[dict[str, Any]],
    result: ReconcileResult,
    asked_at: datetime,
) -> list[PayoutRecord]:
    """The page's payouts that differ from the ledger."""
    ids = [p["id"] for p in page if isinstance(p.get("id"), str)]
    async with readonly(engine).connect() as conn:
        known = await known_payouts(conn, ids)
    # Reading new invoices is CPU work: a thread keeps the event loop (and webhooks) moving.
    records, skipped = await asyncio.to_thread(_normalise_page, page, store_id, known, asked_at)
    result.seen += len(page)
    result.skipped += skipped
    return [r for r in records if _differs(r, known.get(r.id))]


class _PageWriter:
    """Writes one page while the next is read: the database works while this process parses.

    At most one write is in flight, so memory holds two pages at most, and pages commit in the
    order they arrived.
    """

    def __init__(self, engine: AsyncEngine, result: ReconcileResult) -> None:
        self.engine = engine
        self.result = result
        self.task: asyncio.Task[None] | None = None

    async def submit(self, changes: list[PayoutRecord]) -> None:
        await self.finish()
        if changes:
            self.task = asyncio.create_task(self._write(changes))

    async def finish(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            await task

    async def _write(self, changes: list[PayoutRecord]) -> None:
        async def write(conn: AsyncConnection) -> tuple[int, int]:
            outcomes = await upsert_payouts(conn, changes, source="reconcile")
            return sum(o.changed for o in outcomes), sum(o.created for o in outcomes)

        # Concurrent batches (the enrichment worker, another replica) lock shared rows in one
        # order and cannot deadlock each other; the retry is for anything else the server aborts.
        changed, created = await in_transaction(self.engine, write)
        self.result.changed += changed
        self.result.created += created


def _normalise_page(
    page: list[dict[str, Any]], store_id: str, known: dict[str, KnownPayout], asked_at: datetime
) -> tuple[list[PayoutRecord], int]:
    decode = decoder_knowing(known)
    records, skipped = [], 0
    for data in page:
        try:
            record = normalise_payout(data, store_id, decode=decode)
            record.read_at = asked_at
            records.append(record)
        except PayoutShapeError as exc:
            skipped += 1
            log.warning("store %s: payout skipped: %s", store_id, exc)
    return records, skipped


async def reconcile_all(
    engine: AsyncEngine,
    clients: StoreClients,
    store_id: str | None = None,
    *,
    progress: Progress | None = None,
) -> list[ReconcileResult]:
    """Reconcile one connected store or all of them, one after the other."""
    results = []
    for target in await clients.targets(store_id):
        client = clients.client_for(target)
        results.append(await reconcile_store(engine, client, target.id, progress=progress))
    return results


@dataclass
class PeriodicReconciler:
    """Runs ``reconcile_all`` every ``interval`` seconds (and once shortly after start)."""

    engine: AsyncEngine
    clients: StoreClients
    interval: float
    first_delay: float = 2.0
    _now: asyncio.Event | None = None

    def trigger(self) -> None:
        """Start a pass now instead of at the next interval."""
        if self._now is not None:
            self._now.set()

    async def run(self) -> None:
        self._now = asyncio.Event()
        delay = self.first_delay
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), delay)
            self._now.clear()
            try:
                await reconcile_all(self.engine, self.clients)
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive a ledger hiccup; the next pass retries
                log.exception("reconcile pass failed")
            delay = self.interval
