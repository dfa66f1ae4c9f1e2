"""Reading a card's pull payment before its first tap: will BTCPay take the card's claims?

Three settings of a pull payment decide it, and BTCPay's defaults get the first one wrong for
cards:

- ``BOLT11Expiration``: BTCPay refuses a Greenfield claim whose invoice expires sooner than that
  many days from now. Left out when the pull payment is created, it is the store's refund
  setting, 30 days by default; a wallet's invoice lives minutes to a day, so every tap of a
  card claimed through Greenfield (the gateway's own cards) would be refused. BTCPay's own
  cards claim through its LNURL-withdraw, which does not check it.
- ``autoApproveClaims``: without it every payout waits for someone to approve it in BTCPay, and
  BTCPay's own cards are refused at the callback.
- the ``BTC-LN`` payout method (in BTC or SATS): without it every claim is refused.

Each finding is one plain sentence that names the fix, in BTCPay's UI and through Greenfield.
BTCPay cannot change these on an existing pull payment: the fix is a new pull payment.
"""

from __future__ import annotations

import time
from typing import Any

from lnurl_gateway.greenfield import GreenfieldClient, GreenfieldError, GreenfieldNotFound

_CREATE_UI = "Pull Payments > Create pull payment in BTCPay"
_CREATE_API = "POST /api/v1/stores/{store}/pull-payments"


async def findings(
    client: GreenfieldClient, pull_payment_id: str, *, claims_through_greenfield: bool = True
) -> list[str]:
    """What would make BTCPay refuse or hold a card's claims on this pull payment ([] when
    nothing). ``claims_through_greenfield`` is False for BTCPay's own cards.

    Raises GreenfieldNotFound when BTCPay has no such pull payment, and GreenfieldError when
    BTCPay cannot be asked."""
    pull_payment = await client.get_pull_payment(pull_payment_id)
    pays_lightning = await client.pull_payment_pays_lightning(pull_payment_id)
    found = []
    what = f"pull payment {pull_payment_id}"
    if pull_payment.get("archived"):
        found.append(f"{what} is archived: BTCPay refuses every claim on it; give the card another")
    expires_at = pull_payment.get("expiresAt")
    if isinstance(expires_at, int | float) and expires_at <= time.time():
        found.append(f"{what} has expired: BTCPay refuses every claim on it; give the card another")
    if not pays_lightning:
        found.append(
            f"{what} does not pay Lightning: BTCPay refuses every claim of a card on it. "
            f"Fix: a pull payment in BTC or SATS with the Lightning payout method ({_CREATE_UI}; "
            f'through Greenfield, {_CREATE_API} with "payoutMethods": ["BTC-LN"])'
        )
    days = _days(pull_payment.get("BOLT11Expiration"))
    if claims_through_greenfield and days > 0:
        found.append(
            f"{what} refuses every invoice that expires in less than {days} days "
            f"(BOLT11Expiration {days}); a wallet's invoice lives minutes to a day, so BTCPay "
            "would refuse every tap's claim. Fix: a pull payment with 'Minimum acceptable "
            f"expiration time for BOLT11 for refunds' set to 0 ({_CREATE_UI}; the store's "
            f"default is the same setting in its Store Settings; through Greenfield, "
            f'{_CREATE_API} with "BOLT11Expiration": 0), then give the card that pull payment'
        )
    if pull_payment.get("autoApproveClaims") is not True:
        effect = (
            "every payout waits in AwaitingApproval until someone approves it in BTCPay"
            if claims_through_greenfield
            else "BTCPay refuses its cards' callbacks"
        )
        found.append(
            f"{what} does not approve claims by itself: {effect}. Fix: a pull payment with "
            f"'Automatically approve claims' on ({_CREATE_UI}; through Greenfield, "
            f'{_CREATE_API} with "autoApproveClaims": true, which needs '
            "btcpay.store.cancreatepullpayments)"
        )
    return found


def _days(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


async def read_all(
    btcpay_url: str,
    pull_payment_ids: list[str],
    *,
    timeout: float,
    claims_through_greenfield: bool = True,
) -> tuple[list[str], list[str]]:
    """``findings`` for each pull payment, as lines for the operator, and the ids BTCPay does
    not have. A BTCPay that cannot be asked gives one line saying the check was not made."""
    lines: list[str] = []
    unknown: list[str] = []
    async with GreenfieldClient(btcpay_url, timeout=timeout, retries=1) as client:
        for pull_payment_id in dict.fromkeys(pull_payment_ids):
            try:
                lines += await findings(
                    client, pull_payment_id, claims_through_greenfield=claims_through_greenfield
                )
            except GreenfieldNotFound:
                unknown.append(pull_payment_id)
            except GreenfieldError as exc:
                lines.append(
                    f"pull payment {pull_payment_id} not checked: BTCPay at {btcpay_url} did not "
                    f"answer ({exc.message})"
                )
    return lines, unknown
