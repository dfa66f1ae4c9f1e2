"""BTCPay Server's own Boltcard support: registration on a pull payment and the tap endpoint.

As in BTCPay Server 2.x:

- one issuer key for the whole server; every card shares K1 = PRF(IssuerKey, 2d003f77), its id
  is PRF(IssuerKey, 2d003f7b || UID) and its other keys come from a card key bound to the pull
  payment: CardKey = PRF(IssuerKey, 2d003f75 || UID || version LE32 || utf8(pullPaymentId));
- ``POST /api/v1/pull-payments/{ppId}/boltcards`` (anonymous: the pull payment id is the
  secret) registers a UID, version 0 for a new card and the next version on ``UpdateVersion``,
  and answers ``{LNURLW, version, K0..K4}``;
- ``GET /boltcard?p&c`` (or ``k1=p-c``) reads p with K1, checks the registration, the counter
  (strictly above the stored one) and c, then answers the pull payment's LNURL-withdraw with the
  same URL as callback. The tap itself never moves the stored counter. With ``pr`` (the
  callback) BTCPay stores the new counter first, in the same statement that checks it and
  before c is checked or anything is claimed: a callback BTCPay then refuses has used up its
  tap. The checks that the pull payment auto-approves claims and that the store's payout
  processor pays instantly come at the callback too, then the claim (with the invoice's amount,
  and no BOLT11Expiration check: that is Greenfield's), then a wait of up to ``payment_wait``
  seconds for the payment.

Refusals are HTTP 400 with ``{"status": "ERROR", "reason"}``, BTCPay's shape. The card crypto
is written out here, not taken from the gateway, so that the gateway's is checked against a
second reading of the spec; of the project, the package takes only the gateway's faster
BOLT11 decoding (see ``invoices``) and the event loop the services run on.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from aiohttp import web
from Crypto.Cipher import AES
from Crypto.Hash import CMAC

from . import money
from .errors import APIError, ValidationFailed
from .invoices import InvalidInvoice, read_invoice
from .models import CANCELLED, COMPLETED, LIGHTNING, PayoutEvent, PullPayment
from .sim import SIMULATOR, Simulator

_TAG_CARD_KEY = bytes.fromhex("2d003f75")
_TAG_K0 = bytes.fromhex("2d003f76")
_TAG_K1 = bytes.fromhex("2d003f77")
_TAG_K2 = bytes.fromhex("2d003f78")
_TAG_K3 = bytes.fromhex("2d003f79")
_TAG_K4 = bytes.fromhex("2d003f7a")
_TAG_ID = bytes.fromhex("2d003f7b")
_SV2_PREFIX = bytes.fromhex("3cc300010080")
_HEX = re.compile(r"^[0-9a-fA-F]*$")

UPDATE_VERSION = "UpdateVersion"
KEEP_VERSION = "KeepVersion"
DEFAULT_PAYMENT_WAIT = 10.0  # BTCPay waits about this long for the Lightning payment


def _cmac(key: bytes, message: bytes) -> bytes:
    return CMAC.new(key, msg=message, ciphermod=AES).digest()


def sun_mac(k2: bytes, uid: bytes, counter: int) -> bytes:
    session_key = _cmac(k2, _SV2_PREFIX + uid + counter.to_bytes(3, "little"))
    return _cmac(session_key, b"")[1::2]


@dataclass(frozen=True, slots=True)
class CardKeys:
    k0: bytes
    k1: bytes
    k2: bytes
    k3: bytes
    k4: bytes


class IssuerKey:
    """The server's issuer key and what BTCPay derives from it."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 16:
            raise ValueError("the issuer key must be 16 bytes")
        self.key = key
        self.k1 = _cmac(key, _TAG_K1)

    def card_id(self, uid: bytes) -> str:
        return _cmac(self.key, _TAG_ID + uid).hex()

    def card_keys(self, uid: bytes, version: int, pull_payment_id: str) -> CardKeys:
        message = _TAG_CARD_KEY + uid + version.to_bytes(4, "little")
        card_key = _cmac(self.key, message + pull_payment_id.encode("utf-8"))
        return CardKeys(
            k0=_cmac(card_key, _TAG_K0),
            k1=self.k1,
            k2=_cmac(card_key, _TAG_K2),
            k3=_cmac(card_key, _TAG_K3),
            k4=_cmac(card_key, _TAG_K4),
        )

    def decrypt(self, p: bytes) -> tuple[bytes, int] | None:
        """(UID, counter) from p, or None when p is not PICC data under this K1."""
        plain = AES.new(self.k1, AES.MODE_ECB).decrypt(p)
        if plain[0] != 0xC7:
            return None
        return plain[1:8], int.from_bytes(plain[8:11], "little")

    def encrypt(self, uid: bytes, counter: int) -> bytes:
        plain = b"\xc7" + uid + counter.to_bytes(3, "little") + os.urandom(5)
        return AES.new(self.k1, AES.MODE_ECB).encrypt(plain)


