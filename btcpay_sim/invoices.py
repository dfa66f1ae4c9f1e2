"""Minting and reading BOLT11 invoices.

The simulator mints its own regtest invoices (for tests, the demo and bulk seeding) and reads
claimed ones with the ``bolt11`` package, the same way BTCPay parses a Lightning destination.

Minting is a small hand-rolled encoder rather than ``bolt11.encode``: seeding 100,000 payouts
needs invoices in microseconds, and the package's bit-string encoder takes about a millisecond.
The tests check every minted invoice decodes with the package.

Preimages are derived from the payment secret with a fixed tag, so the simulator can later
publish a preimage that really hashes to the payment hash of any invoice it minted itself.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from decimal import Decimal

from bech32 import CHARSET
from coincurve import PrivateKey

# The gateway's module installs faster bit unpacking and checksum into bolt11's decoder (same
# results, see its ``u5_to_bitarray`` and ``bech32_polymod``); importing it here gives the
# simulator the same decoder, and its minter the same checksum.
from lnurl_gateway.invoices import bech32_polymod, bolt11

_PREIMAGE_TAG = b"btcpay-sim/preimage"
# Tag type values in the bech32 alphabet (BOLT11 "tagged fields").
_TAG_P = CHARSET.index("p")
_TAG_S = CHARSET.index("s")
_TAG_D = CHARSET.index("d")
_TAG_X = CHARSET.index("x")
_TAG_C = CHARSET.index("c")


@dataclass(frozen=True, slots=True)
class MintedInvoice:
    bolt11: str
    payment_hash: str
    preimage: str
    amount_msat: int


@dataclass(frozen=True, slots=True)
class ReadInvoice:
    """What the simulator needs from a claimed BOLT11."""

    network: str
    amount_msat: int | None
    payment_hash: str
    payment_secret: str | None
    expires_at: int


class InvalidInvoice(ValueError):
    pass


def preimage_for(payment_secret_hex: str) -> bytes:
    return hashlib.sha256(_PREIMAGE_TAG + bytes.fromhex(payment_secret_hex)).digest()


def known_preimage(payment_hash: str, payment_secret: str | None) -> str | None:
    """The preimage of an invoice minted here, or None for a foreign invoice."""
    if payment_secret is None:
        return None
    candidate = preimage_for(payment_secret)
    if hashlib.sha256(candidate).hexdigest() != payment_hash:
        return None
    return candidate.hex()


class InvoiceMinter:
    """Signs invoices with one node key; cheap enough for bulk seeding."""

    def __init__(self, node_key: bytes | None = None, network: str = "bcrt") -> None:
        self._key = PrivateKey(node_key or os.urandom(32))
        self.network = network
        self.node_id = self._key.public_key.format(compressed=True).hex()

    def mint(
        self,
        amount_msat: int | None,
        description: str = "btcpay-sim",
        expiry: int = 3600,
        timestamp: int | None = None,
    ) -> MintedInvoice:
        secret = os.urandom(32)
        preimage = preimage_for(secret.hex())
        payment_hash = hashlib.sha256(preimage).digest()
        hrp = "ln" + self.network + (_amount_text(amount_msat) if amount_msat else "")
        data = _int_words(int(time.time()) if timestamp is None else timestamp, 7)
        data += _tagged(_TAG_P, _bytes_to_words(payment_hash))
        data += _tagged(_TAG_S, _bytes_to_words(secret))
        data += _tagged(_TAG_D, _bytes_to_words(description.encode()))
        data += _tagged(_TAG_X, _minimal_int_words(expiry))
        data += _tagged(_TAG_C, _minimal_int_words(18))
        signed = hrp.encode() + _words_to_bytes(data)
        signature = self._key.sign_recoverable(signed)
        data += _bytes_to_words(signature)
        text = hrp + "1" + "".join(CHARSET[w] for w in data + _checksum(hrp, data))
        return MintedInvoice(text, payment_hash.hex(), preimage.hex(), amount_msat or 0)


def read_invoice(text: str) -> ReadInvoice:
    """Decode and verify a BOLT11 with the bolt11 package; InvalidInvoice if unreadable."""
    try:
        decoded = bolt11.decode(text.strip())
    except Exception as exc:  # the package raises many unrelated types on garbage
        raise InvalidInvoice("The BOLT11 invoice could not be parsed") from exc
    return ReadInvoice(
        network=decoded.currency,
        amount_msat=int(decoded.amount_msat) if decoded.amount_msat else None,
        payment_hash=decoded.payment_hash,
        payment_secret=decoded.payment_secret,
        expires_at=decoded.date + decoded.expiry,
    )


def msat_to_btc(msat: int) -> Decimal:
    return Decimal(msat) / Decimal(100_000_000_000)


def _amount_text(msat: int) -> str:
    # BOLT11 amounts are BTC with a multiplier; pico-BTC is a tenth of a millisatoshi.
    value = msat * 10
    for unit in ("p", "n", "u", "m"):
        if value % 1000:
            return f"{value}{unit}"
        value //= 1000
    return str(value)


def _int_words(value: int, count: int) -> list[int]:
    return [(value >> (5 * (count - 1 - i))) & 31 for i in range(count)]


def _minimal_int_words(value: int) -> list[int]:
    words: list[int] = []
    while value:
        words.append(value & 31)
        value >>= 5
    return words[::-1] or [0]


def _tagged(tag: int, words: list[int]) -> list[int]:
    return [tag, len(words) >> 5, len(words) & 31, *words]


def _bytes_to_words(data: bytes) -> list[int]:
    bits = len(data) * 8
    padded = (bits + 4) // 5 * 5
    number = int.from_bytes(data, "big") << (padded - bits)
    return _int_words(number, padded // 5)


def _words_to_bytes(words: list[int]) -> bytes:
    number = 0
    for word in words:
        number = number << 5 | word
    bits = len(words) * 5
    padded = (bits + 7) // 8 * 8
    return (number << (padded - bits)).to_bytes(padded // 8, "big")


def _checksum(hrp: str, data: list[int]) -> list[int]:
    values = [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp] + data
    polymod = bech32_polymod([*values, 0, 0, 0, 0, 0, 0]) ^ 1
    return [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
