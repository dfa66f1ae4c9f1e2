"""Payout lifecycle as BTCPay 2.4 runs it: claims, approval, marking, cancelling and the
Lightning payout processor's own steps.

What a simplified BTCPay gets wrong and this one does not:

- ``revision`` is set when a payout is created and never moves with its state: approving,
  marking, cancelling and the processor's progress leave it where it was. It only guards
  approval (an approval naming another revision is refused).
- A failed Lightning payment is not a failed payout: it goes back from ``InProgress`` to
  ``AwaitingPayment`` and the processor tries again. A payout ends ``Cancelled`` only when it is
  cancelled by hand or by API, when its invoice expired, for an amount BTCPay will not pay, or
  (with no event at all) for a too-low amount.
- The state rules of ``mark`` and ``cancel`` are BTCPay's (``PullPaymentHostedService``).

Every state change is announced to listeners (the webhook sender, the auto-progress scheduler)
as a PayoutEvent.
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
from .invoices import InvalidInvoice, ReadInvoice, known_preimage, read_invoice
from .models import (
    AWAITING_APPROVAL,
    AWAITING_PAYMENT,
    CANCELLED,
    COMPLETED,
    IN_PROGRESS,
    LIGHTNING,
    PAYOUT_APPROVED,
    PAYOUT_CREATED,
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
# A payout's destination may be claimed again once its payout is in one of these states.
_RELEASES_DESTINATION = (COMPLETED, CANCELLED)
_ONE_SAT_BTC = Decimal("0.00000001")

# BTCPay's own texts (LightningLikePayoutHandler, ClaimRequest, MarkPayoutRequest).
INVALID_DESTINATION = "A valid BOLT11 invoice or LNURL Pay or Lightning address was not provided."
EXPIRED_DESTINATION = "The BOLT11 invoice submitted has expired."
MARK_INVALID_STATE = "The payout is not in a state that can be marked with the specified state"

Listener = Callable[[PayoutEvent], None]


def expiry_too_soon(days_required: int, seconds_left: float) -> str:
    """BTCPay's refusal of a BOLT11 that expires before the pull payment's BOLT11Expiration.

    ``Provided was only`` is the whole days left, truncated as .NET's ``TimeSpan.Days`` does.
    """
    return (
        f"The BOLT11 invoice must have an expiry date of at least {days_required} days from "
        f"submission (Provided was only {int(seconds_left / 86400)})."
    )


class PayoutBook:
    def __init__(self, state: SimState, config: SimConfig, rng: random.Random) -> None:
        self.state = state
        self.config = config
        self.rng = rng
        self.listeners: list[Listener] = []

    # --- a claim's destination and amount (the Greenfield controller's checks, all 422) -------

    def read_destination(self, destination: str) -> ReadInvoice:
        """The claimed BOLT11, or 422 on ``Destination`` (unreadable, other network, expired)."""
        try:
            invoice = read_invoice(destination)
        except InvalidInvoice:
            raise ValidationFailed("Destination", INVALID_DESTINATION) from None
        if invoice.network != self.config.network:
            raise ValidationFailed("Destination", INVALID_DESTINATION)
        if invoice.expires_at < time.time():
            raise ValidationFailed("Destination", EXPIRED_DESTINATION)
        return invoice

    def check_expiry(self, pull_payment: PullPayment, invoice: ReadInvoice) -> None:
        """BOLT11Expiration: a claimed invoice must live at least that many days from now."""
        seconds_left = invoice.expires_at - time.time()
        if seconds_left < pull_payment.bolt11_expiration_days * 86400:
            raise ValidationFailed(
                "Destination", expiry_too_soon(pull_payment.bolt11_expiration_days, seconds_left)
            )

    def claim_amount(
        self, pull_payment: PullPayment, invoice: ReadInvoice, requested: Decimal | None
    ) -> Decimal | None:
        """The amount to claim, in the pull payment's currency: the invoice's when the claim
        names none, lowered to it when the claim asks for more; a claim asking for less than
        the invoice is a 422 on ``Amount``. None: neither names one (the rest of the limit)."""
        currency = pull_payment.currency
        if invoice.amount_msat is None:
            return requested
        from_invoice = money.from_msat(invoice.amount_msat, currency)
        if requested is None or requested >= from_invoice:
            return from_invoice
        raise ValidationFailed(
            "Amount",
            f"Amount is implied in both destination ({money.decimal_text(from_invoice)}) and "
            f"payout request ({money.decimal_text(requested)}), but the payout request amount "
            "is less than the destination amount",
        )

    # --- creating the payout (PullPaymentHostedService: 400 with a code) ---------------------

    def create(
        self,
        pull_payment: PullPayment,
        invoice: ReadInvoice,
        destination: str,
        amount: Decimal | None,
        method: str,
    ) -> Payout:
        now = time.time()
        if pull_payment.archived:
            raise APIError("archived", "This pull payment has been archived")
        if pull_payment.expires_at is not None and pull_payment.expires_at <= now:
            raise APIError("expired", "This pull payment is expired")
        if pull_payment.starts_at > now:
            raise APIError("not-started", "This pull payment has yet started")
        if method not in pull_payment.payout_methods:
            raise APIError(
                "payment-method-not-supported",
                "This payment method is not supported by the pull payment",
            )
        if invoice.payment_hash in self.state.live_hashes:
            raise APIError(
                "duplicate-destination", "This address is already used for another payout"
            )
        if amount is not None and money.to_btc(amount, pull_payment.currency) < _ONE_SAT_BTC:
            raise APIError("amount-too-low", "The requested payout amount is too low")
        claimed = amount if amount is not None else pull_payment.amount - pull_payment.claimed
        if pull_payment.claimed + claimed > pull_payment.amount:
            raise APIError("overdraft", "The payout amount overdraft the pull payment's limit")
        if claimed <= 0:
            raise APIError("amount-too-low", "The requested payout amount is too low")
        payout = Payout(
            id=ids.payout_id(),
            store_id=pull_payment.store_id,
            pull_payment_id=pull_payment.id,
            date=int(now),
            destination=destination.strip(),
            payment_hash=invoice.payment_hash,
            original_amount=claimed,
            original_currency=pull_payment.currency,
            payout_method_id=LIGHTNING,
            payment_secret=invoice.payment_secret,
            invoice_expires_at=invoice.expires_at,
        )
        self._hold(payout)
        self.state.add_payout(payout)
        self.state.counters["claims"] += 1
        self._announce(PAYOUT_CREATED, payout)
        # BTCPay approves inside the claim itself, so the answer already says AwaitingPayment.
        if pull_payment.auto_approve_claims:
            self._approve(payout)
        return payout

    # --- store operations (canmanagepayouts) ----------------------------------------------

    def approve(self, store_id: str, payout_id: str, revision: int) -> Payout:
        payout = self.state.store_payout(store_id, payout_id)
        if payout.state != AWAITING_APPROVAL:
            raise APIError("invalid-state", "The payout is not in a state that can be approved")
        if revision != payout.revision:
            # BTCPay's message for a stale revision really is this one.
            raise APIError("old-revision", "The crypto amount is too small.")
        self._approve(payout)
        return payout

    def mark(
        self, store_id: str, payout_id: str, new_state: str, proof: dict[str, Any] | None = None
    ) -> Payout:
        """BTCPay's MarkPayout: Completed is final; Completed and InProgress only from a payout
        that was approved; AwaitingPayment only back from InProgress; Cancelled is a cancel.
        Only InProgress and Completed keep a proof, so ``mark-paid`` (no proof) clears it."""
        if new_state == CANCELLED:
            return self.cancel(store_id, payout_id)
        payout = self.state.store_payout(store_id, payout_id)
        approved = (AWAITING_PAYMENT, IN_PROGRESS, COMPLETED)
        if (
            payout.state == COMPLETED
            or (new_state in (COMPLETED, IN_PROGRESS) and payout.state not in approved)
            or (new_state == AWAITING_PAYMENT and payout.state != IN_PROGRESS)
        ):
            raise APIError("invalid-state", MARK_INVALID_STATE)
        payout.payment_proof = proof if new_state in (IN_PROGRESS, COMPLETED) else None
        self._move(payout, new_state, PAYOUT_UPDATED)
        return payout

    def cancel(self, store_id: str, payout_id: str) -> Payout:
        """Money that may be moving stays put (InProgress, Completed: 400); cancelling a
        Cancelled payout succeeds again, with another event, as in BTCPay."""
        payout = self.state.store_payout(store_id, payout_id)
        if payout.state in (IN_PROGRESS, COMPLETED):
            raise APIError("invalid-state", MARK_INVALID_STATE)
        self._move(payout, CANCELLED, PAYOUT_UPDATED)
        return payout

    def archive(self, pull_payment: PullPayment) -> None:
        """Archiving cancels the pull payment's payouts that are not paid or being paid."""
        pull_payment.archived = True
        for payout in list(self.state.pull_payment_payouts[pull_payment.id].values()):
            if payout.state not in (IN_PROGRESS, COMPLETED):
                self._move(payout, CANCELLED, PAYOUT_UPDATED)

    # --- the Lightning payout processor's own steps ---------------------------------------

    def start_payment(self, payout_id: str, moves: int) -> None:
        """AwaitingPayment -> InProgress; Cancelled when the invoice has expired; or BTCPay's
        silent cancel of a too-low amount. Nothing when the payout moved meanwhile."""
        payout = self._unchanged(payout_id, moves, AWAITING_PAYMENT)
        if payout is None:
            return
        if self.rng.random() < self.config.silent_cancel_rate:
            self._move(payout, CANCELLED, PAYOUT_UPDATED, silent=True)
            return
        if payout.invoice_expires_at is not None and payout.invoice_expires_at <= time.time():
            self._move(payout, CANCELLED, PAYOUT_UPDATED)
            return
        self._move(payout, IN_PROGRESS, PAYOUT_UPDATED)

    def settle_payment(self, payout_id: str, moves: int) -> None:
        """InProgress -> Completed with a Lightning proof; back to AwaitingPayment when the
        payment failed (to be tried again); Cancelled at cancel_rate."""
        payout = self._unchanged(payout_id, moves, IN_PROGRESS)
        if payout is None:
            return
        roll = self.rng.random()
        if roll < self.config.cancel_rate:
            self._move(payout, CANCELLED, PAYOUT_UPDATED)
        elif roll < self.config.cancel_rate + self.config.payment_failure_rate:
            self.state.counters["failed_payments"] += 1
            self._move(payout, AWAITING_PAYMENT, PAYOUT_UPDATED)
        else:
            payout.payment_proof = self.lightning_proof(payout)
            self._move(payout, COMPLETED, PAYOUT_UPDATED)

    def lightning_proof(self, payout: Payout) -> dict[str, Any]:
        preimage = known_preimage(payout.payment_hash, payout.payment_secret)
        return {
            "proofType": "PayoutLightningBlob",
            "paymentHash": payout.payment_hash,
            # Foreign invoices cannot be really paid here; their "preimage" is only filler.
            "preimage": preimage or self.rng.randbytes(32).hex(),
            # PayoutLightningBlob's id is the payment hash; it has no link.
            "id": payout.payment_hash,
            "link": None,
        }

    def _unchanged(self, payout_id: str, moves: int, expected: str) -> Payout | None:
        payout = self.state.payouts.get(payout_id)
        if payout is None or payout.moves != moves or payout.state != expected:
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
        was_cancelled, cancelled = payout.state == CANCELLED, new_state == CANCELLED
        if cancelled != was_cancelled:
            self._count_against_limit(payout, -1 if cancelled else +1)
        payout.state = new_state
        self._track_destination(payout)
        payout.moves += 1
        self._announce(event_type, payout, silent)

    def _hold(self, payout: Payout) -> None:
        """A new payout: its amount counts against the pull payment, its destination is taken."""
        self._count_against_limit(payout, +1)
        self._track_destination(payout)

    def _count_against_limit(self, payout: Payout, sign: int) -> None:
        pull_payment = self.state.pull_payments.get(payout.pull_payment_id or "")
        if pull_payment is not None:
            pull_payment.claimed += sign * payout.original_amount

    def _track_destination(self, payout: Payout) -> None:
        if payout.state not in _RELEASES_DESTINATION:
            self.state.live_hashes.setdefault(payout.payment_hash, payout.id)
        elif self.state.live_hashes.get(payout.payment_hash) == payout.id:
            del self.state.live_hashes[payout.payment_hash]

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