@dataclass(slots=True)
class Registration:
    """A row of BTCPay's ``boltcards`` table, plus the simulated card's own read counter."""

    id: str
    uid: bytes
    pull_payment_id: str
    version: int
    counter: int = 0  # last counter BTCPay accepted with a claim
    card_counter: int = 0  # last counter the simulated card wrote (for /_sim taps)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uid": self.uid.hex(),
            "pullPaymentId": self.pull_payment_id,
            "version": self.version,
            "counter": self.counter,
        }


class TapRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BoltcardService:
    def __init__(self, simulator: Simulator, issuer_key: bytes | None = None) -> None:
        self.sim = simulator
        self.issuer = IssuerKey(issuer_key or os.urandom(16))
        self.cards: dict[str, Registration] = {}
        self.payment_wait = DEFAULT_PAYMENT_WAIT
        self.counters: dict[str, int] = {}
        self._waiters: dict[str, asyncio.Future[str]] = {}
        simulator.book.listeners.append(self._on_event)

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # --- registration ----------------------------------------------------------------------

    def register(self, pull_payment_id: str, uid: bytes, on_existing: str) -> Registration:
        card_id = self.issuer.card_id(uid)
        existing = self.cards.get(card_id)
        if existing is None:
            card = Registration(card_id, uid, pull_payment_id, version=0)
            self.cards[card_id] = card
            return card
        if on_existing == UPDATE_VERSION:
            # New keys, so the old keys' MACs no longer verify; the stored counter stays, as
            # BTCPay's UPDATE leaves it (and the chip's own counter goes on counting).
            existing.version += 1
        existing.pull_payment_id = pull_payment_id
        return existing

    # --- taps ------------------------------------------------------------------------------

    def read_tap(
        self, p_hex: str, c_hex: str, *, update_counter: bool
    ) -> tuple[Registration, PullPayment, int]:
        """The registration, its pull payment and the tap's counter, or TapRefused.

        ``update_counter`` (the callback) stores the counter as BTCPay's conditional UPDATE
        does, before c is checked: the order of UIBoltcardController.GetWithdrawRequest.
        """
        p, c = _hex(p_hex, 16), _hex(c_hex, 8)
        if p is None or c is None:
            raise TapRefused("Invalid PICCData")
        picc = self.issuer.decrypt(p)
        if picc is None:
            raise TapRefused("Invalid PICCData")
        uid, counter = picc
        card = self.cards.get(self.issuer.card_id(uid))
        if card is None or counter <= card.counter:
            raise TapRefused("Replayed or expired query")
        if update_counter:
            card.counter = counter
        keys = self.issuer.card_keys(card.uid, card.version, card.pull_payment_id)
        if not hmac.compare_digest(sun_mac(keys.k2, uid, counter), c):
            raise TapRefused("Replayed or expired query")
        pull_payment = self.sim.state.pull_payments.get(card.pull_payment_id)
        if pull_payment is None:
            raise TapRefused("Pull payment not found")
        return card, pull_payment, counter

    def withdraw_request(self, pull_payment: PullPayment, callback: str, k1: str) -> dict:
        max_msat = self._remaining_msat(pull_payment)
        return {
            "tag": "withdrawRequest",
            "callback": callback,
            "k1": k1,
            "minWithdrawable": min(1000, max_msat),
            "maxWithdrawable": max_msat,
            "defaultDescription": pull_payment.name,
            "balanceCheck": callback,
            "currentBalance": max_msat,
        }

    def _remaining_msat(self, pull_payment: PullPayment) -> int:
        remaining = max(Decimal(0), pull_payment.amount - pull_payment.claimed)
        return int(money.to_msat(remaining, pull_payment.currency))

    async def claim(self, pull_payment: PullPayment, pr: str) -> dict:
        """The callback's claim, as BTCPay's pull-payment LNURL-withdraw makes it."""
        try:
            invoice = read_invoice(pr)
        except InvalidInvoice:
            invoice = None
        if invoice is None or invoice.network != self.sim.config.network:
            raise TapRefused("Payment request was not a valid BOLT11")
        max_msat = self._remaining_msat(pull_payment)
        min_msat = min(1000, max_msat)
        if invoice.amount_msat is None or not min_msat <= invoice.amount_msat <= max_msat:
            raise TapRefused(
                f"Payment request was not within bounds ({min_msat // 1000} - "
                f"{max_msat // 1000} sats)"
            )
        if not pull_payment.auto_approve_claims or not self.sim.config.auto_progress:
            raise TapRefused(
                "This pull payment must auto-approve claims and the store needs a Lightning "
                "payout processor paying instantly"
            )
        amount = money.from_msat(invoice.amount_msat, pull_payment.currency)
        try:
            payout = self.sim.book.create(pull_payment, invoice, pr, amount, LIGHTNING)
        except (APIError, ValidationFailed) as exc:
            raise TapRefused("Payment request could not be paid") from exc
        self.count("claims")
        state = await self._wait_for_payment(payout.id, payout.state)
        if state == COMPLETED:
            return {"status": "OK"}
        if state == CANCELLED:
            raise TapRefused("Payment request could not be paid")
        return {"status": "OK", "reason": "The payment is in progress"}

    async def _wait_for_payment(self, payout_id: str, state: str) -> str:
        if state in (COMPLETED, CANCELLED) or self.payment_wait <= 0:
            return state
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters[payout_id] = future
        try:
            return await asyncio.wait_for(future, self.payment_wait)
        except TimeoutError:
            return state
        finally:
            self._waiters.pop(payout_id, None)

    def _on_event(self, event: PayoutEvent) -> None:
        future = self._waiters.get(event.payout_id)
        if (
            future is not None
            and not future.done()
            and event.payout_state
            in (
                COMPLETED,
                CANCELLED,
            )
        ):
            future.set_result(event.payout_state)

    def card_tap(self, card_id: str, base_url: str) -> dict[str, Any]:
        """The next URL a registered card would write, as if it were read by a phone."""
        card = self.cards.get(card_id)
        if card is None:
            raise APIError("card-not-found", "No card has this id", 404)
        card.card_counter = max(card.card_counter, card.counter) + 1
        keys = self.issuer.card_keys(card.uid, card.version, card.pull_payment_id)
        p = self.issuer.encrypt(card.uid, card.card_counter).hex().upper()
        c = sun_mac(keys.k2, card.uid, card.card_counter).hex().upper()
        return {
            "url": f"{_lnurlw(base_url)}?p={p}&c={c}",
            "p": p,
            "c": c,
            "counter": card.card_counter,
        }


