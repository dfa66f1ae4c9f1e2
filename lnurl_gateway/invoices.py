"""BOLT11 invoices: decode what wallets send, encode signed ones for tests, demo and benchmarks.

Decoding follows the ``bolt11`` package's rules (same fields, same required tags, same signature
check) but reads the bech32 payload with plain integers: the package's bit-by-bit parsing costs
about 2 ms an invoice, which would make invoice checks the slowest step of a callback.
Encoding is delegated to ``bolt11.encode``.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

import bolt11
from bolt11.models.signature import Signature
from bolt11.models.tags import TagChar, Tags
from bolt11.utils import verify_hrp
from coincurve import PublicKey

NETWORK_PREFIXES: dict[str, str] = {
    "mainnet": "bc",
    "testnet": "tb",
    "signet": "tbs",
    "regtest": "bcrt",
}
_NETWORK_NAMES = {prefix: name for name, prefix in NETWORK_PREFIXES.items()}
DEFAULT_EXPIRY = 3600
DEFAULT_MIN_FINAL_CLTV = 18

_BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_VALUES = {char: index for index, char in enumerate(_BECH32_CHARSET)}
# Renames bech32 characters to Python's base-32 digits so int(..., 32) reads a whole field.
_TO_BASE32_DIGITS = str.maketrans(_BECH32_CHARSET, "0123456789abcdefghijklmnopqrstuv")
_BECH32_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_SIGNATURE_U5 = 104  # 65 bytes (r, s, recovery id) in 5-bit groups
_CHECKSUM_U5 = 6
_TIMESTAMP_U5 = 7
_MAX_INVOICE_LEN = 7089  # BOLT11 readers may cap the length; this is lnd's limit
_HASH_U5 = 52
_PAYEE_U5 = 53


class InvoiceError(ValueError):
    """A payment request could not be used; the message says why."""


@dataclass(frozen=True)
class DecodedInvoice:
    """The facts of a BOLT11 invoice this project relies on."""

    payment_request: str
    payment_hash: str
    amount_msat: int | None
    timestamp: int
    expiry: int
    network: str
    description: str | None
    description_hash: str | None
    payee: str
    payment_secret: str
    min_final_cltv_expiry: int

    @property
    def expires_at(self) -> int:
        """Unix time after which the invoice must not be paid."""
        return self.timestamp + self.expiry

    @property
    def network_name(self) -> str:
        """``mainnet``, ``testnet``, ``signet`` or ``regtest``."""
        return _NETWORK_NAMES[self.network]

    def is_expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at


def network_prefix(network: str) -> str:
    """The BOLT11 currency prefix for a network name (or a prefix given as is)."""
    if network in NETWORK_PREFIXES:
        return NETWORK_PREFIXES[network]
    if network in _NETWORK_NAMES:
        return network
    known = ", ".join(sorted(NETWORK_PREFIXES))
    raise ValueError(f"unknown network {network!r}; expected one of {known}")


def _polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _BECH32_GENERATOR[i]
    return chk


def _u5_int(chars: str) -> int:
    return int(chars.translate(_TO_BASE32_DIGITS), 32) if chars else 0


def _field_bytes(chars: str) -> bytes:
    """A tagged field's bytes, dropping the trailing partial byte like BOLT11 readers do."""
    bits = 5 * len(chars)
    return (_u5_int(chars) >> (bits % 8)).to_bytes(bits // 8, "big")


def _bech32_split(text: str) -> tuple[str, str]:
    """Check the bech32 checksum; return the hrp and the data characters (no checksum)."""
    if len(text) > _MAX_INVOICE_LEN:
        raise InvoiceError("payment request is too long")
    if text != text.lower() and text != text.upper():
        raise InvoiceError("payment request mixes upper and lower case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 3 or pos + 1 + _CHECKSUM_U5 > len(text):
        raise InvoiceError("not a BOLT11 payment request (no bech32 separator)")
    hrp, data = text[:pos], text[pos + 1 :]
    try:
        values = [_BECH32_VALUES[char] for char in data]
    except KeyError:
        raise InvoiceError("payment request has characters outside bech32") from None
    if any(ord(char) < 33 or ord(char) > 126 for char in hrp):
        raise InvoiceError("payment request prefix has invalid characters")
    expanded = [ord(char) >> 5 for char in hrp] + [0] + [ord(char) & 31 for char in hrp]
    if _polymod(expanded + values) != 1:
        raise InvoiceError("payment request checksum is wrong (mistyped or truncated)")
    return hrp, data[:-_CHECKSUM_U5]


def decode_invoice(pr: str) -> DecodedInvoice:
    """Decode and verify a BOLT11 payment request.

    Raises InvoiceError with a readable reason for anything unusable: bad encoding or checksum,
    unknown network, bad amount, missing payment hash or secret, or an invalid signature.
    """
    if not isinstance(pr, str):
        raise InvoiceError("payment request must be text")
    text = pr.strip()
    if text[:10].lower() == "lightning:":
        text = text[10:]
    if not text:
        raise InvoiceError("payment request is empty")
    hrp, data = _bech32_split(text)
    try:
        currency, amount = verify_hrp(hrp)
    except Exception as exc:
        raise InvoiceError(f"payment request prefix {hrp!r} is not a known network/amount") from exc
    amount_part = hrp[2 + len(currency) :]
    if amount_part.endswith("p") and not amount_part[:-1].endswith("0"):
        raise InvoiceError("amount is not a whole number of millisatoshis")
    if amount is not None and amount <= 0:
        raise InvoiceError("amount must be positive when present")
    if len(data) < _TIMESTAMP_U5 + _SIGNATURE_U5:
        raise InvoiceError("payment request is too short to hold a signature")

    body, signature_chars = data[:-_SIGNATURE_U5], data[-_SIGNATURE_U5:]
    signature = _u5_int(signature_chars).to_bytes(65, "big")
    body_bits = 5 * len(body)
    padding = -body_bits % 8
    signing_data = (_u5_int(body) << padding).to_bytes((body_bits + padding) // 8, "big")

    timestamp = _u5_int(body[:_TIMESTAMP_U5])
    fields = _read_tagged_fields(body[_TIMESTAMP_U5:])
    message = hrp.encode() + signing_data

    payee = fields.get("n")
    if payee is not None:
        try:
            Signature(hrp=hrp, signing_data=signing_data, signature_data=signature).verify(payee)
        except Exception as exc:
            raise InvoiceError("signature does not match the payee in the invoice") from exc
    else:
        try:
            payee = PublicKey.from_signature_and_message(signature, message).format().hex()
        except Exception as exc:
            raise InvoiceError("signature is invalid") from exc

    if "p" not in fields:
        raise InvoiceError("invoice has no payment hash")
    if "s" not in fields:
        raise InvoiceError("invoice has no payment secret")
    if ("d" in fields) == ("h" in fields):
        raise InvoiceError("invoice must carry exactly one of description or description hash")
    return DecodedInvoice(
        payment_request=text.lower(),
        payment_hash=fields["p"],
        amount_msat=int(amount) if amount is not None else None,
        timestamp=timestamp,
        expiry=fields.get("x", DEFAULT_EXPIRY),
        network=currency,
        description=fields.get("d"),
        description_hash=fields.get("h"),
        payee=payee,
        payment_secret=fields["s"],
        min_final_cltv_expiry=fields.get("c", DEFAULT_MIN_FINAL_CLTV),
    )


def _read_tagged_fields(chars: str) -> dict:
    """The tagged fields this project uses; unknown or malformed ones are skipped (BOLT11)."""
    fields: dict = {}
    pos, end = 0, len(chars)
    while pos < end:
        if pos + 3 > end:
            raise InvoiceError("payment request ends inside a field header")
        tag = chars[pos]
        length = _BECH32_VALUES[chars[pos + 1]] * 32 + _BECH32_VALUES[chars[pos + 2]]
        pos += 3
        if pos + length > end:
            raise InvoiceError("payment request ends inside a field")
        value = chars[pos : pos + length]
        pos += length
        if tag in fields:
            continue
        if tag in ("p", "h", "s"):
            if length == _HASH_U5:
                fields[tag] = _field_bytes(value).hex()
        elif tag == "n":
            if length == _PAYEE_U5:
                fields[tag] = _field_bytes(value).hex()
        elif tag == "d":
            try:
                fields[tag] = _field_bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise InvoiceError("description is not valid UTF-8") from None
        elif tag in ("x", "c"):
            fields[tag] = _u5_int(value)
    if "d" in fields and "h" in fields:
        # The bolt11 package keeps whichever came first; both present is malformed anyway.
        raise InvoiceError("invoice must carry exactly one of description or description hash")
    return fields


def preimage_and_hash() -> tuple[bytes, str]:
    """A fresh payment preimage and its payment hash (hex), for minting invoices."""
    preimage = os.urandom(32)
    return preimage, hashlib.sha256(preimage).hexdigest()


def encode_invoice(
    amount_msat: int | None,
    *,
    private_key_hex: str | None = None,
    network: str = "bcrt",
    description: str = "Boltcard withdrawal",
    expiry: int = DEFAULT_EXPIRY,
    timestamp: int | None = None,
    payment_hash: str | None = None,
    payment_secret: str | None = None,
    min_final_cltv_expiry: int = DEFAULT_MIN_FINAL_CLTV,
) -> str:
    """A validly signed BOLT11 payment request (random node key and hash unless given)."""
    currency = network_prefix(network)
    if amount_msat is not None and amount_msat <= 0:
        raise ValueError("amount_msat must be positive or None")
    if payment_hash is None:
        payment_hash = preimage_and_hash()[1]
    tags = Tags()
    tags.add(TagChar.payment_hash, payment_hash)
    tags.add(TagChar.payment_secret, payment_secret or os.urandom(32).hex())
    tags.add(TagChar.description, description)
    tags.add(TagChar.expire_time, expiry)
    tags.add(TagChar.min_final_cltv_expiry, min_final_cltv_expiry)
    invoice = bolt11.Bolt11(
        currency=currency,
        date=int(time.time()) if timestamp is None else timestamp,
        tags=tags,
        amount_msat=bolt11.MilliSatoshi(amount_msat) if amount_msat is not None else None,
    )
    return bolt11.encode(invoice, private_key_hex or os.urandom(32).hex())
