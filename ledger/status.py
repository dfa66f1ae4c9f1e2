"""BTCPay payout states and the four statuses merchants see."""

from __future__ import annotations

PENDING, PROCESSING, COMPLETED, FAILED = "Pending", "Processing", "Completed", "Failed"
STATUSES = (PENDING, PROCESSING, COMPLETED, FAILED)

BTCPAY_STATES = ("AwaitingApproval", "AwaitingPayment", "InProgress", "Completed", "Cancelled")

_STATUS_OF_STATE = {
    "AwaitingApproval": PENDING,
    "AwaitingPayment": PROCESSING,
    "InProgress": PROCESSING,
    "Completed": COMPLETED,
    "Cancelled": FAILED,
}


def status_of(state: str) -> str:
    """Map BTCPay's raw payout state to the merchant-facing status.

    BTCPay has no Failed state: a failed payout is Cancelled (or stays AwaitingPayment).
    """
    try:
        return _STATUS_OF_STATE[state]
    except KeyError:
        raise ValueError(f"unknown BTCPay payout state {state!r}") from None
