"""The master key and the ledger: checking that a key opens a ledger, and rotating to a new one.

Every secret the ledger holds is sealed under the master key (``ledger.secretbox``) in one of
the columns of ``SEALED``, each bound to its row by a context. Rotating re-seals each of them
under a new key in one transaction: the old key then opens nothing in the ledger.

Keyed fingerprints (a card's UID hash, its K1 fingerprint, an opted-out store's payment-hash
fingerprints, the pseudonyms of BTCPay-issued cards) are lookup keys, not secrets, and cannot be
recomputed once the value they were made from is erased. So they keep the keys they were made
with: the first rotation stores the fingerprint keys of the first master key in
``key_material``, sealed under the new master key, and every later rotation carries them over.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.reports import sealing_context
from ledger.rollups import dialect_insert
from ledger.schema import Boltcard, KeyMaterial, ReportSchedule, Store
from ledger.secretbox import SecretBox, SecretBoxError
from lnurl_gateway.btcpay_proxy import issuer_k1_context, issuer_key_context
from lnurl_gateway.btcpay_stores import api_key_context, webhook_secret_context
from lnurl_gateway.registry import issuer_context, keys_context

# Every purpose the project makes fingerprints for (a test holds the code to this list).
FINGERPRINT_PURPOSES = (b"uid", b"k1", b"ph", b"btcpay-card")
FINGERPRINT_KEYS = "fingerprint-keys"
_FINGERPRINT_KEYS_CONTEXT = b"key_material:" + FINGERPRINT_KEYS.encode()


@dataclass(frozen=True)
class SealedColumn:
    """A column of sealed secrets, and how each value's context is made from its row."""

    what: str  # as the command reports it
    table: type
    column: str
    key: str  # the row's id column, which the context binds
    context: Callable[[str], bytes]


SEALED = (
    SealedColumn("card keys", Boltcard, "keys_sealed", "id", keys_context),
    SealedColumn("store issuer keys", Store, "issuer_key_sealed", "id", issuer_context),
    SealedColumn("BTCPay API keys", Store, "api_key_sealed", "id", api_key_context),
    SealedColumn("webhook secrets", Store, "webhook_secret_sealed", "id", webhook_secret_context),
    SealedColumn("BTCPay issuer keys", Store, "btcpay_issuer_key_sealed", "id", issuer_key_context),
    SealedColumn("BTCPay issuer K1s", Store, "btcpay_issuer_k1_sealed", "id", issuer_k1_context),
    SealedColumn(
        "report SMTP passwords",
        ReportSchedule,
        "smtp_password_sealed",
        "id",
        partial(sealing_context, column="smtp_password_sealed"),
    ),
    SealedColumn(
        "report webhook secrets",
        ReportSchedule,
        "webhook_secret_sealed",
        "id",
        partial(sealing_context, column="webhook_secret_sealed"),
    ),
)


class KeyMismatch(Exception):
    """The master key does not open what the ledger holds."""


async def ledger_box(box: SecretBox, engine: AsyncEngine) -> SecretBox:
    """``box`` as this ledger needs it: with the fingerprint keys it keeps, if it keeps any.

    Checks that the master key opens the ledger (its kept keys and one value of each sealed
    column), so that a wrong key stops a command at once instead of failing every tap.
    """
    async with engine.connect() as conn:
        box = await _with_kept_keys(conn, box)
        for sealed in SEALED:
            for key, token in await _sealed_rows(conn, sealed, limit=1):
                _open(box, sealed, key, token)
    return box


async def _with_kept_keys(conn: AsyncConnection, box: SecretBox) -> SecretBox:
    kept = (
        await conn.execute(select(KeyMaterial.sealed).where(KeyMaterial.name == FINGERPRINT_KEYS))
    ).scalar_one_or_none()
    if kept is None:
        return box
    try:
        raw = json.loads(box.open_text(kept, context=_FINGERPRINT_KEYS_CONTEXT))
    except SecretBoxError:
        raise KeyMismatch(
            "the master key does not open this ledger's keys (was it rotated to another key?)"
        ) from None
    return box.with_fingerprint_keys({k.encode(): bytes.fromhex(v) for k, v in raw.items()})


def _open(box: SecretBox, sealed: SealedColumn, key: str, token: str) -> bytes:
    try:
        return box.open(token, context=sealed.context(key))
    except SecretBoxError:
        raise KeyMismatch(
            f"the master key does not open the ledger's {sealed.what} (row {key}): "
            "it is not the key they were sealed with"
        ) from None


@dataclass(frozen=True)
class Checked:
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


async def check(engine: AsyncEngine, box: SecretBox) -> Checked:
    """Open every sealed value of the ledger with ``box``; KeyMismatch at the first that does
    not open."""
    counts: dict[str, int] = {}
    async with engine.connect() as conn:
        box = await _with_kept_keys(conn, box)
        for sealed in SEALED:
            rows = await _sealed_rows(conn, sealed)
            for key, token in rows:
                _open(box, sealed, key, token)
            counts[sealed.what] = len(rows)
    return Checked(counts)


async def rotate(engine: AsyncEngine, old: SecretBox, new_key: bytes) -> Checked:
    """Re-seal every secret of the ledger under ``new_key``, in one transaction; the counts.

    Fingerprints keep their keys (the old box's), which are stored sealed under the new key.
    Nothing is written unless every value opens with ``old``.
    """
    now = datetime.now(UTC)
    counts: dict[str, int] = {}
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # No card, store or report schedule is added or changed under the old key
            # meanwhile. (On SQLite
            # the first write below takes the database's write lock, to the same end.)
            await conn.execute(
                text("LOCK TABLE stores, boltcards, report_schedules IN EXCLUSIVE MODE")
            )
        old = await _with_kept_keys(conn, old)
        fingerprint_keys = {p: old.fingerprint_key(p) for p in FINGERPRINT_PURPOSES}
        new = SecretBox(new_key, fingerprint_keys=fingerprint_keys)
        kept = new.seal_text(
            json.dumps({p.decode(): k.hex() for p, k in fingerprint_keys.items()}),
            context=_FINGERPRINT_KEYS_CONTEXT,
        )
        stmt = dialect_insert(conn, KeyMaterial.__table__).values(
            name=FINGERPRINT_KEYS, sealed=kept, updated_at=now
        )
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["name"], set_={"sealed": kept, "updated_at": now}
            )
        )
        for sealed in SEALED:
            table = sealed.table.__table__
            rows = await _sealed_rows(conn, sealed)
            resealed = [
                {
                    "_key": key,
                    "_sealed": new.seal(
                        _open(old, sealed, key, token), context=sealed.context(key)
                    ),
                }
                for key, token in rows
            ]
            if resealed:
                await conn.execute(
                    update(table)
                    .where(table.c[sealed.key] == bindparam("_key"))
                    .values({sealed.column: bindparam("_sealed")}),
                    resealed,
                )
            counts[sealed.what] = len(rows)
    return Checked(counts)


async def _sealed_rows(
    conn: AsyncConnection, sealed: SealedColumn, *, limit: int | None = None
) -> list[tuple[str, str]]:
    """(row id, sealed value) of the column's rows that hold a value, by row id."""
    table = sealed.table.__table__
    rows = await conn.execute(
        select(table.c[sealed.key], table.c[sealed.column])
        .where(table.c[sealed.column].is_not(None))
        .order_by(table.c[sealed.key])
        .limit(limit)
    )
    return [(r[0], r[1]) for r in rows.all()]
