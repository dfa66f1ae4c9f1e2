"""Writing payouts and their audit trail: one transaction per fact, rollups included.

The rules that make BTCPay's unreliable delivery converge:
- a payout is keyed by BTCPay's payout id, and of two views of it the ledger keeps the one
  ``view_supersedes`` picks: by BTCPay's state machine and by when each view was read from
  BTCPay, never by BTCPay's ``revision`` (which does not move when the state does);
- a webhook delivery is recorded once, by BTCPay's (original) delivery id;
- a payout is linked to a card exactly once, whether the tap or the payout arrives first.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ARRAY, JSON, Table, any_, bindparam, cast, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from .rollups import (
    COMPLETION_BUCKETS,
    WIDEN_CARD_USE,
    RollupDeltas,
    bump_card_rollup,
    bump_counter,
    dialect_insert,
)
from .schema import Boltcard, CardDaySpend, CardTap, Payout, PayoutEvent
from .status import COMPLETED, FAILED, status_of

payouts_t = Payout.__table__
events_t = PayoutEvent.__table__
taps_t = CardTap.__table__
cards_t = Boltcard.__table__
spend_t = CardDaySpend.__table__


def utcnow() -> datetime:
    return datetime.now(UTC)


# BTCPay's state that no payout ever leaves.
FINAL_STATE = "Completed"


def view_supersedes(
    held_state: str, held_read_at: datetime | None, state: str, read_at: datetime
) -> bool:
    """Whether BTCPay's view of a payout (its ``state``, read from BTCPay at ``read_at``)
    replaces the view the ledger holds. The one ordering rule of every writer.

    BTCPay's ``revision`` cannot order two views: it stays where it was (0 for almost every
    payout) through approval, payment and cancelling. What can:

    - Completed is final: BTCPay refuses to mark or cancel a Completed payout. A Completed view
      replaces whatever the ledger holds, however late it arrives, and only a Completed view
      read later (a refresh of the same final view) replaces a Completed one.
    - Otherwise the view read from BTCPay later wins, whichever arrives last. So no view read
      earlier overwrites Cancelled either (BTCPay can reopen a Cancelled payout by marking it,
      which only a view read later can show), and between the states on the way the newer
      read wins: a stale InProgress from a slow fetch never undoes an AwaitingPayment read
      after it, and BTCPay's own step back (a failed payment retried) is kept.

    A view the ledger holds without a read time (written before this rule) is older than any.
    """
    later = held_read_at is None or read_at > held_read_at
    if held_state == FINAL_STATE:
        return state == FINAL_STATE and later
    return state == FINAL_STATE or later


@dataclass
class PayoutRecord:
    """BTCPay's view of one payout, already normalised from the 1.x or 2.x JSON shape.

    ``read_at`` is when the view was read from BTCPay: the writer sets the moment it asked
    (the claim, the payout fetch, the payout list), which orders the view against the others
    (``view_supersedes``). Left alone it is the moment the record was made.
    """

    id: str
    store_id: str
    state: str
    revision: int
    created_at: datetime
    pull_payment_id: str | None = None
    original_amount: Decimal | None = None
    original_currency: str | None = None
    payout_amount: Decimal | None = None
    payout_currency: str | None = None
    payout_method_id: str | None = None
    destination: str | None = None
    payment_hash: str | None = None
    # The value in whole satoshis when it is known (payout amount in BTC, or the invoice's).
    amount_sats: int | None = None
    transaction_id: str | None = None
    payment_proof: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    error_message: str | None = None
    read_at: datetime = field(default_factory=utcnow)

    @property
    def status(self) -> str:
        return status_of(self.state)

    def columns(self) -> dict[str, Any]:
        return {
            "store_id": self.store_id,
            "pull_payment_id": self.pull_payment_id,
            "revision": self.revision,
            "state": self.state,
            "status": self.status,
            "original_amount": self.original_amount,
            "original_currency": self.original_currency,
            "payout_amount": self.payout_amount,
            "payout_currency": self.payout_currency,
            "amount_sats": self.amount_sats,
            "payout_method_id": self.payout_method_id,
            "destination": self.destination,
            "payment_hash": self.payment_hash,
            "transaction_id": self.transaction_id,
            "payment_proof": self.payment_proof,
            "metadata": self.metadata,
            "error_message": self.error_message,
            "btcpay_read_at": self.read_at,
        }


@dataclass
class CardLink:
    card_id: str
    card_uid: str | None
    tap_id: int | None = None


@dataclass
class UpsertResult:
    payout_id: str
    created: bool
    changed: bool
    previous_status: str | None
    status: str
    linked: bool = False
    event_id: int | None = None
    notes: list[str] = field(default_factory=list)


# Columns compared to decide whether a view that supersedes the ledger's changes anything.
_COMPARED = (
    "state",
    "original_amount",
    "original_currency",
    "payout_amount",
    "payout_currency",
    "amount_sats",
    "payout_method_id",
    "destination",
    "payment_hash",
    "transaction_id",
    "payment_proof",
    "pull_payment_id",
)


def payment_hash_lock_key(payment_hash: str) -> int:
    """The advisory lock key of a payment hash (a signed 32-bit value)."""
    return zlib.crc32(payment_hash.encode()) - 2**31


async def lock_payment_hash(conn: AsyncConnection, payment_hash: str | None) -> None:
    """Serialise the two sides that may link a payment hash (tap and payout) on PostgreSQL.

    Without it, a payout inserted while its tap is being recorded could each miss the other's
    uncommitted row, and neither would link. SQLite writers are serialised already.
    """
    if payment_hash and conn.dialect.name == "postgresql":
        key = payment_hash_lock_key(payment_hash)
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


async def lock_payment_hashes(conn: AsyncConnection, hashes: Iterable[str | None]) -> None:
    """``lock_payment_hash`` for many hashes in one statement, in ascending key order (the
    order every batch uses, so two batches cannot each hold a lock the other waits for)."""
    if conn.dialect.name != "postgresql":
        return
    keys = sorted({payment_hash_lock_key(h) for h in hashes if h})
    if keys:
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k"),
            {"keys": keys},
        )


async def record_event(
    conn: AsyncConnection,
    *,
    store_id: str,
    payout_id: str,
    source: str,
    event_type: str,
    state: str | None = None,
    revision: int | None = None,
    delivery_id: str | None = None,
    payload: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
    enrich_pending: bool = False,
    now: datetime | None = None,
) -> int | None:
    """Add an audit-trail row. Returns its id, or None when this delivery id is already in.

    The once-per-delivery rule is the unique index on ``delivery_id``: concurrent deliveries
    of the same event race on one INSERT and only one wins.
    """
    now = now or utcnow()
    stmt = (
        dialect_insert(conn, events_t)
        .values(
            store_id=store_id,
            payout_id=payout_id,
            source=source,
            event_type=event_type,
            state=state,
            revision=revision,
            delivery_id=delivery_id,
            payload=payload,
            occurred_at=occurred_at,
            enrich_pending=enrich_pending,
            enrich_attempts=0,
            received_at=now,
        )
        .on_conflict_do_nothing(index_elements=["delivery_id"])
        .returning(events_t.c.id)
    )
    event_id = (await conn.execute(stmt)).scalar_one_or_none()
    if event_id is not None and source == "webhook":
        await bump_counter(conn, store_id, "webhook_events", event_type)
    return event_id


async def upsert_payout(
    conn: AsyncConnection,
    record: PayoutRecord,
    *,
    source: str,
    event_type: str | None = None,
    event_id: int | None = None,
    card: CardLink | None = None,
    now: datetime | None = None,
) -> UpsertResult:
    """Insert or update a payout from BTCPay's view of it, as ``view_supersedes`` orders views.

    Rollups and counters move in the same transaction. When the write changes the payout an
    audit row is written (or, with ``event_id``, the webhook's own row is completed).
    """
    now = now or utcnow()
    deltas = RollupDeltas()
    await lock_payment_hash(conn, record.payment_hash)
    values = record.columns()
    inserted = (
        await conn.execute(
            dialect_insert(conn, payouts_t)
            .values(
                id=record.id,
                created_at=record.created_at,
                updated_at=now,
                completed_at=now if record.status == COMPLETED else None,
                **values,
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(payouts_t.c.id)
        )
    ).scalar_one_or_none()

    if inserted is not None:
        result = UpsertResult(record.id, True, True, None, record.status)
        count_created(deltas, record, now)
    else:
        current = (
            (
                await conn.execute(
                    select(payouts_t).where(payouts_t.c.id == record.id).with_for_update()
                )
            )
            .mappings()
            .one()
        )
        result = UpsertResult(record.id, False, False, current["status"], current["status"])
        update_values, changed = _update_values(deltas, current, record, now)
        if update_values is not None:
            await conn.execute(
                update(payouts_t).where(payouts_t.c.id == record.id).values(**update_values)
            )
            result.changed = changed
            result.status = record.status

    if result.changed:
        if event_id is not None:
            await conn.execute(
                update(events_t)
                .where(events_t.c.id == event_id)
                .values(state=record.state, revision=record.revision)
            )
            result.event_id = event_id
        else:
            result.event_id = await record_event(
                conn,
                store_id=record.store_id,
                payout_id=record.id,
                source=source,
                event_type=event_type or ("PayoutCreated" if result.created else "PayoutUpdated"),
                state=record.state,
                revision=record.revision,
                now=now,
            )

    if card is not None:
        result.linked = await link_payout_to_card(conn, record.id, card, now=now)
    elif result.created and record.payment_hash:
        result.linked = await _link_from_tap(conn, record.id, record.payment_hash, now=now)
    if result.changed and result.status == FAILED:
        await release_reservations(conn, [record.id], now=now)
    await deltas.apply(conn)
    return result


def _update_values(
    deltas: RollupDeltas, current: Any, record: PayoutRecord, now: datetime
) -> tuple[dict[str, Any] | None, bool]:
    """The columns to write over the ledger's ``current`` row and whether they change the
    payout, counting the change in ``deltas``. (None, False) when the ledger's view stands;
    only the read time when BTCPay's view supersedes it but says the same, so that a view
    read in between cannot win later."""
    if not view_supersedes(
        current["state"], current["btcpay_read_at"], record.state, record.read_at
    ):
        return None, False
    values = record.columns()
    if not any(_differs(current[c], values[c]) for c in _COMPARED):
        return {"btcpay_read_at": record.read_at}, False
    _count_payout(deltas, _as_record(current), -1)
    _count_payout(deltas, record, +1)
    completed_at = current["completed_at"]
    if record.status == COMPLETED and completed_at is None:
        completed_at = now
    if current["status"] != record.status:
        _count_transition(
            deltas,
            record,
            current["status"],
            current["created_at"],
            now,
            already_completed=current["completed_at"] is not None,
        )
    del values["store_id"]
    return {
        **values,
        "created_at": current["created_at"],
        "completed_at": completed_at,
        "updated_at": now,
    }, True


def count_created(deltas: RollupDeltas, record: PayoutRecord, now: datetime) -> None:
    """The rollup and counter changes of a payout new to the ledger."""
    _count_payout(deltas, record, +1)
    deltas.counter(record.store_id, "payouts_created")
    deltas.counter(record.store_id, "sats_created", by=record.amount_sats or 0)
    if record.original_currency and record.original_amount is not None:
        deltas.counter(
            record.store_id,
            "original_amount_created",
            record.original_currency,
            by=record.original_amount,
        )
    _count_transition(deltas, record, None, record.created_at, now)


async def upsert_payouts(
    conn: AsyncConnection,
    records: Sequence[PayoutRecord],
    *,
    source: str,
    event_type: str | None = None,
    events: Mapping[str, tuple[str, int]] | None = None,
    links: Mapping[str, CardLink] | None = None,
    deltas: RollupDeltas | None = None,
    now: datetime | None = None,
) -> list[UpsertResult]:
    """``upsert_payout`` for many payouts in one transaction, in a handful of statements.

    The outcome is the one of calling ``upsert_payout`` for each record in turn: the same rows,
    audit rows, rollups and counters. ``events`` maps a payout id to the webhook event
    ``(event_type, event_id)`` whose row a change completes (the enrichment worker's case).
    ``links`` maps a payout id to the card that collected it (``upsert_payout``'s ``card``).
    With ``deltas`` the rollup and counter changes are added there for the caller to apply
    with changes of its own; otherwise they are applied here, last.
    Results come back in the order of ``records``.

    On PostgreSQL the gateway stores a payout new to the ledger with ``flash_record_claim``
    (migration 0003), which writes what this function writes for it: a change to what a new
    payout writes here must be made there too (in a new migration);
    ``tests/test_claim_record.py`` compares the two.

    Locks are taken in one order by every batch: payment hashes sorted, new payout ids sorted,
    existing rows sorted by id, and the rollup and counter rows sorted at the very end (see
    ``RollupDeltas``). Two batches therefore never wait on each other in a cycle.
    """
    now = now or utcnow()
    links = links or {}
    own_deltas = deltas is None
    deltas = deltas if deltas is not None else RollupDeltas()
    results: list[UpsertResult] = []
    for chunk in _distinct_runs(records):
        results.extend(
            await _upsert_distinct(
                conn,
                chunk,
                deltas,
                source=source,
                event_type=event_type,
                events=events,
                linked_elsewhere=links.keys(),
                now=now,
            )
        )
    if links:
        linked = await link_payouts_to_cards(conn, list(links.items()), now=now)
        for result in results:
            result.linked = result.linked or result.payout_id in linked
    failed = [r.payout_id for r in results if r.changed and r.status == FAILED]
    if failed:
        await release_reservations(conn, failed, now=now)
    if own_deltas:
        await deltas.apply(conn)
    return results


async def insert_rows(
    conn: AsyncConnection,
    table: Table,
    rows: list[dict[str, Any]],
    conflict: list[str] | None,
    returning: list[str],
    same: dict[str, Any] | None = None,
) -> list[tuple[Any, ...]]:
    """INSERT many rows (all with the same keys) in one statement, skipping those that
    conflict on ``conflict``; returns the ``returning`` columns of the rows inserted.
    ``same`` holds the columns whose value is the same in every row.

    On PostgreSQL the rows travel as one JSON document read by ``json_to_recordset``: the
    statement text is the same whatever the number of rows, so it is parsed and prepared once,
    and the one parameter is encoded by the json module's C encoder, where a multi-row VALUES
    list would be a new statement of thousands of parameters, each adapted on its own.
    """
    if not rows:
        return []
    same = same or {}
    if conn.dialect.name != "postgresql":
        stmt = dialect_insert(conn, table)
        if conflict is not None:
            stmt = stmt.on_conflict_do_nothing(index_elements=conflict)
        stmt = stmt.returning(*(table.c[n] for n in returning))
        result = await conn.execute(stmt, [{**row, **same} for row in rows])
        return [tuple(r) for r in result]
    columns = tuple((name, _pg_type_sql(table, name)) for name in rows[0])
    constants = tuple((name, _pg_type_sql(table, name)) for name in same)
    sql = _recordset_insert_sql(
        table.name, columns, constants, tuple(conflict or ()), tuple(returning)
    )
    params = {"rows": json.dumps(rows, default=_json_scalar, separators=(",", ":"))}
    for i, (name, kind) in enumerate(constants):
        value = same[name]
        params[f"same{i}"] = json.dumps(value) if kind == "JSON" else value
    return [tuple(r) for r in await conn.execute(text(sql), params)]


def _json_scalar(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} to the ledger")


@functools.lru_cache(maxsize=32)
def _recordset_insert_sql(
    table: str,
    columns: tuple[tuple[str, str], ...],
    constants: tuple[tuple[str, str], ...],
    conflict: tuple[str, ...],
    returning: tuple[str, ...],
) -> str:
    names = ", ".join(f'"{name}"' for name, _ in columns + constants)
    declared = ", ".join(f'"{name}" {kind}' for name, kind in columns)
    # json_to_recordset reads JSON's null as SQL's NULL; SQLAlchemy binds None to a JSON column
    # as JSON's null, and so must this.
    selected = ", ".join(
        [
            f"""COALESCE(r."{name}", CAST('null' AS JSON))""" if kind == "JSON" else f'r."{name}"'
            for name, kind in columns
        ]
        + [f"CAST(:same{i} AS {kind})" for i, (_, kind) in enumerate(constants)]
    )
    sql = (
        f'INSERT INTO "{table}" ({names}) SELECT {selected}'
        f" FROM json_to_recordset(CAST(:rows AS JSON)) AS r({declared})"
    )
    if conflict:
        sql += f" ON CONFLICT ({', '.join(conflict)}) DO NOTHING"
    return sql + f" RETURNING {', '.join(returning)}"


@functools.lru_cache(maxsize=256)
def _pg_type_sql(table: Table, name: str) -> str:
    column_type = table.c[name].type
    if isinstance(column_type, JSON):
        return "JSON"
    return str(column_type.compile(dialect=postgresql.dialect()))


def one_of(conn: AsyncConnection, column: Any, values: Sequence[Any]) -> Any:
    """``column IN values``. On PostgreSQL as ``= ANY(array)``: one parameter, so the statement
    text does not grow with the list (an expanded IN of 500 is a new statement to parse)."""
    if conn.dialect.name == "postgresql":
        return column == any_(cast(bindparam("one_of", list(values)), ARRAY(column.type)))
    return column.in_(list(values))


def _distinct_runs(records: Sequence[PayoutRecord]) -> list[list[PayoutRecord]]:
    """Consecutive runs in which no payout id repeats: a later fact about the same payout must
    see the earlier one written, as it would one call at a time."""
    runs: list[list[PayoutRecord]] = [[]]
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            runs.append([])
            seen = set()
        runs[-1].append(record)
        seen.add(record.id)
    return [run for run in runs if run]


async def _upsert_distinct(
    conn: AsyncConnection,
    records: list[PayoutRecord],
    deltas: RollupDeltas,
    *,
    source: str,
    event_type: str | None,
    events: Mapping[str, tuple[str, int]] | None,
    linked_elsewhere: Collection[str],
    now: datetime,
) -> list[UpsertResult]:
    await lock_payment_hashes(conn, [r.payment_hash for r in records])
    ordered = sorted(records, key=lambda r: r.id)
    new_rows = [
        {
            "id": r.id,
            "created_at": r.created_at,
            "updated_at": now,
            "completed_at": now if r.status == COMPLETED else None,
            **r.columns(),
        }
        for r in ordered
    ]
    inserted = {row[0] for row in await insert_rows(conn, payouts_t, new_rows, ["id"], ["id"])}
    existing = [r.id for r in ordered if r.id not in inserted]
    current: dict[str, Any] = {}
    if existing:
        rows = await conn.execute(
            select(payouts_t)
            .where(one_of(conn, payouts_t.c.id, existing))
            .order_by(payouts_t.c.id)
            .with_for_update()
        )
        current = {row["id"]: row for row in rows.mappings()}

    results: dict[str, UpsertResult] = {}
    updates: list[dict[str, Any]] = []
    touches: list[dict[str, Any]] = []
    for record in records:
        if record.id in inserted:
            results[record.id] = UpsertResult(record.id, True, True, None, record.status)
            count_created(deltas, record, now)
            continue
        row = current[record.id]
        result = UpsertResult(record.id, False, False, row["status"], row["status"])
        results[record.id] = result
        values, changed = _update_values(deltas, row, record, now)
        if values is None:
            continue
        rows = updates if changed else touches
        rows.append({"_id": record.id, **{f"_{k}": v for k, v in values.items()}})
        if changed:
            result.changed, result.status = True, record.status
    for rows in (updates, touches):
        if not rows:
            continue
        columns = [k[1:] for k in rows[0] if k != "_id"]
        await conn.execute(
            update(payouts_t)
            .where(payouts_t.c.id == bindparam("_id"))
            .values({n: bindparam(f"_{n}", type_=payouts_t.c[n].type) for n in columns}),
            sorted(rows, key=lambda u: u["_id"]),
        )

    await _audit_changes(conn, records, results, deltas, source, event_type, events or {}, now)
    waiting = [r for r in records if r.id not in linked_elsewhere]
    await _link_new_payouts_to_taps(conn, waiting, results, now)
    return [results[r.id] for r in records]


async def _audit_changes(
    conn: AsyncConnection,
    records: list[PayoutRecord],
    results: dict[str, UpsertResult],
    deltas: RollupDeltas,
    source: str,
    event_type: str | None,
    events: Mapping[str, tuple[str, int]],
    now: datetime,
) -> None:
    """The audit rows of the changed payouts: the webhook's own row completed, or a new row."""
    completing: list[dict[str, Any]] = []
    new_rows: list[dict[str, Any]] = []
    for record in records:
        result = results[record.id]
        if not result.changed:
            continue
        if record.id in events:
            result.event_id = events[record.id][1]
            completing.append(
                {"_id": result.event_id, "_state": record.state, "_revision": record.revision}
            )
            continue
        kind = event_type or ("PayoutCreated" if result.created else "PayoutUpdated")
        new_rows.append(
            {
                "store_id": record.store_id,
                "payout_id": record.id,
                "event_type": kind,
                "state": record.state,
                "revision": record.revision,
            }
        )
        if source == "webhook":
            deltas.counter(record.store_id, "webhook_events", kind)
    if completing:
        await conn.execute(
            update(events_t)
            .where(events_t.c.id == bindparam("_id"))
            .values(state=bindparam("_state"), revision=bindparam("_revision")),
            completing,
        )
    if new_rows:
        # As ``record_event`` writes an audit row.
        same = {
            "source": source,
            "delivery_id": None,
            "payload": None,
            "occurred_at": None,
            "enrich_pending": False,
            "enrich_attempts": 0,
            "received_at": now,
        }
        returned = await insert_rows(conn, events_t, new_rows, None, ["id", "payout_id"], same)
        for event_id, payout_id in returned:
            results[payout_id].event_id = event_id


async def _link_new_payouts_to_taps(
    conn: AsyncConnection,
    records: list[PayoutRecord],
    results: dict[str, UpsertResult],
    now: datetime,
) -> None:
    """Link new payouts to a tap already waiting with their payment hash, as one at a time
    would. One query finds whether any tap waits at all (usually none, in a batch)."""
    hashes = {r.payment_hash for r in records if results[r.id].created and r.payment_hash}
    if not hashes:
        return
    waiting = set(
        (
            await conn.execute(
                select(taps_t.c.payment_hash)
                .where(
                    one_of(conn, taps_t.c.payment_hash, sorted(hashes)),
                    taps_t.c.card_id.is_not(None),
                    taps_t.c.payout_id.is_(None),
                )
                .distinct()
            )
        ).scalars()
    )
    for record in records:
        if results[record.id].created and record.payment_hash in waiting:
            results[record.id].linked = await _link_from_tap(
                conn, record.id, record.payment_hash, now=now
            )


async def link_payout_to_card(
    conn: AsyncConnection, payout_id: str, card: CardLink, *, now: datetime | None = None
) -> bool:
    """Attach a payout to the card that collected it, once. Returns whether this call linked it.

    The conditional UPDATE is the exactly-once rule: whichever side arrives second finds
    ``card_id`` set and changes nothing.
    """
    now = now or utcnow()
    row = (
        await conn.execute(
            update(payouts_t)
            .where(payouts_t.c.id == payout_id, payouts_t.c.card_id.is_(None))
            .values(
                card_id=card.card_id, card_uid=card.card_uid, tap_id=card.tap_id, updated_at=now
            )
            .returning(payouts_t.c.store_id, payouts_t.c.created_at, payouts_t.c.amount_sats)
        )
    ).one_or_none()
    if row is None:
        return False
    store_id, created_at, amount_sats = row
    await bump_card_rollup(
        conn,
        card_id=card.card_id,
        store_id=store_id,
        at=created_at,
        payouts=1,
        amount_sats=amount_sats or 0,
    )
    await conn.execute(
        update(cards_t)
        .where(cards_t.c.id == card.card_id)
        .values(last_payout_at=created_at)
        .where((cards_t.c.last_payout_at.is_(None)) | (cards_t.c.last_payout_at < created_at))
    )
    if card.tap_id is not None:
        await conn.execute(
            update(taps_t)
            .where(taps_t.c.id == card.tap_id, taps_t.c.payout_id.is_(None))
            .values(payout_id=payout_id, updated_at=now)
        )
    await record_event(
        conn,
        store_id=store_id,
        payout_id=payout_id,
        source="gateway",
        event_type="CardLinked",
        payload={"cardId": card.card_id},
        now=now,
    )
    return True


async def link_payouts_to_cards(
    conn: AsyncConnection,
    links: Sequence[tuple[str, CardLink]],
    *,
    now: datetime | None = None,
) -> set[str]:
    """``link_payout_to_card`` for many payouts; returns the ids this call linked.

    On PostgreSQL it takes five statements whatever the number of links, each reading its rows
    from one JSON parameter. The card rows are written before the card rollups, the order the
    tap step takes them in.
    """
    now = now or utcnow()
    if conn.dialect.name != "postgresql":
        linked = set()
        for payout_id, card in links:
            if await link_payout_to_card(conn, payout_id, card, now=now):
                linked.add(payout_id)
        return linked
    if not links:
        return set()
    rows = [
        {"payout_id": p, "card_id": c.card_id, "card_uid": c.card_uid, "tap_id": c.tap_id}
        for p, c in sorted(links, key=lambda link: link[0])
    ]
    done = (
        await conn.execute(text(_LINK_PAYOUTS_SQL), {"rows": json_rows(rows), "now": now})
    ).all()
    if not done:
        return set()
    last_payout: dict[str, datetime] = {}
    days: dict[tuple[str, date], list[Any]] = {}
    for _, store_id, created_at, amount_sats, card_id, _ in done:
        created_at = created_at.astimezone(UTC)
        last_payout[card_id] = max(last_payout.get(card_id, created_at), created_at)
        key = (card_id, created_at.date())
        day = days.setdefault(key, [store_id, 0, 0, created_at, created_at])
        day[1] += 1
        day[2] += amount_sats or 0
        day[3], day[4] = min(day[3], created_at), max(day[4], created_at)
    cards = [{"card_id": c, "at": at} for c, at in sorted(last_payout.items())]
    await conn.execute(text(_LAST_PAYOUT_SQL), {"rows": json_rows(cards)})
    rollups = [
        {"card_id": c, "day": d, "store_id": v[0], "payouts": v[1], "amount_sats": v[2],
         "first_at": v[3], "last_at": v[4]}
        for (c, d), v in sorted(days.items())
    ]  # fmt: skip
    await conn.execute(text(_CARD_ROLLUPS_SQL), {"rows": json_rows(rollups)})
    taps = [{"tap_id": r[5], "payout_id": r[0]} for r in done if r[5] is not None]
    if taps:
        await conn.execute(text(_TAP_PAYOUT_SQL), {"rows": json_rows(taps), "now": now})
    events = [
        {"store_id": r[1], "payout_id": r[0], "payload": {"cardId": r[4]}}
        for r in sorted(done, key=lambda r: r[0])
    ]
    same = {
        "source": "gateway",
        "event_type": "CardLinked",
        "state": None,
        "revision": None,
        "delivery_id": None,
        "occurred_at": None,
        "enrich_pending": False,
        "enrich_attempts": 0,
        "received_at": now,
    }
    await insert_rows(conn, events_t, events, None, ["id"], same)
    return {r[0] for r in done}


def json_rows(rows: Any) -> str:
    """Rows as one JSON parameter, read on the server with json_to_recordset and the like."""
    return json.dumps(rows, default=_json_scalar, separators=(",", ":"))


_LINK_PAYOUTS_SQL = """
UPDATE payouts AS p
   SET card_id = v.card_id, card_uid = v.card_uid, tap_id = v.tap_id, updated_at = :now
  FROM json_to_recordset(CAST(:rows AS JSON))
       AS v(payout_id text, card_id text, card_uid text, tap_id bigint)
 WHERE p.id = v.payout_id AND p.card_id IS NULL
RETURNING p.id, p.store_id, p.created_at, p.amount_sats, v.card_id, v.tap_id
"""
_LAST_PAYOUT_SQL = """
UPDATE boltcards AS b SET last_payout_at = v.at
  FROM json_to_recordset(CAST(:rows AS JSON)) AS v(card_id text, at timestamptz)
 WHERE b.id = v.card_id AND (b.last_payout_at IS NULL OR b.last_payout_at < v.at)
"""
_CARD_ROLLUPS_SQL = f"""
INSERT INTO card_rollups (card_id, day, store_id, payouts, amount_sats, taps, refused_taps,
                          first_used_at, last_used_at)
SELECT v.card_id, v.day, v.store_id, v.payouts, v.amount_sats, 0, 0, v.first_at, v.last_at
  FROM json_to_recordset(CAST(:rows AS JSON))
       AS v(card_id text, day date, store_id text, payouts integer, amount_sats bigint,
            first_at timestamptz, last_at timestamptz)
 ORDER BY v.card_id, v.day
ON CONFLICT (card_id, day) DO UPDATE SET
       payouts = card_rollups.payouts + excluded.payouts,
       amount_sats = card_rollups.amount_sats + excluded.amount_sats,
       {WIDEN_CARD_USE}
"""
_TAP_PAYOUT_SQL = """
UPDATE card_taps AS t SET payout_id = v.payout_id, updated_at = :now
  FROM json_to_recordset(CAST(:rows AS JSON)) AS v(tap_id bigint, payout_id text)
 WHERE t.id = v.tap_id AND t.payout_id IS NULL
"""


async def release_reservations(
    conn: AsyncConnection, payout_ids: Sequence[str], *, now: datetime | None = None
) -> int:
    """Give back the day-limit reservations of the taps whose payouts failed; returns how many.

    A tap keeps ``reserved_day`` while its amount counts against the card's day; releasing
    clears it in the same statement that finds it, so a reservation is given back once
    however often its payout is reported failed.
    """
    if not payout_ids:
        return 0
    now = now or utcnow()
    released = (
        await conn.execute(
            select(taps_t.c.id, taps_t.c.card_id, taps_t.c.reserved_day, taps_t.c.amount_msat)
            .where(
                one_of(conn, taps_t.c.payout_id, sorted(set(payout_ids))),
                taps_t.c.reserved_day.is_not(None),
                taps_t.c.card_id.is_not(None),
                taps_t.c.amount_msat.is_not(None),
            )
            .order_by(taps_t.c.id)
            .with_for_update()
        )
    ).all()
    if not released:
        return 0
    await conn.execute(
        update(taps_t)
        .where(one_of(conn, taps_t.c.id, [row.id for row in released]))
        .values(reserved_day=None, updated_at=now)
    )
    totals: dict[tuple[str, date], int] = {}
    for _, card_id, day, amount_msat in released:
        totals[(card_id, day)] = totals.get((card_id, day), 0) + int(amount_msat)
    for (card_id, day), amount_msat in sorted(totals.items()):
        await conn.execute(
            update(spend_t)
            .where(spend_t.c.card_id == card_id, spend_t.c.day == day)
            .values(reserved_msat=spend_t.c.reserved_msat - amount_msat)
        )
    return len(released)


async def link_tap_to_payout(
    conn: AsyncConnection, tap_id: int, payment_hash: str, *, now: datetime | None = None
) -> bool:
    """From the tap's side: link the payout with this payment hash if it has arrived already.

    Call inside the transaction that records the tap's payment hash.
    """
    await lock_payment_hash(conn, payment_hash)
    tap = (
        await conn.execute(select(taps_t.c.card_id, taps_t.c.uid).where(taps_t.c.id == tap_id))
    ).one_or_none()
    if tap is None or tap.card_id is None:
        return False
    payout_id = (
        await conn.execute(
            select(payouts_t.c.id)
            .where(payouts_t.c.payment_hash == payment_hash, payouts_t.c.card_id.is_(None))
            .order_by(payouts_t.c.created_at.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if payout_id is None:
        return False
    return await link_payout_to_card(
        conn, payout_id, CardLink(tap.card_id, tap.uid, tap_id), now=now
    )


async def _link_from_tap(
    conn: AsyncConnection, payout_id: str, payment_hash: str, *, now: datetime
) -> bool:
    tap = (
        await conn.execute(
            select(taps_t.c.id, taps_t.c.card_id, taps_t.c.uid)
            .where(
                taps_t.c.payment_hash == payment_hash,
                taps_t.c.card_id.is_not(None),
                taps_t.c.payout_id.is_(None),
            )
            .order_by(taps_t.c.id.desc())
            .limit(1)
        )
    ).one_or_none()
    if tap is None:
        return False
    return await link_payout_to_card(
        conn, payout_id, CardLink(tap.card_id, tap.uid, tap.id), now=now
    )


def _differs(old: Any, new: Any) -> bool:
    if isinstance(old, Decimal) or isinstance(new, Decimal):
        if old is None or new is None:
            return old is not new
        return Decimal(old) != Decimal(new)
    return old != new


def _as_record(row: Any) -> PayoutRecord:
    return PayoutRecord(
        id=row["id"],
        store_id=row["store_id"],
        state=row["state"],
        revision=row["revision"],
        created_at=row["created_at"],
        original_amount=row["original_amount"],
        original_currency=row["original_currency"],
        payout_currency=row["payout_currency"],
        amount_sats=row["amount_sats"],
    )


def _count_payout(deltas: RollupDeltas, record: PayoutRecord, sign: int) -> None:
    deltas.payout_rollup(
        store_id=record.store_id,
        day=record.created_at.date(),
        status=record.status,
        currency=record.original_currency or record.payout_currency or "",
        count=sign,
        amount=sign * (record.original_amount or Decimal(0)),
        amount_sats=sign * (record.amount_sats or 0),
    )


def _count_transition(
    deltas: RollupDeltas,
    record: PayoutRecord,
    previous: str | None,
    created_at: datetime,
    now: datetime,
    *,
    already_completed: bool = False,
) -> None:
    """Monotonic counters for a payout reaching Completed or Failed."""
    if record.status == COMPLETED and not already_completed:
        deltas.counter(record.store_id, "payouts_completed")
        deltas.counter(record.store_id, "sats_completed", by=record.amount_sats or 0)
        if previous is not None:
            seconds = max(0.0, (now - created_at).total_seconds())
            for bound in COMPLETION_BUCKETS:
                if seconds <= bound:
                    deltas.counter(record.store_id, "completion_seconds_bucket", _le(bound))
            deltas.counter(record.store_id, "completion_seconds_bucket", "+Inf")
            deltas.counter(record.store_id, "completion_seconds_sum", by=Decimal(str(seconds)))
            deltas.counter(record.store_id, "completion_seconds_count")
    elif record.status == FAILED and previous != FAILED:
        deltas.counter(record.store_id, "payouts_failed")


def _le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)
