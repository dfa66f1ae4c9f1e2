"""Greenfield API keys and permissions, with BTCPay's implications between policies."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

UNRESTRICTED = "unrestricted"
CAN_MODIFY_STORE_SETTINGS = "btcpay.store.canmodifystoresettings"
CAN_VIEW_STORE_SETTINGS = "btcpay.store.canviewstoresettings"
CAN_MODIFY_WEBHOOKS = "btcpay.store.webhooks.canmodifywebhooks"
CAN_VIEW_PAYOUTS = "btcpay.store.canviewpayouts"
CAN_MANAGE_PAYOUTS = "btcpay.store.canmanagepayouts"
CAN_VIEW_PULL_PAYMENTS = "btcpay.store.canviewpullpayments"
CAN_MANAGE_PULL_PAYMENTS = "btcpay.store.canmanagepullpayments"
CAN_CREATE_PULL_PAYMENTS = "btcpay.store.cancreatepullpayments"
CAN_ARCHIVE_PULL_PAYMENTS = "btcpay.store.canarchivepullpayments"
CAN_CREATE_NON_APPROVED_PULL_PAYMENTS = "btcpay.store.cancreatenonapprovedpullpayments"

# Direct implications; a key holding the left policy also holds everything reachable on the
# right. The pull-payment policies deliberately do not reach canviewpayouts, as in BTCPay.
_IMPLIES: dict[str, tuple[str, ...]] = {
    CAN_MODIFY_STORE_SETTINGS: (
        CAN_VIEW_STORE_SETTINGS,
        CAN_MANAGE_PAYOUTS,
        CAN_MANAGE_PULL_PAYMENTS,
        CAN_MODIFY_WEBHOOKS,
    ),
    CAN_VIEW_STORE_SETTINGS: (CAN_VIEW_PAYOUTS, CAN_VIEW_PULL_PAYMENTS),
    CAN_MANAGE_PAYOUTS: (CAN_VIEW_PAYOUTS,),
    CAN_MANAGE_PULL_PAYMENTS: (
        CAN_CREATE_PULL_PAYMENTS,
        CAN_ARCHIVE_PULL_PAYMENTS,
        CAN_VIEW_PULL_PAYMENTS,
    ),
    CAN_CREATE_PULL_PAYMENTS: (CAN_CREATE_NON_APPROVED_PULL_PAYMENTS,),
}


@cache
def implied(policy: str) -> frozenset[str]:
    found = {policy}
    for child in _IMPLIES.get(policy, ()):
        found |= implied(child)
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class Grant:
    policy: str
    store_id: str | None  # None: every store of the key's owner

    @classmethod
    def parse(cls, text: str) -> Grant:
        policy, _, scope = text.partition(":")
        return cls(policy, scope or None)

    def allows(self, policy: str, store_id: str | None) -> bool:
        if self.policy == UNRESTRICTED:
            return True
        if policy not in implied(self.policy):
            return False
        return self.store_id is None or self.store_id == store_id


@dataclass(frozen=True, slots=True)
class ApiKey:
    key: str
    permissions: tuple[str, ...]
    label: str = ""

    def allows(self, policy: str, store_id: str | None = None) -> bool:
        """store_id None asks for the policy over every store (creating a store, say)."""
        return any(Grant.parse(text).allows(policy, store_id) for text in self.permissions)


class KeyRing:
    """The keys BTCPay knows. An unknown key is refused (401), unless the ring is permissive."""

    def __init__(self, known: dict[str, list[str]], permissive: bool = False) -> None:
        self._keys = {key: ApiKey(key, tuple(perms)) for key, perms in known.items()}
        self.permissive = permissive

    def register(self, key: str, permissions: list[str], label: str = "") -> ApiKey:
        api_key = ApiKey(key, tuple(permissions), label)
        self._keys[key] = api_key
        return api_key

    def lookup(self, key: str) -> ApiKey | None:
        found = self._keys.get(key)
        if found is None and self.permissive:
            return ApiKey(key, (UNRESTRICTED,))
        return found
