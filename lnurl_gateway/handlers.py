"""The Boltcard LNURL-withdraw endpoints (LUD-03): the tap and its callback.

``BoltcardGateway`` holds the flow and reads top to bottom in the order a reviewer expects:
tap: parse, decrypt, find the card, wiped?, enabled?, MAC, counter (atomic), limits, k1;
callback: invoice, k1 (atomic), bounds, invoice held once, day limit (atomic), claim, record.
Every refusal is ``{"status": "ERROR", "reason": ...}`` with a reason of its own; every tap is a
``card_taps`` row. The aiohttp handlers at the bottom only translate HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import cards as ledger_cards
from ledger import status as payout_status
from ledger import taps as ledger_taps
from ledger.batches import WriteBatcher
from ledger.db import in_transaction
from ledger.payouts import CardLink
from ledger.secretbox import SecretBox

from .boltcard import C_LEN, P_LEN, BadParam, parse_hex_param, verify_c
from .btcpay_proxy import btcpay_reads, handle_unmanaged_tap, proxy_configured
from .claim_refusals import claim_refusal
from .greenfield import (
    GreenfieldClient,
    GreenfieldError,
    GreenfieldUnavailable,
)
from .invoices import DecodedInvoice, InvoiceError, decode_invoice, network_prefix
from .payout_shape import PayoutShapeError, normalise_payout
from .registry import KeyRing, open_keys, uid_hash

log = logging.getLogger("lnurl_gateway.boltcard")

# Tap outcomes (card_taps.outcome and the ``taps`` counter's label).
ACCEPTED = ledger_taps.ACCEPTED
MALFORMED = "malformed"
BAD_P = "bad_p"
UNKNOWN_CARD = "unknown_card"
WIPED = "wiped"
DISABLED = "disabled"
BAD_MAC = "bad_mac"
REPLAY = "replay"
LIMIT = "limit"
# Callback outcomes: what became of an accepted tap (the ``callbacks`` counter's label).
PAID = ledger_taps.PAID
INVOICE_REFUSED = "invoice_refused"
DUPLICATE_INVOICE = "duplicate_invoice"
OVER_LIMIT = "over_limit"
CARD_UNUSABLE = "card_unusable"
BTCPAY_REFUSED = "btcpay_refused"
BTCPAY_UNAVAILABLE = "btcpay_unavailable"

# Network names as the settings spell them, and as BOLT11 prefixes.
_NETWORKS = {"bitcoin": "bc", "mainnet": "bc", "testnet": "tb", "signet": "tbs", "regtest": "bcrt"}
_HEX = frozenset(string.hexdigits)
_K1_LEN = 32  # bytes; LUD-03 asks for a random k1, 256 bits leaves no room for guessing


def network_of(name: str) -> str:
    """The BOLT11 prefix for a network name (``bitcoin``, ``regtest``, ... or a prefix)."""
    return _NETWORKS.get(name) or network_prefix(name)


def lud03_error(reason: str) -> dict[str, str]:
    return {"status": "ERROR", "reason": reason}


def k1_hash(k1: str) -> str:
    return hashlib.sha256(bytes.fromhex(k1)).hexdigest()


@dataclass(frozen=True)
class GatewaySettings:
    """What the tap and callback need to know (see app.GatewayConfig for the full set)."""

    callback_url: str
    k1_ttl: float
    network: str  # BOLT11 prefix
    min_withdrawable_sats: int
    default_tx_limit_sats: int
    default_day_limit_sats: int
    btcpay_timeout: float
    default_description: str


ClientFor = Callable[[str], GreenfieldClient]


class BoltcardGateway:
    """Tap and callback over the ledger, the key ring and BTCPay's Greenfield API."""

    def __init__(
        self,
        engine: AsyncEngine,
        box: SecretBox,
        settings: GatewaySettings,
        ring: KeyRing,
        client_for: ClientFor,
    ) -> None:
        self.engine = engine
        self.box = box
        self.settings = settings
        self.ring = ring
        self.client_for = client_for
        # What a tap's card looks like once its MAC key has been opened (see _KnownCard).
        self._known: dict[tuple[str, bytes], _KnownCard] = {}
        # On PostgreSQL the tap step is one statement in its own implicit transaction.
        self._one_statement = engine.dialect.name == "postgresql"
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        # The payouts of concurrent callbacks are stored together (see _record_claims).
        self._claims: WriteBatcher[ledger_taps.Claim, Exception | None] = WriteBatcher(
            self._record_claims
        )

    def __repr__(self) -> str:
        return f"BoltcardGateway(callback_url={self.settings.callback_url!r})"

    # --- tap --------------------------------------------------------------------------------

    async def tap(
        self, p_hex: str | None, c_hex: str | None, *, remote: str | None, agent: str | None
    ) -> dict[str, Any]:
        seen = {"remote_addr": remote, "user_agent": agent}
        try:
            p = parse_hex_param(p_hex or "", P_LEN, "p")
            c = parse_hex_param(c_hex or "", C_LEN, "c")
        except BadParam as exc:
            return await self._refuse(MALFORMED, f"malformed tap: {exc}", **seen)

        candidates = await self._candidates(p)
        if not candidates:
            return await self._refuse(
                BAD_P, "p is not a Boltcard message under any key this gateway knows", **seen
            )
        if self._one_statement:
            answer = await self._tap_known_card(candidates, c, seen)
            if answer is not None:
                return answer
        lookup = [(uid_hash(self.box, picc.uid), fp) for fp, picc in candidates]
        now = datetime.now(UTC)
        # One transaction from the lookup to the tap row: the fewest round trips per tap.
        async with self.engine.begin() as conn:
            found = await ledger_cards.find_tap_card(conn, lookup, day=now.date())
            if found is None:
                return await self._refuse(UNKNOWN_CARD, "unknown card", conn=conn, **seen)
            card = found.card
            picc = next(picc for fp, picc in candidates if fp == card.k1_fingerprint)
            who = {
                "store_id": card.store_id,
                "card_id": card.id,
                # An opted-out store keeps no UID in its tap rows.
                "uid": picc.uid_hex if found.card_tracking else None,
                "counter": picc.counter,
                "card_rollup": found.card_tracking,
                "now": now,
                "conn": conn,
                **seen,
            }
            if card.wiped_at is not None:
                return await self._refuse(WIPED, "card has been wiped", **who)
            if not card.enabled:
                return await self._refuse(DISABLED, "card is disabled", **who)
            keys = open_keys(self.box, card)
            if keys.k2 is None or not verify_c(c, keys.k2, picc.uid, picc.counter):
                return await self._refuse(BAD_MAC, "c is not this card's MAC (bad MAC)", **who)
            self._remember(card, picc, keys.k2)
            if self._one_statement:
                # The rest of the step in one statement; None leaves it to the steps below
                # (a replay, or the card changed since it was read).
                answer = await self._one_step(conn, card.id, card.key_version, picc, seen)
                if answer is not None:
                    return answer
            if not await ledger_cards.advance_counter(conn, card.id, picc.counter, now=now):
                reason = f"replayed tap: counter {picc.counter} was already used"
                return await self._refuse(REPLAY, reason, **who)
            max_msat = self._max_withdrawable_msat(card, found.reserved_msat)
            min_msat = self._min_msat()
            if max_msat < min_msat:
                return await self._refuse(LIMIT, _LIMIT_REASON, **who)
            k1 = secrets.token_hex(_K1_LEN)
            who.pop("conn")
            await ledger_taps.record_tap(
                conn,
                outcome=ACCEPTED,
                k1_hash=k1_hash(k1),
                k1_expires_at=now + timedelta(seconds=self.settings.k1_ttl),
                max_withdrawable_msat=max_msat,
                **who,
            )
        return self._withdraw_request(k1, min_msat, max_msat)

    def _withdraw_request(self, k1: str, min_msat: int, max_msat: int) -> dict[str, Any]:
        return {
            "tag": "withdrawRequest",
            "callback": self.settings.callback_url,
            "k1": k1,
            "minWithdrawable": min_msat,
            "maxWithdrawable": max_msat,
            "defaultDescription": self.settings.default_description,
        }

    def _remember(self, card: ledger_cards.CardRow, picc: Any, k2: bytes) -> None:
        if len(self._known) >= _KNOWN_CARDS:
            self._known.clear()
        fingerprint = card.k1_fingerprint or ""
        self._known[(fingerprint, picc.uid)] = _KnownCard(card.id, card.key_version, k2)

    async def _tap_known_card(
        self, candidates: list, c: bytes, seen: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The tap of a card seen before, in one statement; None sends it the long way.

        Only the card's identity and MAC key are cached (they change only with a new key
        version, which the statement checks); the counter, enabled, wiped, limits, the day's
        reservations and the store's tracking choice are all read by the statement itself.
        """
        for fingerprint, picc in candidates:
            known = self._known.get((fingerprint, picc.uid))
            if known is not None:
                break
        else:
            return None
        if not verify_c(c, known.k2, picc.uid, picc.counter):
            return None  # the long way records the bad MAC with the card's row
        async with self._autocommit.connect() as conn:
            return await self._one_step(conn, known.card_id, known.key_version, picc, seen)

    async def _one_step(
        self, conn: Any, card_id: str, key_version: int, picc: Any, seen: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The tap step after the MAC, in one statement (``ledger.taps.tap_step``)."""
        now = datetime.now(UTC)
        k1 = secrets.token_hex(_K1_LEN)
        min_msat = self._min_msat()
        step = await ledger_taps.tap_step(
            conn,
            card_id=card_id,
            key_version=key_version,
            counter=picc.counter,
            uid=picc.uid_hex,
            k1_hash=k1_hash(k1),
            k1_expires_at=now + timedelta(seconds=self.settings.k1_ttl),
            min_msat=min_msat,
            default_tx_limit_sats=self.settings.default_tx_limit_sats,
            default_day_limit_sats=self.settings.default_day_limit_sats,
            limit_reason=_LIMIT_REASON,
            remote_addr=seen["remote_addr"],
            user_agent=seen["user_agent"],
            now=now,
        )
        if step is None:
            return None
        if step.outcome != ACCEPTED:
            return lud03_error(_LIMIT_REASON)
        assert step.max_withdrawable_msat is not None
        return self._withdraw_request(k1, min_msat, step.max_withdrawable_msat)

    async def manages(
        self, p_hex: str | None, *, read_elsewhere: Callable[[bytes], Awaitable[bool]]
    ) -> bool:
        """Whether a tap is for a card this gateway manages; others may be BTCPay's own cards.

        A malformed p counts as ours, to be refused here with its reason. A p that no key of
        ours reads but ``read_elsewhere`` does (BTCPay's issuer) goes there without waiting
        for new keys of ours.
        """
        try:
            p = parse_hex_param(p_hex or "", P_LEN, "p")
        except BadParam:
            return True
        candidates = self.ring.candidates(p)
        if not candidates:
            if await read_elsewhere(p):
                return False
            candidates = await self._candidates_after_refresh(p)
            if not candidates:
                return False
        if any((fp, picc.uid) in self._known for fp, picc in candidates):
            return True
        lookup = [(uid_hash(self.box, picc.uid), fp) for fp, picc in candidates]
        async with self.engine.connect() as conn:
            return await ledger_cards.find_tap_card(conn, lookup) is not None

    async def _candidates(self, p: bytes) -> list:
        return self.ring.candidates(p) or await self._candidates_after_refresh(p)

    async def _candidates_after_refresh(self, p: bytes) -> list:
        # Perhaps a card added by another process (the command line, another replica) since
        # the last load: learn its keys before answering.
        await self.ring.refresh(self.engine, asked_at=time.monotonic())
        return self.ring.candidates(p)

    def _max_withdrawable_msat(self, card: ledger_cards.CardRow, reserved_msat: int) -> int:
        tx_sats = card.tx_limit_sats
        day_sats = card.day_limit_sats
        if tx_sats is None:
            tx_sats = self.settings.default_tx_limit_sats
        if day_sats is None:
            day_sats = self.settings.default_day_limit_sats
        return max(0, min(tx_sats * 1000, day_sats * 1000 - reserved_msat))

    async def _refuse(
        self, outcome: str, reason: str, *, conn: Any = None, **row: Any
    ) -> dict[str, str]:
        if conn is not None:
            await ledger_taps.record_tap(conn, outcome=outcome, reason=reason, **row)
        else:
            async with self.engine.begin() as own:
                await ledger_taps.record_tap(own, outcome=outcome, reason=reason, **row)
        return lud03_error(reason)

    # --- callback ---------------------------------------------------------------------------

    async def callback(self, k1: str | None, pr: str | None) -> dict[str, Any]:
        if not k1:
            return lud03_error("k1 is missing")
        if len(k1) != 2 * _K1_LEN or not _HEX.issuperset(k1):
            return lud03_error("unknown k1")
        if not pr:
            return lud03_error("pr (the invoice to pay) is missing")
        # The invoice's own faults are checked before the k1 is used up, so a wallet that
        # sent a bad invoice can retry with a good one.
        try:
            invoice = decode_invoice(pr)
        except InvoiceError as exc:
            return lud03_error(f"unreadable invoice: {exc}")
        if invoice.network != self.settings.network:
            return lud03_error(
                f"invoice is for the wrong network ({invoice.network_name}); "
                f"this gateway pays on {_network_name(self.settings.network)}"
            )
        if invoice.is_expired():
            return lud03_error("invoice has expired")
        if invoice.amount_msat is None:
            return lud03_error("invoice has no amount")

        held = await self._reserve(k1_hash(k1), invoice)
        if isinstance(held, dict):
            return held
        return await self._claim(held, invoice)

    async def _reserve(self, hashed_k1: str, invoice: DecodedInvoice) -> dict | _Held:
        if self._one_statement:
            return await self._reserve_in_one_statement(hashed_k1, invoice)
        amount = invoice.amount_msat
        assert amount is not None
        now = datetime.now(UTC)
        async with self.engine.begin() as conn:
            tap = await ledger_taps.consume_k1(conn, hashed_k1, now=now)
            if tap is None:
                state = await ledger_taps.k1_state(conn, hashed_k1, now=now)
                return lud03_error(_K1_REASONS.get(state, _K1_REASONS["unknown"]))
            found = await ledger_cards.get_tap_card(conn, tap.card_id) if tap.card_id else None

            async def refuse(outcome: str, reason: str) -> dict[str, str]:
                await ledger_taps.finish_tap(
                    conn, tap.id, store_id=tap.store_id, outcome=outcome, reason=reason, now=now
                )
                return lud03_error(reason)

            if found is None:
                return await refuse(CARD_UNUSABLE, ledger_taps.REASON_CARD_GONE)
            card = found.card
            if card.wiped_at is not None:
                return await refuse(CARD_UNUSABLE, ledger_taps.REASON_CARD_WIPED)
            if not card.enabled:
                return await refuse(CARD_UNUSABLE, ledger_taps.REASON_CARD_DISABLED)
            min_msat = self._min_msat()
            max_msat = tap.max_withdrawable_msat or 0
            if card.tx_limit_sats is not None:
                max_msat = min(max_msat, card.tx_limit_sats * 1000)
            if not min_msat <= amount <= max_msat:
                reason = ledger_taps.REASON_AMOUNT % (amount, min_msat, max_msat)
                return await refuse(INVOICE_REFUSED, reason)
            if not found.btcpay_url or not card.pull_payment_id:
                return await refuse(BTCPAY_UNAVAILABLE, ledger_taps.REASON_NOT_CONNECTED)
            kept_hash = (
                invoice.payment_hash
                if found.card_tracking
                else self._hash_fingerprint(invoice.payment_hash)
            )
            day = now.date()
            if not await ledger_taps.hold_invoice(
                conn,
                tap.id,
                bolt11=invoice.payment_request,
                payment_hash=kept_hash,
                lock_hash=invoice.payment_hash,
                amount_msat=amount,
                reserved_day=day,
                now=now,
            ):
                return await refuse(DUPLICATE_INVOICE, ledger_taps.REASON_DUPLICATE)
            limit = card.day_limit_sats
            if limit is None:
                limit = self.settings.default_day_limit_sats
            if not await ledger_taps.reserve_day_spend(conn, card.id, day, amount, limit * 1000):
                return await refuse(OVER_LIMIT, ledger_taps.REASON_OVER_LIMIT % limit)
            return _Held(
                tap_id=tap.id,
                tap_uid=tap.uid,
                store_id=card.store_id,
                card_id=card.id,
                pull_payment_id=card.pull_payment_id,
                btcpay_url=found.btcpay_url,
                card_tracking=found.card_tracking,
                amount_msat=amount,
                day=day,
            )

    async def _reserve_in_one_statement(
        self, hashed_k1: str, invoice: DecodedInvoice
    ) -> dict | _Held:
        """``_reserve`` on PostgreSQL: the same checks and holds, made by the server in one
        statement (``flash_callback_hold``), with the same reasons."""
        amount = invoice.amount_msat
        assert amount is not None
        now = datetime.now(UTC)
        async with self._autocommit.connect() as conn:
            hold = await ledger_taps.callback_hold(
                conn,
                k1_hash=hashed_k1,
                amount_msat=amount,
                min_msat=self._min_msat(),
                default_day_limit_sats=self.settings.default_day_limit_sats,
                bolt11=invoice.payment_request,
                payment_hash=invoice.payment_hash,
                hash_fingerprint=self._hash_fingerprint(invoice.payment_hash),
                now=now,
            )
        if hold.verdict != "held":
            return lud03_error(hold.reason or _K1_REASONS[hold.verdict.removeprefix("k1_")])
        assert hold.tap_id is not None and hold.store_id and hold.card_id
        assert hold.pull_payment_id and hold.btcpay_url
        return _Held(
            tap_id=hold.tap_id,
            tap_uid=hold.tap_uid,
            store_id=hold.store_id,
            card_id=hold.card_id,
            pull_payment_id=hold.pull_payment_id,
            btcpay_url=hold.btcpay_url,
            card_tracking=hold.card_tracking,
            amount_msat=amount,
            day=now.date(),
        )

    def _min_msat(self) -> int:
        return max(1, self.settings.min_withdrawable_sats) * 1000

    def _hash_fingerprint(self, payment_hash: str) -> str:
        # An opted-out store's taps must not be joinable to payouts by payment hash, so they
        # keep a keyed fingerprint of it, still unique per invoice.
        return self.box.fingerprint(bytes.fromhex(payment_hash), purpose=b"ph")

    async def _claim(self, held: _Held, invoice: DecodedInvoice) -> dict[str, Any]:
        client = self.client_for(held.btcpay_url)
        asked_at = datetime.now(UTC)  # the claim's answer is BTCPay's view as of then
        try:
            data = await asyncio.wait_for(
                client.claim_payout(held.pull_payment_id, invoice.payment_request, "BTC-LN"),
                self.settings.btcpay_timeout,
            )
        except (GreenfieldUnavailable, TimeoutError) as exc:
            reason = "BTCPay unavailable: " + (
                "no answer in time" if isinstance(exc, TimeoutError) else _short(exc)
            )
            return await self._release(held, BTCPAY_UNAVAILABLE, reason)
        except GreenfieldError as exc:
            refusal = claim_refusal(exc)
            if refusal is not None:
                return await self._release(held, *refusal)
            return await self._release(held, BTCPAY_REFUSED, f"BTCPay refused: {_short(exc)}")

        try:
            record = normalise_payout(data, held.store_id, decode=None)
        except PayoutShapeError as exc:
            # BTCPay took the claim; its webhook or the reconciler will bring the payout.
            log.warning("claim answer for tap %s unreadable: %s", held.tap_id, exc)
            return {"status": "OK"}
        record.payment_hash = invoice.payment_hash
        record.amount_sats = held.amount_msat // 1000
        record.read_at = asked_at
        link = CardLink(held.card_id, held.tap_uid, held.tap_id) if held.card_tracking else None
        claim = ledger_taps.Claim(record, held.tap_id, link)
        # The usual case on PostgreSQL in one statement: a payout new to the ledger.
        one_statement = self._one_statement and record.status != payout_status.FAILED
        record_one = partial(ledger_taps.record_claim, claim=claim)
        if one_statement and await in_transaction(self._autocommit, record_one):
            return {"status": "OK"}
        failure = await self._claims.write(claim)
        if failure is not None:
            raise failure
        return {"status": "OK"}

    async def _record_claims(self, claims: list[ledger_taps.Claim]) -> list[Exception | None]:
        """Claims BTCPay took meanwhile, stored together: one transaction, a handful of
        statements. Should the batch fail, each is tried on its own, so that one claim's fault
        is that claim's alone."""
        failure = await self._store_claims(claims)
        if failure is None:
            return [None] * len(claims)
        if len(claims) == 1:
            return [failure]
        return [await self._store_claims([claim]) for claim in claims]

    async def _store_claims(self, claims: list[ledger_taps.Claim]) -> Exception | None:
        try:
            await in_transaction(self.engine, partial(ledger_taps.record_claims, claims=claims))
        except Exception as exc:
            return exc
        return None

    async def _release(self, held: _Held, outcome: str, reason: str) -> dict[str, str]:
        async with self.engine.begin() as conn:
            await ledger_taps.release_day_spend(conn, held.card_id, held.day, held.amount_msat)
            await ledger_taps.finish_tap(
                conn, held.tap_id, store_id=held.store_id, outcome=outcome, reason=reason
            )
        return lud03_error(reason)


