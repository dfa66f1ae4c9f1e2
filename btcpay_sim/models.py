"""The simulator's records and their Greenfield JSON shapes (BTCPay 2.x field names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .money import decimal_text

AWAITING_APPROVAL = "AwaitingApproval"
AWAITING_PAYMENT = "AwaitingPayment"
IN_PROGRESS = "InProgress"
COMPLETED = "Completed"
CANCELLED = "Cancelled"
PAYOUT_STATES = (AWAITING_APPROVAL, AWAITING_PAYMENT, IN_PROGRESS, COMPLETED, CANCELLED)

LIGHTNING = "BTC-LN"
ON_CHAIN = "BTC-CHAIN"
# Payout method ids as 2.x names them, from the 1.x spellings its parser still accepts.
PAYOUT_METHOD_IDS = {
    "BTC-LN": LIGHTNING,
    "BTC_LightningLike": LIGHTNING,
    "BTC-LightningNetwork": LIGHTNING,
    "BTC-CHAIN": ON_CHAIN,
    "BTC": ON_CHAIN,
    "BTC-OnChain": ON_CHAIN,
}
LIGHTNING_ALIASES = frozenset(k for k, v in PAYOUT_METHOD_IDS.items() if v == LIGHTNING)

PAYOUT_CREATED = "PayoutCreated"
PAYOUT_APPROVED = "PayoutApproved"
PAYOUT_UPDATED = "PayoutUpdated"
PAYOUT_EVENT_TYPES = (PAYOUT_CREATED, PAYOUT_APPROVED, PAYOUT_UPDATED)


@dataclass(slots=True)
class Store:
    id: str
    name: str
    website: str | None = None
    default_currency: str = "BTC"
    # Days; what a pull payment created without BOLT11Expiration takes.
    refund_bolt11_expiration_days: int = 30

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "website": self.website,
            "defaultCurrency": self.default_currency,
            "refundBOLT11Expiration": self.refund_bolt11_expiration_days,
            "archived": False,
            "speedPolicy": "MediumSpeed",
            "invoiceExpiration": 900,
            "displayExpirationTimer": 300,
            "monitoringExpiration": 86400,
            "networkFeeMode": "MultiplePaymentsOnly",
            "payJoinEnabled": False,
            "lazyPaymentMethods": False,
            "anyoneCanCreateInvoice": False,
        }


@dataclass(slots=True)
class PullPayment:
    id: str
    store_id: str
    name: str
    description: str
    amount: Decimal
    currency: str
    auto_approve_claims: bool
    payout_methods: list[str]
    starts_at: int
    bolt11_expiration_days: int  # a claimed BOLT11 must live at least this long (0: any)
    expires_at: int | None = None
    period: int | None = None
    archived: bool = False
    # Sum of originalAmount over the pull payment's payouts that are not Cancelled.
    claimed: Decimal = field(default_factory=Decimal)

    def to_json(self, base_url: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "startsAt": self.starts_at,
            "expiresAt": self.expires_at,
            "name": self.name,
            "description": self.description,
            "currency": self.currency,
            "amount": decimal_text(self.amount),
            "period": self.period,
            "BOLT11Expiration": self.bolt11_expiration_days,
            "autoApproveClaims": self.auto_approve_claims,
            "archived": self.archived,
            "viewLink": f"{base_url}/pull-payments/{self.id}",
        }


@dataclass(slots=True)
class Payout:
    id: str
    store_id: str
    pull_payment_id: str | None
    date: int
    destination: str
    payment_hash: str
    original_amount: Decimal
    original_currency: str
    state: str = AWAITING_APPROVAL
    revision: int = 0
    payout_amount: Decimal | None = None
    payout_method_id: str = LIGHTNING
    payment_proof: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    payment_secret: str | None = None  # kept from the claim, to publish a real preimage
    invoice_expires_at: float | None = None  # the BOLT11's own expiry (unix seconds)
    # Counts the payout's state changes; not BTCPay's (whose revision does not move), only
    # the processor's way to see that a step it scheduled was overtaken by another change.
    moves: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "revision": self.revision,
            "pullPaymentId": self.pull_payment_id,
            "date": self.date,
            "destination": self.destination,
            "originalAmount": decimal_text(self.original_amount),
            "originalCurrency": self.original_currency,
            "payoutAmount": (
                None if self.payout_amount is None else decimal_text(self.payout_amount)
            ),
            "payoutCurrency": "BTC",
            "payoutMethodId": self.payout_method_id,
            "state": self.state,
            "paymentProof": self.payment_proof,
            "metadata": self.metadata,
        }


@dataclass(slots=True)
class Webhook:
    id: str
    store_id: str
    url: str
    secret: str
    enabled: bool = True
    automatic_redelivery: bool = True
    everything: bool = True
    specific_events: list[str] = field(default_factory=list)

    def wants(self, event_type: str) -> bool:
        return self.enabled and (self.everything or event_type in self.specific_events)

    def to_json(self, with_secret: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "enabled": self.enabled,
            "automaticRedelivery": self.automatic_redelivery,
            "url": self.url,
            "authorizedEvents": {
                "everything": self.everything,
                "specificEvents": list(self.specific_events),
            },
        }
        if with_secret:
            body["secret"] = self.secret
        return body


@dataclass(frozen=True, slots=True)
class PayoutEvent:
    """A payout state change; silent ones (BTCPay's too-low-amount cancel) send no webhook."""

    type: str
    store_id: str
    payout_id: str
    pull_payment_id: str | None
    payout_state: str
    timestamp: int
    silent: bool = False
