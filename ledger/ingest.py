"""The ledger side of BTCPay ingestion: the enrichment queue, reconcile bookkeeping, snapshots.

The enrichment queue is not a separate table: a webhook's ``payout_events`` row carries
``enrich_pending`` until the payout has been fetched from Greenfield. So the queue survives
restarts, and an event is in the queue exactly when it is in the ledger.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .payouts import one_of, record_event
from .rollups import dialect_insert
from .schema import Payout, PayoutEvent, Store, SyncState, UTCDateTime

events_t = PayoutEvent.__table__
payouts_t = Payout.__table__
stores_t = Store.__table__
sync_t = SyncState.__table__


def _now() -> datetime:
    return datetime.now(UTC)


# --- the enrichment queue ----------------------------------------------------------------------


@dataclass(frozen=True)
class PendingEvent:
    id: int
    store_id: str
    payout_id: str
    event_type: str
    attempts: int


async def pending_events(
    conn: AsyncConnection,
    *,
    limit: int = 200,
    skip_stores: Iterable[str] = (),
    after_id: int = 0,
) -> list[PendingEvent]:
    """The oldest events still waiting for their payout to be fetched."""
    query = (
        select(
            events_t.c.id,
            events_t.c.store_id,
            events_t.c.payout_id,
            events_t.c.event_type,
            events_t.c.enrich_attempts,
        )
        .where(events_t.c.enrich_pending.is_(True), events_t.c.id > after_id)
        .order_by(events_t.c.id)
        .limit(limit)
    )
    skipped = list(skip_stores)
    if skipped:
        query = query.where(events_t.c.store_id.not_in(skipped))
    rows = (await conn.execute(query)).all()
    return [PendingEvent(r[0], r[1], r[2], r[3], r[4]) for r in rows]


async def count_pending_events(conn: AsyncConnection, store_id: str | None = None) -> int:
    query = select(func.count()).select_from(events_t).where(events_t.c.enrich_pending.is_(True))
    if store_id is not None:
        query = query.where(events_t.c.store_id == store_id)
    return int((await conn.execute(query)).scalar_one())


async def complete_events(conn: AsyncConnection, event_ids: Sequence[int]) -> int:
    """Take events off the queue (their payout is in the ledger now). Returns how many."""
    if not event_ids:
        return 0
    result = await conn.execute(
        update(events_t)
        .where(events_t.c.id.in_(list(event_ids)), events_t.c.enrich_pending.is_(True))
        .values(enrich_pending=False, enrich_attempts=events_t.c.enrich_attempts + 1)
    )
    return result.rowcount or 0


async def note_enrich_failure(conn: AsyncConnection, event_ids: Sequence[int]) -> None:
    """Count a failed fetch; the events stay queued."""
    if event_ids:
        await conn.execute(
            update(events_t)
            .where(events_t.c.id.in_(list(event_ids)))
            .values(enrich_attempts=events_t.c.enrich_attempts + 1)
        )


# --- stores ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookStore:
    """What the webhook receiver needs of a store: nothing but its sealed secret."""

    id: str
    webhook_secret_sealed: str | None

    def __repr__(self) -> str:
        return f"WebhookStore(id={self.id!r})"


async def webhook_store(conn: AsyncConnection, store_id: str) -> WebhookStore | None:
    row = (
        await conn.execute(
            select(stores_t.c.id, stores_t.c.webhook_secret_sealed).where(stores_t.c.id == store_id)
        )
    ).one_or_none()
    return WebhookStore(row[0], row[1]) if row is not None else None


@dataclass(frozen=True)
class SyncTarget:
    """A store the reconciler can reach: its BTCPay and its sealed API key."""

    id: str
    btcpay_url: str
    api_key_sealed: str

    def __repr__(self) -> str:
        return f"SyncTarget(id={self.id!r}, btcpay_url={self.btcpay_url!r})"


async def sync_targets(conn: AsyncConnection, store_id: str | None = None) -> list[SyncTarget]:
    """Connected stores with a BTCPay URL and an API key (one, or all of them)."""
    query = (
        select(stores_t.c.id, stores_t.c.btcpay_url, stores_t.c.api_key_sealed)
        .where(stores_t.c.btcpay_url.is_not(None), stores_t.c.api_key_sealed.is_not(None))
        .order_by(stores_t.c.id)
    )
    if store_id is not None:
        query = query.where(stores_t.c.id == store_id)
    return [SyncTarget(r[0], r[1], r[2]) for r in (await conn.execute(query)).all()]


# --- reconcile bookkeeping ---------------------------------------------------------------------


async def sync_started(
    conn: AsyncConnection, store_id: str, *, now: datetime | None = None
) -> None:
    now = now or _now()
    stmt = dialect_insert(conn, sync_t).values(
        store_id=store_id, last_started_at=now, payouts_seen=0, payouts_changed=0
    )
    await conn.execute(
        stmt.on_conflict_do_update(index_elements=["store_id"], set_={"last_started_at": now})
    )


async def sync_succeeded(
    conn: AsyncConnection, store_id: str, *, seen: int, changed: int, now: datetime | None = None
) -> None:
    now = now or _now()
    values = {"last_success_at": now, "payouts_seen": seen, "payouts_changed": changed}
    stmt = dialect_insert(conn, sync_t).values(store_id=store_id, last_started_at=now, **values)
    await conn.execute(stmt.on_conflict_do_update(index_elements=["store_id"], set_=values))


async def sync_failed(
    conn: AsyncConnection, store_id: str, error: str, *, now: datetime | None = None
) -> None:
    now = now or _now()
    values = {"last_error_at": now, "last_error": error[:1000]}
    stmt = dialect_insert(conn, sync_t).values(
        store_id=store_id, last_started_at=now, payouts_seen=0, payouts_changed=0, **values
    )
    await conn.execute(stmt.on_conflict_do_update(index_elements=["store_id"], set_=values))


async def sync_state(conn: AsyncConnection, store_id: str) -> dict[str, Any] | None:
    row = (
        (await conn.execute(select(sync_t).where(sync_t.c.store_id == store_id)))
        .mappings()
        .one_or_none()
    )
    return dict(row) if row is not None else None


# --- what the ledger already knows, for cheap diffs ---------------------------------------------


@dataclass(frozen=True)
class KnownPayout:
    state: str
    destination: str | None
    payment_hash: str | None
    amount_sats: int | None
    original_amount: Decimal | None
    original_currency: str | None
    payout_amount: Decimal | None
    payout_currency: str | None
    payout_method_id: str | None
    transaction_id: str | None
    pull_payment_id: str | None


# The fields of a payout BTCPay may change: a view that differs from the ledger's in none of
# them has nothing to write (reconciling compares them before writing anything).
PAYOUT_FIELDS = (
    "state",
    "destination",
    "payment_hash",
    "amount_sats",
    "original_amount",
    "original_currency",
    "payout_amount",
    "payout_currency",
    "payout_method_id",
    "transaction_id",
    "pull_payment_id",
)
_KNOWN_COLUMNS = PAYOUT_FIELDS


async def known_payouts(conn: AsyncConnection, payout_ids: Sequence[str]) -> dict[str, KnownPayout]:
    """The ledger's current view of these payouts, by id (absent ones are left out)."""
    if not payout_ids:
        return {}
    columns = [payouts_t.c.id, *(payouts_t.c[name] for name in _KNOWN_COLUMNS)]
    rows = (
        await conn.execute(select(*columns).where(one_of(conn, payouts_t.c.id, payout_ids)))
    ).all()
    return {row[0]: KnownPayout(*row[1:]) for row in rows}


