"""The two facts ingestion needs from a BTCPay payout's BOLT11 destination, read quickly.

A payout's invoice has been decoded and verified by BTCPay when the claim was accepted; the
ledger only needs its payment hash (the join key to a card tap) and its amount. A full decode
with the ``bolt11`` package (``invoices.decode_invoice``) costs about half a millisecond, which
alone would take most of a minute for a 100,000-payout reconcile into an empty ledger. This
reader checks the bech32 checksum, reads the amount with the package's own parser and walks the
tagged fields to the payment hash, in a few tens of microseconds. It does not check the
signature: that is what the gateway's wallet-facing path, which trusts no one, uses
``decode_invoice`` for. The tests hold both readers to the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from bolt11.exceptions import Bolt11Exception
from bolt11.utils import verify_hrp

from .invoices import InvoiceError

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_WORD_OF = {c: i for i, c in enumerate(_CHARSET)}
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


# bech32's polymod, five generator bits at a time: the xor of the generators each top-5-bit
# pattern selects, so one step is a shift, an xor and a lookup.
def _step_table() -> tuple[int, ...]:
    table = []
    for top in range(32):
        xor = 0
        for i in range(5):
            if (top >> i) & 1:
                xor ^= _GENERATOR[i]
        table.append(xor)
    return tuple(table)


_STEP = _step_table()
_SIGNATURE_WORDS = 104  # 65 bytes
_CHECKSUM_WORDS = 6
_TIMESTAMP_WORDS = 7
_TAG_PAYMENT_HASH = _WORD_OF["p"]
_MAX_LEN = 7089


@dataclass(frozen=True)
class InvoiceFields:
    payment_hash: str
    amount_msat: int | None


def _polymod(values: list[int]) -> int:
    chk = 1
    step = _STEP
    for value in values:
        chk = ((chk & 0x1FFFFFF) << 5) ^ value ^ step[chk >> 25]
    return chk


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
    text = text.lower()
    split = text.rfind("1")
    if split < 1 or len(text) - split - 1 < _CHECKSUM_WORDS + _SIGNATURE_WORDS + _TIMESTAMP_WORDS:
        raise InvoiceError("payment request is not valid bech32")
    hrp = text[:split]
    try:
        words = [_WORD_OF[c] for c in text[split + 1 :]]
    except KeyError:
        raise InvoiceError("payment request is not valid bech32 (bad character)") from None
    if any(ord(c) < 33 or ord(c) > 126 for c in hrp):
        raise InvoiceError("payment request is not valid bech32")
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    if _polymod(expanded + words) != 1:
        raise InvoiceError("payment request is not valid bech32 (checksum)")
    try:
        _network, amount = verify_hrp(hrp)
    except Bolt11Exception:
        raise InvoiceError("payment request prefix is not a known network or amount") from None
    amount_msat = int(amount) if amount is not None else None
    if amount_msat is not None and amount_msat <= 0:
        raise InvoiceError("amount must be positive when present")

    end = len(words) - _CHECKSUM_WORDS - _SIGNATURE_WORDS
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
