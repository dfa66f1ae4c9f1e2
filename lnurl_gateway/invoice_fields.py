"""The two facts ingestion needs from a BTCPay payout's BOLT11 destination, read quickly.

A payout's invoice has been decoded and verified by BTCPay when the claim was accepted; the
ledger only needs its payment hash (the join key to a card tap) and its amount. A full decode
with the ``bolt11`` package (``invoices.decode_invoice``) costs about half a millisecond, which
alone would take most of a minute for a 100,000-payout reconcile into an empty ledger. This
reader checks the bech32 encoding with the ``bech32`` package (the reference implementation,
which ``bolt11`` itself uses), reads the amount with ``bolt11``'s own parser and walks the tagged
fields to the payment hash, in about a tenth of the time. It does not check the
signature: that is what the gateway's wallet-facing path, which trusts no one, uses
``decode_invoice`` for. The tests hold both readers to the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from bech32 import CHARSET, bech32_decode
from bolt11.exceptions import Bolt11Exception
from bolt11.utils import verify_hrp

from .invoices import InvoiceError

_SIGNATURE_WORDS = 104  # 65 bytes
_TIMESTAMP_WORDS = 7
_TAG_PAYMENT_HASH = CHARSET.index("p")
_MAX_LEN = 7089


@dataclass(frozen=True)
class InvoiceFields:
    payment_hash: str
    amount_msat: int | None


def read_invoice_fields(pr: str) -> InvoiceFields:
    """The payment hash and amount of a BOLT11 invoice, after its bech32 checksum.

    Raises InvoiceError for anything that is not a readable invoice with a payment hash.
    """
    if not isinstance(pr, str):
        raise InvoiceError("payment request must be text")
    text = pr.strip()
    if text[:10].lower() == "lightning:":
        text = text[10:]
    if len(text) > _MAX_LEN:
        raise InvoiceError("payment request is too long")
    if text != text.lower() and text != text.upper():
        raise InvoiceError("payment request is not valid bech32 (mixed case)")
    hrp, words = bech32_decode(text.lower())
    if hrp is None or words is None or len(words) < _SIGNATURE_WORDS + _TIMESTAMP_WORDS:
        raise InvoiceError("payment request is not valid bech32 (bad character or checksum)")
    try:
        _network, amount = verify_hrp(hrp)
    except Bolt11Exception:
        raise InvoiceError("payment request prefix is not a known network or amount") from None
    amount_msat = int(amount) if amount is not None else None
    if amount_msat is not None and amount_msat <= 0:
        raise InvoiceError("amount must be positive when present")

    end = len(words) - _SIGNATURE_WORDS
    at = _TIMESTAMP_WORDS
    while at + 3 <= end:
        tag, length = words[at], words[at + 1] * 32 + words[at + 2]
        at += 3
        if at + length > end:
            break
        # BOLT 11: a reader skips a p field whose length is not 52; the first good one counts.
        if tag == _TAG_PAYMENT_HASH and length == 52:
            value = 0
            for word in words[at : at + 52]:
                value = (value << 5) | word
            return InvoiceFields(f"{value >> 4:064x}", amount_msat)
        at += length
    raise InvoiceError("invoice has no payment hash")
