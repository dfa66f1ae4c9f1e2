"""The gateway in front of BTCPay Server's ``/boltcard``, for cards BTCPay issued itself.

BTCPay records nothing linking a payout to the card that collected it. Standing in front of its
``/boltcard`` endpoint, the gateway sees each tap and its callback on the way through:

1. tap: p is read with the store's BTCPay issuer K1 (UID and counter, before knowing the card);
   the card id is BTCPay's own (PRF(IssuerKey, 2d003f7b || UID)) when the issuer key is known,
   else a keyed pseudonym of the UID; the request goes to BTCPay with p and c unchanged, the tap
   is recorded (a counter not above the last one seen is a replay, forwarded all the same), and
   the ``callback`` of BTCPay's answer is rewritten to the gateway;
2. callback: the wallet's invoice and its payment hash are recorded on the tap (linking the
   payout if it is already in the ledger), the call goes on to BTCPay's own callback, and
   BTCPay's answer is relayed unchanged.

The rewritten callback carries a token sealed with the master key (the tap id, BTCPay's own
callback URL and an expiry), so it cannot be guessed or altered and needs no table of its own.
A tap no configured issuer can read is forwarded untouched and counted as ``unidentified``.
When BTCPay does not answer in time the wallet gets a LUD-03 error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from Crypto.Cipher import AES
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from yarl import URL

from ledger import btcpay_cards
from ledger.btcpay_cards import (
    BTCPAY_ERROR,
    BTCPAY_REFUSED,
    CALLBACK_ERROR,
    CALLBACK_OK,
    CALLBACK_REFUSED,
    UNIDENTIFIED,
    BtcpayIssuer,
)
from ledger.db import in_transaction
from ledger.rollups import bump_counter
from ledger.secretbox import SecretBox, SecretBoxError
from ledger.taps import ACCEPTED

from .boltcard import (
    C_LEN,
    KEY_LEN,
    P_LEN,
    PICC_DATA_TAG,
    BadParam,
    card_id,
    issuer_k1,
    parse_hex_param,
)
from .invoices import InvoiceError, decode_invoice

log = logging.getLogger("lnurl_gateway.btcpay_proxy")

CALLBACK_PATH = "/boltcard/btcpay-callback"
_TOKEN_CONTEXT = b"btcpay-proxy-callback"
_MAX_ANSWER = 64 * 1024
# Tries at a transaction that PostgreSQL aborted to break a deadlock (ledger.db.in_transaction).
_ATTEMPTS = 4
T = TypeVar("T")


def issuer_key_context(store_id: str) -> bytes:
    return b"stores.btcpay_issuer_key_sealed:" + store_id.encode()


def issuer_k1_context(store_id: str) -> bytes:
    return b"stores.btcpay_issuer_k1_sealed:" + store_id.encode()


def seal_issuer_key(box: SecretBox, store_id: str, issuer_key: bytes) -> str:
    return box.seal(issuer_key, context=issuer_key_context(store_id))


def seal_issuer_k1(box: SecretBox, store_id: str, k1: bytes) -> str:
    return box.seal(k1, context=issuer_k1_context(store_id))


def uid_hash(box: SecretBox, uid: bytes) -> str:
    # Same purpose as the card registry's, so a UID is found the same way whoever issued it.
    return box.fingerprint(uid, purpose=b"uid")


def k1_fingerprint(box: SecretBox, k1: bytes) -> str:
    return box.fingerprint(k1, purpose=b"k1")


def pseudonym(box: SecretBox, k1: bytes, uid: bytes) -> str:
    """A stable card id when only K1 is known: keyed, so the UID cannot be read back from it."""
    return box.fingerprint(k1 + uid, purpose=b"btcpay-card")[:32]


@dataclass
class BtcpayProxyConfig:
    public_url: str  # where wallets reach the gateway; the rewritten callbacks start with it
    # BTCPay Server base URL whose /boltcard the gateway stands in front of. Unset: the store's
    # own btcpay_url (and, for unidentified taps, the one URL all connected stores share).
    upstream_url: str | None = None
    tap_timeout: float = 5.0  # seconds for BTCPay's answer to a tap
    # BTCPay waits about 10 s for the Lightning payment before answering the callback.
    callback_timeout: float = 20.0
    callback_ttl: float = 300.0  # seconds a rewritten callback stays usable
    issuer_cache_seconds: float = 5.0  # how long configured issuer keys are kept in memory

    def __post_init__(self) -> None:
        self.public_url = self.public_url.rstrip("/")
        if self.upstream_url:
            self.upstream_url = self.upstream_url.rstrip("/")


@dataclass(frozen=True)
class _Issuer:
    store_id: str
    btcpay_url: str | None
    card_tracking: bool
    issuer_key: bytes | None = field(repr=False)
    k1: bytes = field(repr=False)
    k1_fingerprint: str


@dataclass(frozen=True)
class _Reading:
    """What p told about a tap under one issuer's K1."""

    issuer: _Issuer
    uid: bytes
    counter: int
    card_id: str


