"""BTCPay's PayoutData JSON (2.x, or the 1.x names older servers still send) as a PayoutRecord.

2.x: ``originalAmount``/``originalCurrency``, ``payoutAmount``/``payoutCurrency``,
``payoutMethodId`` (``BTC-LN``, ``BTC-CHAIN``). 1.x: ``amount``, ``paymentMethodAmount``,
``cryptoCode``, ``paymentMethod`` (``BTC``, ``BTC_LightningLike``). A Lightning payout's
destination is a BOLT11 invoice; its payment hash (the join key to a card tap) and amount are
read from the invoice itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from ledger.ingest import KnownPayout
from ledger.payouts import PayoutRecord
from ledger.status import BTCPAY_STATES

from .invoice_fields import InvoiceFields, read_invoice_fields
from .invoices import InvoiceError, decode_invoice

LIGHTNING = "BTC-LN"
ON_CHAIN = "BTC-CHAIN"
# 1.x payment method ids (and the 2.0 transition spellings) -> 2.x payout method ids.
_METHOD_ALIASES = {
    "BTC": ON_CHAIN,
    "BTC-OnChain": ON_CHAIN,
    "BTC_OnChain": ON_CHAIN,
    "BTC_LightningLike": LIGHTNING,
    "BTC-LightningNetwork": LIGHTNING,
    "BTC_LightningNetwork": LIGHTNING,
    "BTC-LightningLike": LIGHTNING,
}
_SATS_PER_BTC = Decimal(100_000_000)

# Anything with ``payment_hash`` and ``amount_msat``: a DecodedInvoice or a KnownInvoice.
Decoder = Callable[[str], Any]


class PayoutShapeError(ValueError):
    """The JSON is not a payout this monitor can record (no id, unknown state, ...)."""


def payout_method(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return _METHOD_ALIASES.get(value, value)


def normalise_payout(
    data: Any, store_id: str, *, decode: Decoder | None = decode_invoice
) -> PayoutRecord:
    """Read one PayoutData object. ``decode`` None skips reading the invoice (the caller
    already knows this destination's payment hash and amount)."""
    if not isinstance(data, dict):
        raise PayoutShapeError("a payout must be a JSON object")
    payout_id = data.get("id")
    if not isinstance(payout_id, str) or not payout_id:
        raise PayoutShapeError("payout has no id")
    state = data.get("state")
    if state not in BTCPAY_STATES:
        raise PayoutShapeError(f"payout {payout_id} has an unknown state {state!r}")
    revision = data.get("revision", 0)
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise PayoutShapeError(f"payout {payout_id} has a bad revision")

    original_amount = _amount(_first(data, "originalAmount", "amount"), payout_id)
    original_currency = _text(data.get("originalCurrency"))
    payout_amount = _amount(_first(data, "payoutAmount", "paymentMethodAmount"), payout_id)
    payout_currency = _text(_first(data, "payoutCurrency", "cryptoCode"))
    method = payout_method(_first(data, "payoutMethodId", "paymentMethod"))
    if payout_currency is None and method and "-" in method:
        payout_currency = method.split("-", 1)[0]
    destination = _text(data.get("destination"))
    proof = data.get("paymentProof") if isinstance(data.get("paymentProof"), dict) else None
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else None

    payment_hash: str | None = None
    invoice_msat: int | None = None
    if method == LIGHTNING and destination and decode is not None:
        try:
            invoice = decode(destination)
        except InvoiceError:
            invoice = None  # a Lightning address or LNURL: BTCPay resolves it when paying
        if invoice is not None:
            payment_hash, invoice_msat = invoice.payment_hash, invoice.amount_msat
    if payment_hash is None and proof is not None:
        found = proof.get("paymentHash")
        payment_hash = found.lower() if isinstance(found, str) and len(found) == 64 else None
    transaction_id = None
    if proof is not None and isinstance(proof.get("transactionId"), str):
        transaction_id = proof["transactionId"]

    return PayoutRecord(
        id=payout_id,
        store_id=store_id,
        state=state,
        revision=revision,
        created_at=_when(data.get("date"), payout_id),
        pull_payment_id=_text(data.get("pullPaymentId")),
        original_amount=original_amount,
        original_currency=original_currency,
        payout_amount=payout_amount,
        payout_currency=payout_currency,
        payout_method_id=method,
        destination=destination,
        payment_hash=payment_hash,
        amount_sats=amount_in_sats(
            invoice_msat, payout_amount, payout_currency, original_amount, original_currency
        ),
        transaction_id=transaction_id,
        payment_proof=proof,
        metadata=metadata,
        error_message="Cancelled by BTCPay Server" if state == "Cancelled" else None,
    )


def amount_in_sats(
    invoice_msat: int | None,
    payout_amount: Decimal | None,
    payout_currency: str | None,
    original_amount: Decimal | None,
    original_currency: str | None,
) -> int | None:
    """Whole satoshis, from the most exact source: the invoice, then BTCPay's BTC amounts.

    The invoice comes first so the value does not move when a payout is approved and
    BTCPay fills in ``payoutAmount``.
    """
    if invoice_msat is not None:
        return invoice_msat // 1000
    sources = ((payout_amount, payout_currency), (original_amount, original_currency))
    for amount, currency in sources:
        if amount is None or currency is None:
            continue
        if currency.upper() == "BTC":
            return int((amount * _SATS_PER_BTC).to_integral_value())
        if currency.upper() in ("SATS", "SAT"):
            return int(amount.to_integral_value())
    return None


def _first(data: dict[str, Any], *names: str) -> Any:
    for name in names:
        if data.get(name) is not None:
            return data[name]
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _amount(value: Any, payout_id: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PayoutShapeError(f"payout {payout_id} has a bad amount")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise PayoutShapeError(f"payout {payout_id} has a bad amount") from None
    if not amount.is_finite():
        raise PayoutShapeError(f"payout {payout_id} has a bad amount")
    return amount


def _when(value: Any, payout_id: str) -> datetime:
    """BTCPay's dates are unix seconds; very old servers and exports use ISO 8601."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            if value.isdigit():
                return datetime.fromtimestamp(int(value), UTC)
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise PayoutShapeError(f"payout {payout_id} has no usable date")


@dataclass(frozen=True)
class KnownInvoice:
    """What the ledger already read from a destination: enough to skip decoding it again."""

    payment_hash: str
    amount_msat: int | None


def decoder_knowing(known: Mapping[str, KnownPayout]) -> Decoder:
    """The payment hash and amount of a payout's invoice, for ingestion.

    A destination the ledger holds with its payment hash is not read again (a routine reconcile
    sees the same destinations again and again, and they cannot have changed); a new one is read
    by ``read_invoice_fields``, which is what makes a reconcile into an empty ledger fast. BTCPay
    checked the invoice's signature when it accepted the claim (see ``invoice_fields``).
    """
    by_destination = {
        row.destination: row for row in known.values() if row.destination and row.payment_hash
    }

    def decode(destination: str) -> InvoiceFields | KnownInvoice:
        row = by_destination.get(destination)
        if row is not None and row.payment_hash:
            msat = row.amount_sats * 1000 if row.amount_sats is not None else None
            return KnownInvoice(row.payment_hash, msat)
        return read_invoice_fields(destination)

    return decode