BOLTCARDS = web.AppKey("btcpay_sim_boltcards", BoltcardService)
routes = web.RouteTableDef()


def _service(request: web.Request) -> BoltcardService:
    return request.app[BOLTCARDS]


def _hex(value: str | None, nbytes: int) -> bytes | None:
    if not value or len(value) != 2 * nbytes or not _HEX.match(value):
        return None
    return bytes.fromhex(value)


def _base_url(request: web.Request) -> str:
    configured = request.app[SIMULATOR].config.public_url
    return (configured or f"{request.scheme}://{request.host}").rstrip("/")


def _lnurlw(base_url: str) -> str:
    return re.sub(r"^https?://", "lnurlw://", base_url) + "/boltcard"


def _refuse(reason: str) -> web.Response:
    return web.json_response({"status": "ERROR", "reason": reason}, status=400)


def _field(body: dict[str, Any], name: str) -> Any:
    # BTCPay's JSON binding ignores the case of property names.
    for key, value in body.items():
        if key.lower() == name.lower():
            return value
    return None


@routes.post("/api/v1/pull-payments/{pullPaymentId}/boltcards")
async def register_boltcard(request: web.Request) -> web.Response:
    service = _service(request)
    pull_payment = service.sim.state.pull_payment(request.match_info["pullPaymentId"])
    body: dict[str, Any] = {}
    if request.body_exists:
        try:
            parsed = await request.json()
        except ValueError as exc:
            raise ValidationFailed("", "The request body is not valid JSON") from exc
        if not isinstance(parsed, dict):
            raise ValidationFailed("", "The request body must be a JSON object")
        body = parsed
    uid_text = _field(body, "UID")
    uid = _hex(uid_text, 7) if isinstance(uid_text, str) else None
    if uid is None:
        raise ValidationFailed("UID", "The UID is required and should be 7 bytes")
    on_existing = _field(body, "OnExisting") or request.query.get("onExisting") or UPDATE_VERSION
    if on_existing not in (UPDATE_VERSION, KEEP_VERSION):
        raise ValidationFailed("OnExisting", "OnExisting is UpdateVersion or KeepVersion")
    card = service.register(pull_payment.id, uid, on_existing)
    keys = service.issuer.card_keys(uid, card.version, card.pull_payment_id)
    return web.json_response(
        {
            "LNURLW": _lnurlw(_base_url(request)),
            "version": card.version,
            "K0": keys.k0.hex().upper(),
            "K1": keys.k1.hex().upper(),
            "K2": keys.k2.hex().upper(),
            "K3": keys.k3.hex().upper(),
            "K4": keys.k4.hex().upper(),
        }
    )


