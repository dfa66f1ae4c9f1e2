"""Each store's own read-only database role, restricted to its rows by row-level security.

Migration g15_0001 makes the tables' policies and the ``flash_store_readers`` group; here a
store gets a login role in that group and its line in ``store_readers``, which is what the
policies read. The role's password reaches PostgreSQL as a SCRAM-SHA-256 verifier, never as
text, so no statement log can show it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from .schema import Store, StoreReader

READERS_GROUP = "flash_store_readers"
ROLE_PREFIX = "flash_store_"
_PLAIN_ID = re.compile(r"^[A-Za-z0-9_-]{1,50}$")
SCRAM_ITERATIONS = 4096
READER_WORK_MEM = "32MB"

stores_t = Store.__table__
readers_t = StoreReader.__table__


class ReadersUnavailable(Exception):
    """The database cannot give stores roles of their own; the message says why."""


@dataclass(frozen=True)
class StoreRole:
    store_id: str
    name: str  # the store's name in BTCPay
    role: str
    created_at: datetime


def role_name(store_id: str) -> str:
    """The store's role: its id after a prefix, or a digest of an id no role name can hold."""
    if _PLAIN_ID.match(store_id):
        return ROLE_PREFIX + store_id
    return ROLE_PREFIX + hashlib.sha256(store_id.encode()).hexdigest()[:24]


def new_password() -> str:
    return secrets.token_urlsafe(32)


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """What PostgreSQL stores for ``password`` (RFC 5802/7677), in its own notation."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


async def check_available(conn: AsyncConnection) -> None:
    if conn.dialect.name != "postgresql":
        raise ReadersUnavailable("per-store roles need the ledger on PostgreSQL")
    group = await conn.execute(
        text("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = :g)"), {"g": READERS_GROUP}
    )
    if not group.scalar_one():
        raise ReadersUnavailable(
            "the ledger has no per-store roles: they need PostgreSQL 15 or later and "
            "`flash-payouts migrate`"
        )


async def ensure_store_role(conn: AsyncConnection, store_id: str, password: str) -> str:
    """Create or update the store's login role with ``password``; returns the role's name.

    Run it in one transaction: the role, its membership and its ``store_readers`` line come
    into being together."""
    role = role_name(store_id)
    quoted = conn.dialect.identifier_preparer.quote(role)
    verifier = scram_verifier(password)
    exists = await conn.execute(
        text("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = :r)"), {"r": role}
    )
    # Utility statements take no parameters; the verifier is base64 and '$', never a quote.
    verb = "ALTER" if exists.scalar_one() else "CREATE"
    await conn.exec_driver_sql(f"{verb} ROLE {quoted} LOGIN PASSWORD '{verifier}'")
    await conn.exec_driver_sql(f"ALTER ROLE {quoted} SET default_transaction_read_only = on")
    # As for flash_grafana (migration g15_0001): grouping a period by card stays in memory.
    await conn.exec_driver_sql(f"ALTER ROLE {quoted} SET work_mem = '{READER_WORK_MEM}'")
    await conn.exec_driver_sql(f"GRANT {READERS_GROUP} TO {quoted}")
    mapped = await conn.execute(select(readers_t.c.store_id).where(readers_t.c.role_name == role))
    if mapped.scalar_one_or_none() is None:
        await conn.execute(
            readers_t.insert().values(
                role_name=role, store_id=store_id, created_at=datetime.now(UTC)
            )
        )
    return role


async def store_roles(conn: AsyncConnection) -> list[StoreRole]:
    """Every store that has its role, oldest store first (the order of their organisations)."""
    rows = await conn.execute(
        select(stores_t.c.id, stores_t.c.name, readers_t.c.role_name, stores_t.c.created_at)
        .select_from(stores_t.join(readers_t, readers_t.c.store_id == stores_t.c.id))
        .order_by(stores_t.c.created_at, stores_t.c.id)
    )
    return [StoreRole(sid, name or sid, role, created) for sid, name, role, created in rows]


async def store_ids(conn: AsyncConnection) -> list[str]:
    rows = await conn.execute(select(stores_t.c.id).order_by(stores_t.c.created_at, stores_t.c.id))
    return list(rows.scalars())
