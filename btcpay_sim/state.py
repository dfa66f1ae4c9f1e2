"""The simulator's in-memory records, keyed by id, with the indexes the API needs."""

from __future__ import annotations

from collections import Counter

from .errors import not_found
from .models import Payout, PullPayment, Store, Webhook


class SimState:
    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.stores: dict[str, Store] = {}
        self.pull_payments: dict[str, PullPayment] = {}
        self.payouts: dict[str, Payout] = {}
        self.store_payouts: dict[str, dict[str, Payout]] = {}
        self.pull_payment_payouts: dict[str, dict[str, Payout]] = {}
        # Payment hash -> payout id, for payouts that are not Cancelled: BTCPay refuses a
        # second claim on the same destination while the first one is alive.
        self.live_hashes: dict[str, str] = {}
        self.webhooks: dict[str, Webhook] = {}
        self.counters: Counter[str] = Counter()

    def add_store(self, store: Store) -> None:
        self.stores[store.id] = store
        self.store_payouts[store.id] = {}

    def add_pull_payment(self, pull_payment: PullPayment) -> None:
        self.pull_payments[pull_payment.id] = pull_payment
        self.pull_payment_payouts[pull_payment.id] = {}

    def add_payout(self, payout: Payout) -> None:
        self.payouts[payout.id] = payout
        self.store_payouts[payout.store_id][payout.id] = payout
        if payout.pull_payment_id is not None:
            self.pull_payment_payouts[payout.pull_payment_id][payout.id] = payout

    def store(self, store_id: str) -> Store:
        found = self.stores.get(store_id)
        if found is None:
            raise not_found("store-not-found", "store")
        return found

    def pull_payment(self, pull_payment_id: str) -> PullPayment:
        found = self.pull_payments.get(pull_payment_id)
        if found is None:
            raise not_found("pullpayment-not-found", "pull payment")
        return found

    def store_payout(self, store_id: str, payout_id: str) -> Payout:
        self.store(store_id)
        found = self.store_payouts[store_id].get(payout_id)
        if found is None:
            raise not_found("payout-not-found", "payout")
        return found

    def webhook(self, store_id: str, webhook_id: str) -> Webhook:
        found = self.webhooks.get(webhook_id)
        if found is None or found.store_id != store_id:
            raise not_found("webhook-not-found", "webhook")
        return found
