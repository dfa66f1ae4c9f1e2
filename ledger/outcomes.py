"""Every outcome the ledger counts, by counter: the one list the writers and the exporter share.

A label value missing here is still counted and exported as it appears, but it gets no series
before it first happens, so an alert on its rate() would stay silent until then. The test
``tests/test_exporter_outcomes.py`` fails when a writer defines an outcome not listed here.
"""

from __future__ import annotations

# Label of the ``taps`` counter (and card_taps.outcome): what became of a tap.
# The gateway's own cards (lnurl_gateway/handlers.py).
GATEWAY_TAP_OUTCOMES: tuple[str, ...] = (
    "accepted",
    "malformed",
    "bad_p",
    "unknown_card",
    "wiped",
    "disabled",
    "bad_mac",
    "replay",
    "limit",
)
# Taps forwarded to BTCPay's own /boltcard (ledger/btcpay_cards.py). "accepted" and "replay"
# mean the same as for the gateway's cards.
PROXY_TAP_OUTCOMES: tuple[str, ...] = (
    "accepted",
    "replay",
    "unidentified",
    "btcpay_refused",
    "btcpay_error",
)
TAP_OUTCOMES: tuple[str, ...] = tuple(dict.fromkeys(GATEWAY_TAP_OUTCOMES + PROXY_TAP_OUTCOMES))

# Label of the ``callbacks`` counter: what became of an accepted tap's LNURL callback on the
# gateway (ledger/taps.py::finish_tap).
CALLBACK_OUTCOMES: tuple[str, ...] = (
    "paid",
    "invoice_refused",
    "duplicate_invoice",
    "over_limit",
    "card_unusable",
    "btcpay_refused",
    # BTCPay refused the claim because the invoice expires sooner than the pull payment's
    # BOLT11Expiration allows (lnurl_gateway/claim_refusals.py).
    "btcpay_refused_expiry",
    "btcpay_unavailable",
)

# Label of the ``btcpay_callbacks`` counter: callbacks of proxied taps, answered by BTCPay.
BTCPAY_CALLBACK_OUTCOMES: tuple[str, ...] = ("ok", "btcpay_refused", "btcpay_error")
