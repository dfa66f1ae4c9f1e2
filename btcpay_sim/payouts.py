"""Payout lifecycle: claims, approval, marking, cancelling and the processor's own steps.

Every state change bumps the revision and is announced to listeners (the webhook sender,
the auto-progress scheduler) as a PayoutEvent.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from . import ids, money
from .config import SimConfig
from .errors import APIError, ValidationFailed
from .invoices import InvalidInvoice, known_preimage, read_invoice
from .models import (
    AWAITING_APPROVAL,
    AWAITING_PAYMENT,
    CANCELLED,
    COMPLETED,
    IN_PROGRESS,
    LIGHTNING,
    LIGHTNING_ALIASES,
    PAYOUT_APPROVED,
    PAYOUT_CREATED,
    PAYOUT_STATES,
    PAYOUT_UPDATED,
    Payout,
    PayoutEvent,
    PullPayment,
)
from .state import SimState

_EVENT_FOR_STATE = {
    AWAITING_APPROVAL: PAYOUT_CREATED,
    AWAITING_PAYMENT: PAYOUT_APPROVED,
    IN_PROGRESS: PAYOUT_UPDATED,
    COMPLETED: PAYOUT_UPDATED,
    CANCELLED: PAYOUT_UPDATED,
}

Listener = Callable[[PayoutEvent], None]


class PayoutBook:
    def __init__(self, state: SimState, config: SimConfig, rng: random.Random) -> None:
        self.state = state
        self.config = config
        self.rng = rng
        self.listeners: list[Listener] = []

    # --- claims (anonymous, like BTCPay's pull-payment page) -------------------------------

    def claim(
        self, pull_payment_id: str, destination: str, amount: Decimal | None, method: str
    ) -> Payout:
        pull_payment = self.state.pull_payment(pull_payment_id)
        if method not in LIGHTNING_ALIASES:
            raise APIError("payment-method-not-supported", "This payout method is not supported")
        self._check_claimable(pull_payment)
        try:
            invoice = read_invoice(destination)
        except InvalidInvoice as exc:
            raise APIError("invalid-destination", str(exc)) from exc
        if invoice.network != self.config.network:
            raise APIError(
                "invalid-destination", "The BOLT11 invoice is for another bitcoin network"
            )
        if invoice.expires_at <= time.time():
            raise APIError("invalid-destination", "The BOLT11 invoice submitted has expired")
        amount = self._claim_amount(pull_payment, invoice.amount_msat, amount)
        if invoice.payment_hash in self.state.live_hashes:
            raise APIError(
                "duplicate-destination",
                "This destination is already used by another payout which is not cancelled",
            )
        if pull_payment.claimed + amount > pull_payment.amount:
            raise APIError("overdraft", "The payout amount overdraft the pull payment's limit")
        payout = Payout(
            id=ids.payout_id(),
            store_id=pull_payment.store_id,
            pull_payment_id=pull_payment.id,
            date=int(time.time()),
            destination=destination.strip(),
            payment_hash=invoice.payment_hash,
            original_amount=amount,
            original_currency=pull_payment.currency,
            payout_method_id=LIGHTNING,
            payment_secret=invoice.payment_secret,
        )
        self._hold(payout)
        self.state.add_payout(payout)
        self.state.counters["claims"] += 1
        self._announce(PAYOUT_CREATED, payout)
        # BTCPay approves inside the claim itself, so the answer already says AwaitingPayment.
        if pull_payment.auto_approve_claims:
            self._approve(payout)
        return payout

    def _check_claimable(self, pull_payment: PullPayment) -> None:
        now = time.time()
        if pull_payment.archived:
            raise APIError("archived", "You can't claim a payout from an archived pull payment")
        if pull_payment.expires_at is not None and pull_payment.expires_at <= now:
            raise APIError("expired", "This pull payment is expired")
        if pull_payment.starts_at > now:
            raise APIError("not-started", "This pull payment has not started yet")

    def _claim_amount(
        self, pull_payment: PullPayment, invoice_msat: int | None, requested: Decimal | None
    ) -> Decimal:
        currency = pull_payment.currency
        from_invoice = None if invoice_msat is None else money.from_msat(invoice_msat, currency)
        if requested is not None and from_invoice is not None and requested != from_invoice:
            raise ValidationFailed(
                "amount", "The amount does not match the amount of the BOLT11 invoice"
            )
        amount = requested if requested is not None else from_invoice
        if amount is None:
            raise ValidationFailed("amount", "The BOLT11 invoice has no amount: give one")
        if amount <= 0:
            raise APIError("amount-too-low", "The requested payout amount is too low")
        return amount

    # --- store operations (canmanagepayouts) ----------------------------------------------

    def approve(self, store_id: str, payout_id: str, revision: int) -> Payout:
        payout = self.state.store_payout(store_id, payout_id)
        if payout.state != AWAITING_APPROVAL:
            raise APIError("invalid-state", "The payout is not in a state that can be approved")
        if revision != payout.revision:
            raise APIError("old-revision", "The revision number is too old")
        self._approve(payout)
        return payout

    def mark(
        self,
        store_id: str,
        payout_id: str,
        new_state: str,
        proof: dict[str, Any] | None = None,
    ) -> Payout:
        payout = self.state.store_payout(store_id, payout_id)
        if new_state not in PAYOUT_STATES or new_state == AWAITING_APPROVAL:
            raise ValidationFailed("state", f"A payout cannot be marked {new_state!r}")
        if new_state != CANCELLED and payout.payout_amount is None:
            payout.payout_amount = money.to_btc(payout.original_amount, payout.original_currency)
        if proof is not None:
            payout.payment_proof = proof
        self._move(payout, new_state, PAYOUT_UPDATED)
        return payout

    def cancel(self, store_id: str, payout_id: str) -> Payout:
        payout = self.state.store_payout(store_id, payout_id)
        # BTCPay leaves payouts alone once the money may be moving.
        if payout.state in (AWAITING_APPROVAL, AWAITING_PAYMENT):
            self._move(payout, CANCELLED, PAYOUT_UPDATED)
        return payout

    # --- the Lightning payout processor's own steps ---------------------------------------

    def start_payment(self, payout_id: str, revision: int) -> bool:
        """AwaitingPayment -> InProgress, or a silent cancel; False if the payout moved on."""
        payout = self._unchanged(payout_id, revision, AWAITING_PAYMENT)
        if payout is None:
            return False
        if self.rng.random() < self.config.silent_cancel_rate:
            # BTCPay cancels a payout whose amount is too low to route without any event.
            self._move(payout, CANCELLED, PAYOUT_UPDATED, silent=True)
            return False
        self._move(payout, IN_PROGRESS, PAYOUT_UPDATED)
        return True

    def settle_payment(self, payout_id: str, revision: int) -> None:
        """InProgress -> Completed with a Lightning proof, or Cancelled at cancel_rate."""
        payout = self._unchanged(payout_id, revision, IN_PROGRESS)
        if payout is None:
            return
        if self.rng.random() < self.config.cancel_rate:
            self._move(payout, CANCELLED, PAYOUT_UPDATED)
            return
        payout.payment_proof = self.lightning_proof(payout)
        self._move(payout, COMPLETED, PAYOUT_UPDATED)

    def lightning_proof(self, payout: Payout) -> dict[str, Any]:
        preimage = known_preimage(payout.payment_hash, payout.payment_secret)
        return {
            "proofType": "PayoutLightningBlob",
            "paymentHash": payout.payment_hash,
            # Foreign invoices cannot be really paid here; their "preimage" is only filler.
            "preimage": preimage or self.rng.randbytes(32).hex(),
        }

    def _unchanged(self, payout_id: str, revision: int, expected: str) -> Payout | None:
        payout = self.state.payouts.get(payout_id)
        if payout is None or payout.revision != revision or payout.state != expected:
            return None
        return payout

    # --- seeding ---------------------------------------------------------------------------

    def insert(self, payout: Payout, announce: bool) -> None:
        """Adds a payout made outside a claim (bulk seeding), optionally with its event."""
        if payout.state != CANCELLED:
            self._hold(payout)
        self.state.add_payout(payout)
        if announce:
            self._announce(_EVENT_FOR_STATE[payout.state], payout)

    # --- bookkeeping ----------------------------------------------------------------------

    def _approve(self, payout: Payout) -> None:
        payout.payout_amount = money.to_btc(payout.original_amount, payout.original_currency)
        self._move(payout, AWAITING_PAYMENT, PAYOUT_APPROVED)

    def _move(self, payout: Payout, new_state: str, event_type: str, silent: bool = False) -> None:
        if payout.state != CANCELLED and new_state == CANCELLED:
            self._release(payout)
        elif payout.state == CANCELLED and new_state != CANCELLED:
            self._hold(payout)
        payout.state = new_state
        payout.revision += 1
        self._announce(event_type, payout, silent)

    def _hold(self, payout: Payout) -> None:
        self.state.live_hashes.setdefault(payout.payment_hash, payout.id)
        pull_payment = self.state.pull_payments.get(payout.pull_payment_id or "")
        if pull_payment is not None:
            pull_payment.claimed += payout.original_amount

    def _release(self, payout: Payout) -> None:
        if self.state.live_hashes.get(payout.payment_hash) == payout.id:
            del self.state.live_hashes[payout.payment_hash]
        pull_payment = self.state.pull_payments.get(payout.pull_payment_id or "")
        if pull_payment is not None:
            pull_payment.claimed -= payout.original_amount

    def _announce(self, event_type: str, payout: Payout, silent: bool = False) -> None:
        self.state.counters["silent_state_changes" if silent else "state_changes"] += 1
        event = PayoutEvent(
            type=event_type,
            store_id=payout.store_id,
            payout_id=payout.id,
            pull_payment_id=payout.pull_payment_id,
            payout_state=payout.state,
            timestamp=int(time.time()),
            silent=silent,
        )
        for listener in self.listeners:
            listener(event)
