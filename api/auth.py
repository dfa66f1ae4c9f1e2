"""Who is calling, and may they see or manage this store?

Two kinds of credential:
- a local token (``Authorization: Bearer ...`` or ``token ...``), made by
  ``flash-payouts tokens create``, bound to one store with the role viewer or manager;
- a BTCPay Greenfield API key (``Authorization: token ...``), asked of the store's own BTCPay
  Server through ``GET /api/v1/api-keys/current``; viewing needs ``btcpay.store.canviewpayouts``
  for the store and managing ``btcpay.store.canmanagepayouts`` (or a policy implying them).
BTCPay's answers are cached for a short while, so a busy dashboard does not hammer BTCPay.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.stores import get_store
from ledger.tokens import TokenInfo, lookup_token, touch_token

from .errors import ApiError, forbidden, unauthorized
from .reading import RequestReader

log = logging.getLogger("api.auth")

Need = Literal["view", "manage"]

CAN_VIEW_PAYOUTS = "btcpay.store.canviewpayouts"
CAN_MANAGE_PAYOUTS = "btcpay.store.canmanagepayouts"
_POLICY = {"view": CAN_VIEW_PAYOUTS, "manage": CAN_MANAGE_PAYOUTS}
# BTCPay's implications that reach the two payout policies.
_IMPLIES = {
    "btcpay.store.canmodifystoresettings": (
        "btcpay.store.canviewstoresettings",
        CAN_MANAGE_PAYOUTS,
    ),
    "btcpay.store.canviewstoresettings": (CAN_VIEW_PAYOUTS,),
    CAN_MANAGE_PAYOUTS: (CAN_VIEW_PAYOUTS,),
}
_UNRESTRICTED = "unrestricted"
# A payout id that cannot exist: asking for it tells whether the key reaches the store at all.
_PROBE_PAYOUT = "flash-access-probe"
_TOUCH_EVERY = 60.0


def implied(policy: str) -> set[str]:
    found = {policy}
    for child in _IMPLIES.get(policy, ()):
        found |= implied(child)
    return found


def grants(permissions: list[str], policy: str, store_id: str) -> Literal["store", "all", None]:
    """Whether the permissions give ``policy`` on this store by name ("store"), only through an
    unscoped grant covering every store of the key's owner ("all"), or not at all."""
    best: Literal["store", "all", None] = None
    for text in permissions:
        name, _, scope = text.partition(":")
        if name == _UNRESTRICTED or policy in implied(name):
            if scope == store_id:
                return "store"
            if not scope:
                best = "all"
    return best


@dataclass(frozen=True)
class Credential:
    kind: Literal["token", "btcpay"]
    fingerprint: str  # SHA-256 of the secret: the rate limit and cache key, safe to keep
    secret: str = field(repr=False)
    token: TokenInfo | None = None

    @property
    def store_id(self) -> str | None:
        """The one store a local token is bound to; None for BTCPay keys."""
        return self.token.store_id if self.token else None


def credential_text(header: str | None) -> tuple[str, str] | None:
    """(scheme, secret) from an Authorization header, or None when it is absent or malformed."""
    if not header:
        return None
    scheme, _, secret = header.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() not in ("bearer", "token") or not secret or len(secret) > 512:
        return None
    return scheme.lower(), secret


def fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class Authenticator:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        timeout: float = 10.0,
        cache_seconds: float = 30.0,
        default_btcpay_url: str | None = None,
    ) -> None:
        self.engine = engine
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.default_btcpay_url = (default_btcpay_url or "").rstrip("/") or None
        self.session: aiohttp.ClientSession | None = None
        self._cache: dict[tuple[str, ...], tuple[float, object]] = {}
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}
        self._touched: dict[str, float] = {}

    async def identify(self, header: str | None, reader: RequestReader | None = None) -> Credential:
        """The caller's credential; 401 when there is none or a local token is unknown.

        ``reader`` is the request's own connection, which the handler then reuses."""
        parsed = credential_text(header)
        if parsed is None:
            raise unauthorized(
                "send Authorization: Bearer <local token> or Authorization: token <BTCPay API key>"
            )
        scheme, secret = parsed
        if reader is not None:
            token = await lookup_token(await reader.connection(), secret)
        else:
            async with self.engine.connect() as conn:
                token = await lookup_token(conn, secret)
        if token is not None:
            await self._touch(token)
            return Credential("token", fingerprint(secret), secret, token)
        if scheme == "bearer":
            raise unauthorized("unknown or revoked token")
        return Credential("btcpay", fingerprint(secret), secret)

    async def authorize(
        self, cred: Credential, store_id: str, need: Need, reader: RequestReader | None = None
    ) -> None:
        """Return when ``cred`` may ``need`` this store's data; raise 401/403/502 otherwise."""
        if cred.token is not None:
            if cred.token.store_id != store_id:
                raise forbidden(f"this token is for another store, not {store_id}")
            if need == "manage" and cred.token.role != "manager":
                raise forbidden("this token may only view; managing needs a manager token")
            return
        url = await self._btcpay_url(store_id, reader)
        permissions = await self._permissions(url, cred)
        policy = _POLICY[need]
        reach = grants(permissions, policy, store_id)
        if reach is None:
            raise forbidden(f"the BTCPay API key lacks {policy} for store {store_id}")
        # An unscoped grant covers the stores of the key's owner only: ask BTCPay whether this
        # is one of them.
        if reach == "all" and not await self._reaches_store(url, cred, store_id):
            raise forbidden(f"the BTCPay API key has no access to store {store_id}")

    async def _btcpay_url(self, store_id: str, reader: RequestReader | None) -> str:
        if reader is not None:
            store = await get_store(await reader.connection(), store_id)
        else:
            async with self.engine.connect() as conn:
                store = await get_store(conn, store_id)
        url = (store.btcpay_url if store and store.btcpay_url else None) or self.default_btcpay_url
        if not url:
            raise forbidden(f"store {store_id} is not connected to a BTCPay Server")
        return url.rstrip("/")

    async def _permissions(self, url: str, cred: Credential) -> list[str]:
        async def ask() -> object:
            status, body = await self._get(url + "/api/v1/api-keys/current", cred)
            if status in (401, 403):
                return None
            if status != 200 or not isinstance(body, dict):
                raise ApiError(502, "btcpay-unavailable", f"BTCPay answered {status}")
            perms = body.get("permissions")
            return [p for p in perms if isinstance(p, str)] if isinstance(perms, list) else []

        found = await self._cached(("key", url, cred.fingerprint), ask)
        if found is None:
            raise unauthorized("the BTCPay API key was refused by the store's BTCPay Server")
        assert isinstance(found, list)
        return found

    async def _reaches_store(self, url: str, cred: Credential, store_id: str) -> bool:
        async def ask() -> object:
            path = f"/api/v1/stores/{quote(store_id, safe='')}/payouts/{_PROBE_PAYOUT}"
            status, _ = await self._get(url + path, cred)
            if status in (200, 404):
                return True
            if status in (401, 403):
                return False
            raise ApiError(502, "btcpay-unavailable", f"BTCPay answered {status}")

        return bool(await self._cached(("store", url, cred.fingerprint, store_id), ask))

    async def _cached(self, key: tuple[str, ...], ask) -> object:  # type: ignore[no-untyped-def]
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        # One question to BTCPay per key at a time, however many requests arrive together.
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
            value = await ask()
            if len(self._cache) > 10_000:
                self._cache.clear()
                self._locks.clear()
            self._cache[key] = (time.monotonic() + self.cache_seconds, value)
            return value

    async def _get(self, url: str, cred: Credential) -> tuple[int, object]:
        if self.session is None:
            raise ApiError(503, "unavailable", "the API is starting or stopping")
        try:
            async with self.session.get(
                url,
                headers={"Authorization": f"token {cred.secret}", "Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as resp:
                body: object = None
                if resp.content_type == "application/json":
                    try:
                        body = await resp.json()
                    except ValueError:
                        body = None
                return resp.status, body
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("BTCPay unreachable for a key check: %s", type(exc).__name__)
            raise ApiError(
                502, "btcpay-unavailable", "the store's BTCPay Server cannot be reached"
            ) from None

    async def _touch(self, token: TokenInfo) -> None:
        now = time.monotonic()
        if now - self._touched.get(token.id, -_TOUCH_EVERY) < _TOUCH_EVERY:
            return
        self._touched[token.id] = now
        try:
            async with self.engine.begin() as conn:
                await touch_token(conn, token.id)
        except Exception as exc:  # bookkeeping only: a busy ledger must not fail the request
            log.debug("could not record token use: %s", type(exc).__name__)