# --- webhook events, many in one statement ------------------------------------------------------


@dataclass(frozen=True)
class WebhookEvent:
    """One signed delivery, to be queued for enrichment."""

    store_id: str
    payout_id: str
    event_type: str
    state: str | None
    delivery_id: str
    payload: dict[str, Any]
    occurred_at: datetime | None


# The events inserted (a delivery id already in, or twice in the batch, is skipped), then the
# webhook_events counters raised by what was inserted, in sorted key order.
_WEBHOOK_EVENTS_SQL = """
WITH event AS (
    INSERT INTO payout_events (
        store_id, payout_id, source, event_type, state, delivery_id, payload, occurred_at,
        enrich_pending, enrich_attempts, received_at
    )
    SELECT r.store_id, r.payout_id, 'webhook', r.event_type, r.state, r.delivery_id,
        r.payload, r.occurred_at, true, 0, :received_at
    FROM ROWS FROM (
        json_to_recordset(CAST(:rows AS JSON)) AS (
            store_id TEXT, payout_id TEXT, event_type TEXT, state TEXT, delivery_id TEXT,
            payload JSON, occurred_at TIMESTAMPTZ
        )
    ) WITH ORDINALITY AS r(
        store_id, payout_id, event_type, state, delivery_id, payload, occurred_at, n
    )
    ORDER BY r.n
    ON CONFLICT (delivery_id) DO NOTHING
    RETURNING id, delivery_id, store_id, event_type
), counted AS (
    INSERT INTO counters (store_id, name, label, value)
    SELECT store_id, 'webhook_events', event_type, count(*) FROM event
    GROUP BY store_id, event_type
    ORDER BY store_id, event_type
    ON CONFLICT (store_id, name, label) DO UPDATE SET value = counters.value + excluded.value
)
SELECT id, delivery_id FROM event
"""

_webhook_events_stmt = text(_WEBHOOK_EVENTS_SQL).bindparams(
    bindparam("received_at", type_=UTCDateTime())
)


async def record_webhook_events(
    conn: AsyncConnection, events: Sequence[WebhookEvent], *, now: datetime | None = None
) -> list[int | None]:
    """Queue webhook deliveries for enrichment and count them: ``record_event`` for each.

    Returns, in order, each event's new id, or None for a delivery id already in the ledger
    (or earlier in ``events``). On PostgreSQL this is one statement whatever the number of
    events, so concurrent deliveries share one round trip and one commit.
    """
    now = now or _now()
    if conn.dialect.name != "postgresql":
        return [
            await record_event(
                conn,
                store_id=e.store_id,
                payout_id=e.payout_id,
                source="webhook",
                event_type=e.event_type,
                state=e.state,
                delivery_id=e.delivery_id,
                payload=e.payload,
                occurred_at=e.occurred_at,
                enrich_pending=True,
                now=now,
            )
            for e in events
        ]
    rows = [
        {
            "store_id": e.store_id,
            "payout_id": e.payout_id,
            "event_type": e.event_type,
            "state": e.state,
            "delivery_id": e.delivery_id,
            "payload": e.payload,
            "occurred_at": e.occurred_at.isoformat() if e.occurred_at else None,
            "n": n,
        }
        for n, e in enumerate(events)
    ]
    result = await conn.execute(
        _webhook_events_stmt, {"rows": json.dumps(rows), "received_at": now}
    )
    ids = {delivery_id: event_id for event_id, delivery_id in result.all()}
    found: list[int | None] = []
    for e in events:
        found.append(ids.pop(e.delivery_id, None))  # a repeat in the batch finds it taken
    return found
