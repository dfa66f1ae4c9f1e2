"""What the handlers share: the app's typed keys, the config, and store resolution."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .auth import Authenticator, Credential, Need
from .errors import bad_parameter
from .params import text
from .ratelimit import RateLimiter
from .reading import RequestReader

PREFIX = "/plugins/flash/api"


@dataclass(frozen=True)
class ApiConfig:
    rate: float = 20.0  # requests per second per credential (0 turns limiting off)
    burst: int = 60
    btcpay_timeout: float = 10.0
    default_btcpay_url: str | None = None  # for stores the ledger holds no BTCPay URL for
    auth_cache_seconds: float = 30.0
    events_poll_interval: float = 1.0
    events_heartbeat: float = 15.0
    export_batch: int = 1000


ENGINE = web.AppKey("api_engine", AsyncEngine)  # read-only on SQLite
WRITER = web.AppKey("api_writer", AsyncEngine)
READS = web.AppKey("api_reads", AsyncEngine)  # ENGINE for per-request reads (see reading)
CONFIG = web.AppKey("api_config", ApiConfig)
AUTH = web.AppKey("api_auth", Authenticator)
LIMITER = web.AppKey("api_limiter", RateLimiter)
STOPPING = web.AppKey("api_stopping", asyncio.Event)
CREDENTIAL = web.RequestKey("flash_credential", Credential)
READER = web.RequestKey("flash_reader", RequestReader)


def credential(request: web.Request) -> Credential:
    return request[CREDENTIAL]


async def reader(request: web.Request) -> AsyncConnection:
    """The request's read connection, shared with the credential check (see ``reading``)."""
    return await request[READER].connection()


async def authorize(request: web.Request, store_id: str, need: Need = "view") -> None:
    await request.app[AUTH].authorize(credential(request), store_id, need, request[READER])


async def scoped_store(request: web.Request, need: Need = "view") -> str:
    """The store asked for (``storeId``, or the local token's own store), once authorised.

    A BTCPay key must name the store: omitting ``storeId`` never widens what a caller sees.
    """
    cred = credential(request)
    store_id = text(request.query, "storeId") or cred.store_id
    if store_id is None:
        raise bad_parameter("storeId", "is required with a BTCPay API key")
    await authorize(request, store_id, need)
    return store_id