_LIMIT_REASON = "card limit reached: nothing left to withdraw today"
_K1_REASONS = {"used": "k1 already used", "expired": "k1 has expired", "unknown": "unknown k1"}
_KNOWN_CARDS = 100_000  # cards whose keys a process keeps open; past that it starts over


@dataclass(frozen=True)
class _KnownCard:
    """A card's identity and MAC key as of one key version (never its counter or state)."""

    card_id: str
    key_version: int
    k2: bytes = field(repr=False)


@dataclass(frozen=True)
class _Held:
    """A callback that passed every check and holds its invoice and day-limit reservation."""

    tap_id: int
    tap_uid: str | None
    store_id: str
    card_id: str
    pull_payment_id: str
    btcpay_url: str
    card_tracking: bool
    amount_msat: int
    day: Any


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _network_name(prefix: str) -> str:
    return {"bc": "mainnet", "tb": "testnet", "tbs": "signet", "bcrt": "regtest"}.get(
        prefix, prefix
    )


# --- HTTP -------------------------------------------------------------------------------------

GATEWAY = web.AppKey("boltcard_gateway", BoltcardGateway)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    # LNURL wallets fetch these cross-origin from web pages.
    return web.json_response(
        body,
        status=status,
        headers={"Access-Control-Allow-Origin": "*", "Cache-Control": "no-store"},
    )


