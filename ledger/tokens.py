"""Local API tokens for tools and Grafana: created once, stored only as a hash, revocable."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .schema import ApiToken
from .secretbox import hash_token, new_token

tokens_t = ApiToken.__table__

ROLES = ("viewer", "manager")


@dataclass(frozen=True)
class TokenInfo:
    id: str
    store_id: str
    role: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def _info(row) -> TokenInfo:  # type: ignore[no-untyped-def]
    return TokenInfo(**{f: row[f] for f in TokenInfo.__dataclass_fields__})


async def create_token(
    conn: AsyncConnection, store_id: str, role: str, label: str | None = None
) -> tuple[TokenInfo, str]:
    """A new token for one store; returns its record and the token text, shown only this once."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not store_id:
        raise ValueError("a token needs a store")
    token = new_token()
    now = datetime.now(UTC)
    row = {
        "id": secrets.token_hex(8),
        "store_id": store_id,
        "role": role,
        "label": label,
        "token_hash": hash_token(token),
        "created_at": now,
        "revoked_at": None,
        "last_used_at": None,
    }
    await conn.execute(tokens_t.insert().values(**row))
    return _info(row), token


async def list_tokens(conn: AsyncConnection, store_id: str | None = None) -> list[TokenInfo]:
    stmt = select(tokens_t).order_by(tokens_t.c.store_id, tokens_t.c.created_at, tokens_t.c.id)
    if store_id is not None:
        stmt = stmt.where(tokens_t.c.store_id == store_id)
    return [_info(r) for r in (await conn.execute(stmt)).mappings()]


async def revoke_token(conn: AsyncConnection, token_id: str) -> bool:
    """Revoke a live token; False when there is no such token or it was revoked already."""
    result = await conn.execute(
        update(tokens_t)
        .where(tokens_t.c.id == token_id, tokens_t.c.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    return result.rowcount == 1


async def lookup_token(conn: AsyncConnection, token: str) -> TokenInfo | None:
    """The live token with this text, or None (unknown or revoked)."""
    row = (
        (
            await conn.execute(
                select(tokens_t).where(
                    tokens_t.c.token_hash == hash_token(token), tokens_t.c.revoked_at.is_(None)
                )
            )
        )
        .mappings()
        .one_or_none()
    )
    return _info(row) if row is not None else None


async def touch_token(conn: AsyncConnection, token_id: str, at: datetime | None = None) -> None:
    """Record a use; callers do this at most now and then, it is bookkeeping only."""
    await conn.execute(
        update(tokens_t)
        .where(tokens_t.c.id == token_id)
        .values(last_used_at=at or datetime.now(UTC))
    )