@routes.get("/boltcard")
async def boltcard_tap(request: web.Request) -> web.Response:
    service = _service(request)
    p, c = request.query.get("p"), request.query.get("c")
    if p is None or c is None:
        parts = (request.query.get("k1") or "").split("-")
        if len(parts) != 2:
            return _refuse("Missing p, c, or k1 query parameter")
        p, c = parts
    pr = request.query.get("pr")
    try:
        _card, pull_payment, _counter = service.read_tap(p, c, update_counter=pr is not None)
    except TapRefused as exc:
        service.count("refused_taps")
        return _refuse(exc.reason)
    if pr is None:
        service.count("taps")
        callback = _base_url(request) + request.path_qs
        return web.json_response(service.withdraw_request(pull_payment, callback, f"{p}-{c}"))
    try:
        answer = await service.claim(pull_payment, pr)
    except TapRefused as exc:
        service.count("refused_claims")
        return _refuse(exc.reason)
    return web.json_response(answer)


# --- control (/_sim, no auth) ----------------------------------------------------------------


@routes.get("/_sim/boltcards")
async def boltcard_state(request: web.Request) -> web.Response:
    service = _service(request)
    return web.json_response(
        {
            "issuerKey": service.issuer.key.hex(),
            "paymentWait": service.payment_wait,
            "cards": [card.to_json() for card in service.cards.values()],
            "counters": service.counters,
        }
    )


@routes.post("/_sim/boltcards")
async def boltcard_settings(request: web.Request) -> web.Response:
    service = _service(request)
    try:
        body = await request.json()
    except ValueError as exc:
        raise APIError("invalid-json", "The request body is not valid JSON") from exc
    if not isinstance(body, dict) or set(body) - {"issuerKey", "paymentWait"}:
        raise APIError("invalid-setting", "settings are issuerKey and paymentWait")
    if "issuerKey" in body:
        key = _hex(body["issuerKey"], 16) if isinstance(body["issuerKey"], str) else None
        if key is None:
            raise APIError("invalid-setting", "issuerKey must be 32 hex characters")
        # A new issuer key makes every registered card unreadable, as on a real server.
        service.issuer = IssuerKey(key)
        service.cards.clear()
    if "paymentWait" in body:
        wait = body["paymentWait"]
        if isinstance(wait, bool) or not isinstance(wait, int | float) or wait < 0:
            raise APIError("invalid-setting", "paymentWait must be a non-negative number")
        service.payment_wait = float(wait)
    return web.json_response({"paymentWait": service.payment_wait})


@routes.post("/_sim/boltcards/{cardId}/tap")
async def simulate_tap(request: web.Request) -> web.Response:
    service = _service(request)
    return web.json_response(service.card_tap(request.match_info["cardId"], _base_url(request)))


def setup(app: web.Application, issuer_key: bytes | None = None) -> BoltcardService:
    """Mount BTCPay's Boltcard routes and the /_sim/boltcards controls on the simulator app."""
    service = BoltcardService(app[SIMULATOR], issuer_key)
    app[BOLTCARDS] = service
    app.add_routes(routes)
    return service