class BtcpayProxy:
    def __init__(
        self,
        engine: AsyncEngine,
        box: SecretBox,
        config: BtcpayProxyConfig,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.engine = engine
        self.box = box
        self.config = config
        self._session = session
        self._own_session = session is None
        self._issuers: list[_Issuer] = []
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the BTCPay proxy was not started")
        return self._session

    # --- issuers ----------------------------------------------------------------------------

    async def issuers(self) -> list[_Issuer]:
        """Configured issuers with their keys opened, reloaded every few seconds."""
        if time.monotonic() - self._loaded_at < self.config.issuer_cache_seconds:
            return self._issuers
        async with self._lock:
            if time.monotonic() - self._loaded_at >= self.config.issuer_cache_seconds:
                async with self.engine.connect() as conn:
                    rows = await btcpay_cards.btcpay_issuers(conn)
                self._issuers = [i for i in map(self._open, rows) if i is not None]
                self._loaded_at = time.monotonic()
        return self._issuers

    def _open(self, row: BtcpayIssuer) -> _Issuer | None:
        try:
            key = None
            if row.issuer_key_sealed is not None:
                key = self.box.open(row.issuer_key_sealed, context=issuer_key_context(row.store_id))
                k1 = issuer_k1(key)
            else:
                assert row.k1_sealed is not None
                k1 = self.box.open(row.k1_sealed, context=issuer_k1_context(row.store_id))
        except (SecretBoxError, ValueError):
            log.error("store %s: BTCPay issuer key cannot be opened with this key", row.store_id)
            return None
        if len(k1) != KEY_LEN or (key is not None and len(key) != KEY_LEN):
            log.error("store %s: BTCPay issuer key has the wrong length", row.store_id)
            return None
        return _Issuer(
            row.store_id, row.btcpay_url, row.card_tracking, key, k1, k1_fingerprint(self.box, k1)
        )

    async def read(self, p: bytes) -> _Reading | None:
        """The issuer whose K1 reads p, preferring one that already knows the card.

        A wrong K1 still yields the 0xC7 tag once in 256 tries, so several stores can match.
        """
        readings: list[_Reading] = []
        for issuer in await self.issuers():
            plain = AES.new(issuer.k1, AES.MODE_ECB).decrypt(p)
            if plain[0] != PICC_DATA_TAG:
                continue
            uid, counter = plain[1:8], int.from_bytes(plain[8:11], "little")
            if issuer.issuer_key is not None:
                ident = card_id(issuer.issuer_key, uid)
            else:
                ident = pseudonym(self.box, issuer.k1, uid)
            readings.append(_Reading(issuer, uid, counter, ident))
        if len(readings) > 1:
            async with self.engine.connect() as conn:
                for reading in readings:
                    if await btcpay_cards.card_store(conn, reading.card_id) is not None:
                        return reading
        return readings[0] if readings else None

    async def _upstream(self, issuer: _Issuer | None) -> str | None:
        if self.config.upstream_url:
            return self.config.upstream_url
        if issuer is not None and issuer.btcpay_url:
            return issuer.btcpay_url.rstrip("/")
        async with self.engine.connect() as conn:
            urls = await btcpay_cards.btcpay_urls(conn)
        # Without a store to go by, only an unambiguous BTCPay can take the tap.
        return urls[0].rstrip("/") if len(urls) == 1 else None

    # --- the tap ----------------------------------------------------------------------------

    async def handle_tap(self, request: web.Request, p_hex: str, c_hex: str) -> web.Response:
        try:
            return await self._tap(request, p_hex, c_hex)
        except SQLAlchemyError as exc:
            log.error("ledger unavailable for a BTCPay card tap: %s", type(exc).__name__)
            return lnurl_error("The service is temporarily unavailable; try again")

    async def _tap(self, request: web.Request, p_hex: str, c_hex: str) -> web.Response:
        try:
            p = parse_hex_param(p_hex, P_LEN, "p")
            parse_hex_param(c_hex, C_LEN, "c")
        except BadParam as exc:
            await self._count_tap(None, "bad_param")
            return lnurl_error(str(exc))
        reading = await self.read(p)
        upstream = await self._upstream(reading.issuer if reading else None)
        if upstream is None:
            outcome = BTCPAY_ERROR if reading is not None else UNIDENTIFIED
            await self._record(request, reading, outcome, "no BTCPay Server to forward to")
            return lnurl_error("This card is not known here")
        query = request.query_string or f"p={p_hex}&c={c_hex}"
        target = URL(upstream + "/boltcard?" + query, encoded=True)
        try:
            status, content_type, body = await self._get(target, self.config.tap_timeout)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("BTCPay did not answer a tap: %s", type(exc).__name__)
            await self._record(request, reading, BTCPAY_ERROR, "BTCPay unreachable")
            return lnurl_error("The card's server did not answer in time; try again")
        answer = _json_object(body)
        if reading is None:
            # Not ours to read: BTCPay's answer goes back as it came, callback included.
            await self._record(request, None, UNIDENTIFIED, None)
            return web.Response(status=status, body=body, content_type=content_type)
        if answer is None:
            await self._record(request, reading, BTCPAY_ERROR, f"BTCPay answered HTTP {status}")
            return lnurl_error("The card's server answered with an error; try again")
        if answer.get("tag") != "withdrawRequest" or not isinstance(answer.get("callback"), str):
            reason = answer.get("reason") if isinstance(answer.get("reason"), str) else None
            await self._record(request, reading, BTCPAY_REFUSED, reason or f"HTTP {status}")
            return web.Response(status=status, body=body, content_type=content_type)
        tap = await self._record(request, reading, ACCEPTED, None)
        if tap is None:
            # Card tracking is off for the store: pass the answer through unchanged.
            return web.Response(status=status, body=body, content_type=content_type)
        answer["callback"] = self._callback_url(tap, answer["callback"])
        return web.json_response(answer, status=status)

    async def _get(self, url: URL, timeout: float) -> tuple[int, str, bytes]:
        async with asyncio.timeout(timeout):
            async with self.session.get(
                url, allow_redirects=False, headers={"Accept": "application/json"}
            ) as response:
                body = await response.content.read(_MAX_ANSWER)
                return response.status, response.content_type, body

    async def _record(
        self, request: web.Request, reading: _Reading | None, outcome: str, reason: str | None
    ) -> int | None:
        """Write the tap; returns its id when it may be linked to a payout (card known)."""
        tracked = reading is not None and reading.issuer.card_tracking

        async def work(conn: AsyncConnection) -> tuple[btcpay_cards.ProxyTap, str | None]:
            store_id = reading.issuer.store_id if reading else None
            card = uid = None
            if reading is not None and tracked:
                store_id = await btcpay_cards.ensure_card(
                    conn,
                    card_id=reading.card_id,
                    store_id=reading.issuer.store_id,
                    uid=reading.uid.hex(),
                    uid_hash=uid_hash(self.box, reading.uid),
                    k1_fingerprint=reading.issuer.k1_fingerprint,
                )
                card, uid = reading.card_id, reading.uid.hex()
            tap = await btcpay_cards.record_proxy_tap(
                conn,
                store_id=store_id,
                card_id=card,
                uid=uid,
                counter=reading.counter if reading is not None else None,
                btcpay_outcome=outcome,
                reason=reason[:200] if reason else None,
                remote_addr=request.remote,
                user_agent=request.headers.get("User-Agent"),
            )
            return tap, card

        tap, card = await self._transaction(work)
        store_id = tap.store_id
        if tap.outcome not in (ACCEPTED, UNIDENTIFIED):
            log.info("BTCPay card tap %s (store %s)", tap.outcome, store_id or "-")
        return tap.id if card is not None else None

    async def _count_tap(self, store_id: str | None, outcome: str) -> None:
        async def work(conn: AsyncConnection) -> None:
            await bump_counter(conn, store_id, "taps", outcome)

        await self._transaction(work)

    async def _transaction(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` in one transaction, again when PostgreSQL broke a deadlock with it.

        A tap's writes (card, tap, counters, the card's rollup) and a payout's link (rollup,
        card) meet on the same rows in opposite orders; the loser of such a race is rerun.
        """
        return await in_transaction(self.engine, work, attempts=_ATTEMPTS)

    def _callback_url(self, tap_id: int, btcpay_callback: str) -> str:
        document = {
            "t": tap_id,
            "cb": btcpay_callback,
            "x": int(time.time() + self.config.callback_ttl),
        }
        token = self.box.seal_text(json.dumps(document), context=_TOKEN_CONTEXT)
        return str(URL(self.config.public_url + CALLBACK_PATH).with_query(t=token))

    # --- the callback -----------------------------------------------------------------------

    async def handle_callback(self, request: web.Request) -> web.Response:
        try:
            return await self._callback(request)
        except SQLAlchemyError as exc:
            log.error("ledger unavailable for a BTCPay card callback: %s", type(exc).__name__)
            return lnurl_error("The service is temporarily unavailable; try again")

    async def _callback(self, request: web.Request) -> web.Response:
        document = self._open_token(request.query.get("t", ""))
        if document is None:
            return lnurl_error("Unknown or expired withdrawal; tap the card again")
        tap_id, btcpay_callback = document
        pr = request.query.get("pr", "")
        if pr:
            try:
                invoice = decode_invoice(pr)
            except InvoiceError:
                invoice = None  # BTCPay will refuse it with its own reason
            if invoice is not None:
                found = invoice

                async def work(conn: AsyncConnection) -> bool:
                    return await btcpay_cards.record_callback_invoice(
                        conn,
                        tap_id,
                        bolt11=found.payment_request,
                        payment_hash=found.payment_hash,
                        amount_msat=found.amount_msat,
                    )

                await self._transaction(work)
        params = [(k, v) for k, v in request.query.items() if k != "t"]
        try:
            target = URL(btcpay_callback).extend_query(params)
            status, content_type, body = await self._get(target, self.config.callback_timeout)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            log.warning("BTCPay did not answer a callback: %s", type(exc).__name__)
            await self._count_callback(tap_id, CALLBACK_ERROR)
            return lnurl_error("The card's server did not answer in time; try again")
        answer = _json_object(body)
        ok = answer is not None and answer.get("status") == "OK"
        await self._count_callback(tap_id, CALLBACK_OK if ok else CALLBACK_REFUSED)
        return web.Response(status=status, body=body, content_type=content_type)

    def _open_token(self, token: str) -> tuple[int, str] | None:
        try:
            document = json.loads(self.box.open_text(token, context=_TOKEN_CONTEXT))
        except (SecretBoxError, ValueError, UnicodeDecodeError):
            return None
        if not isinstance(document, dict):
            return None
        tap_id, callback, expires = document.get("t"), document.get("cb"), document.get("x")
        if not isinstance(tap_id, int) or not isinstance(callback, str):
            return None
        if not isinstance(expires, int) or expires < time.time():
            return None
        return tap_id, callback

    async def _count_callback(self, tap_id: int, outcome: str) -> None:
        async def work(conn: AsyncConnection) -> None:
            store_id = await btcpay_cards.tap_store(conn, tap_id)
            await btcpay_cards.count_callback(conn, store_id, outcome)

        await self._transaction(work)


def lnurl_error(reason: str) -> web.Response:
    """LUD-03: every refusal is HTTP 200 with status ERROR and a readable reason."""
    return web.json_response({"status": "ERROR", "reason": reason})


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


PROXY = web.AppKey("btcpay_proxy", BtcpayProxy)


def setup_btcpay_proxy(
    app: web.Application,
    *,
    engine: AsyncEngine,
    box: SecretBox,
    config: BtcpayProxyConfig,
    session: aiohttp.ClientSession | None = None,
) -> BtcpayProxy:
    """Mount the callback route and keep the proxy on the app for ``handle_unmanaged_tap``."""
    proxy = BtcpayProxy(engine, box, config, session)
    app[PROXY] = proxy

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await proxy.start()
        yield
        await proxy.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get(CALLBACK_PATH, proxy.handle_callback)
    return proxy


def proxy_configured(app: web.Application) -> bool:
    """Whether taps the gateway cannot read itself should go on to BTCPay."""
    return PROXY in app


async def btcpay_reads(app: web.Application, p: bytes) -> bool:
    """Whether the K1 of a BTCPay issuer the proxy knows reads ``p``."""
    return await app[PROXY].read(p) is not None


async def handle_unmanaged_tap(request: web.Request, p_hex: str, c_hex: str) -> web.Response:
    """A tap for a card the gateway does not manage: read it if BTCPay issued it, forward it."""
    return await request.app[PROXY].handle_tap(request, p_hex, c_hex)


async def _tap_route(request: web.Request) -> web.Response:
    p_hex, c_hex = request.query.get("p"), request.query.get("c")
    if p_hex is None or c_hex is None:
        # BTCPay also takes k1=p-c (its own callback form).
        p_hex, _, c_hex = (request.query.get("k1") or "").partition("-")
    return await handle_unmanaged_tap(request, p_hex or "", c_hex or "")


def create_app(
    *,
    engine: AsyncEngine,
    box: SecretBox,
    config: BtcpayProxyConfig,
    session: aiohttp.ClientSession | None = None,
) -> web.Application:
    """A gateway for BTCPay-issued cards only: every ``/boltcard`` tap goes through the proxy."""
    app = web.Application()
    setup_btcpay_proxy(app, engine=engine, box=box, config=config, session=session)
    app.router.add_get("/boltcard", _tap_route)
    return app
