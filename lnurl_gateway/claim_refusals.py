"""What the gateway tells a wallet, and counts, when BTCPay refuses a card's claim for a reason
of its own that the card's issuer has to fix.

Only a refusal named here gets its own callback outcome and wallet reason; any other refusal
stays ``btcpay_refused``. A wallet is never shown BTCPay's own text.
"""

from __future__ import annotations

from .greenfield import GreenfieldError, refused_for_invoice_expiry

# The pull payment's BOLT11Expiration asks more of the invoice than a wallet's invoice gives
# (every wallet invoice, with BTCPay's default of 30 days).
BTCPAY_REFUSED_EXPIRY = "btcpay_refused_expiry"
REASON_INVOICE_EXPIRY = (
    "the invoice expires too soon for this card's payouts; "
    "the card's issuer must allow short-lived invoices"
)


def claim_refusal(error: GreenfieldError) -> tuple[str, str] | None:
    """The callback outcome and the wallet's reason for a refusal named here, else None."""
    if refused_for_invoice_expiry(error):
        return BTCPAY_REFUSED_EXPIRY, REASON_INVOICE_EXPIRY
    return None