async def tap_handler(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    query = request.rel_url.query
    if proxy_configured(request.app) and not await gateway.manages(
        query.get("p"), read_elsewhere=partial(btcpay_reads, request.app)
    ):
        return await handle_unmanaged_tap(request, query.get("p") or "", query.get("c") or "")
    answer = await gateway.tap(
        query.get("p"),
        query.get("c"),
        remote=request.remote,
        agent=request.headers.get("User-Agent"),
    )
    return _json(answer)


async def callback_handler(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    query = request.rel_url.query
    return _json(await gateway.callback(query.get("k1"), query.get("pr")))


@web.middleware
async def lud03_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Under /boltcard every answer is LUD-03 JSON: no HTML error page, no 500, no traceback.
    Elsewhere on the listener (BTCPay's webhooks), an HTTP error is JSON as the webhook
    receiver's own refusals are: ``{"error": code, "message": ...}``."""
    lnurl = request.path.startswith("/boltcard")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.reason or "request not understood"
        if lnurl:
            return _json(lud03_error(reason), status=exc.status)
        allow = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return web.json_response(
            {"error": reason.lower().replace(" ", "-"), "message": reason},
            status=exc.status,
            headers=allow,
        )
    except Exception:
        if not lnurl:
            raise
        log.exception("unexpected failure answering %s", request.path)
        return _json(lud03_error("the gateway could not handle this request; try again"))
