"""Identifiers shaped like BTCPay's: base58 text of random bytes."""

from __future__ import annotations

import os

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    chars: list[str] = []
    while number:
        number, digit = divmod(number, 58)
        chars.append(_ALPHABET[digit])
    leading_zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * leading_zeros + "".join(reversed(chars))


def store_id() -> str:
    return base58(os.urandom(32))


def pull_payment_id() -> str:
    return base58(os.urandom(20))


def payout_id() -> str:
    return base58(os.urandom(20))


def webhook_id() -> str:
    return base58(os.urandom(16))


def delivery_id() -> str:
    return base58(os.urandom(16))
