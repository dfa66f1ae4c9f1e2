"""Opening what every command shares: the ledger engine and the secret box, with one-line errors."""

from __future__ import annotations

import asyncio

from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import migrate
from ledger.db import create_engine, parse_database_url
from ledger.secretbox import SecretBox

from .keys import KeyMismatch, ledger_box
from .settings import ConfigError, Settings


def describe_url(url: str) -> str:
    """The database URL without its password, for messages."""
    return parse_database_url(url).render_as_string(hide_password=True)


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


async def open_ledger(settings: Settings, *, require_head: bool = True) -> AsyncEngine:
    """An engine on the ledger, checked reachable (and migrated); ConfigError otherwise."""
    engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
    where = describe_url(settings.database_url)
    try:
        current = await asyncio.wait_for(_current_revision(engine), 10)
    except TimeoutError:
        await engine.dispose()
        raise ConfigError(f"database {where} did not answer within 10 s") from None
    except (OSError, DBAPIError, OperationalError) as exc:
        await engine.dispose()
        raise ConfigError(f"cannot reach database {where}: {_reason(exc)}") from None
    if require_head:
        script = ScriptDirectory.from_config(migrate.alembic_config(settings.database_url))
        heads = set(script.get_heads())
        if current != heads:
            await engine.dispose()
            state = "empty" if not current else f"at revision {', '.join(sorted(current))}"
            raise ConfigError(
                f"database {where} is {state}, not at {', '.join(sorted(heads))}: "
                "run `flash-payouts migrate`"
            )
    return engine


async def _current_revision(engine: AsyncEngine) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync_conn: set(MigrationContext.configure(sync_conn).get_current_heads())
        )


def secret_box(settings: Settings) -> SecretBox:
    """The box sealing card keys and webhook secrets; ConfigError without a usable key."""
    try:
        return SecretBox.from_text(settings.master_key_text())
    except ValueError as exc:
        raise ConfigError(f"master key unusable: {exc}") from None


async def ledger_secret_box(box: SecretBox, engine: AsyncEngine) -> SecretBox:
    """``box`` checked against the ledger and with the fingerprint keys the ledger keeps
    (``flash_payouts.keys``); ConfigError when the master key does not open the ledger."""
    try:
        return await ledger_box(box, engine)
    except KeyMismatch as exc:
        raise ConfigError(str(exc)) from None
