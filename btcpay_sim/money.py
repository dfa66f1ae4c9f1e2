"""Amounts: BTCPay sends decimals as strings and knows BTC and its SATS denomination."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

SUPPORTED_CURRENCIES = ("BTC", "SATS")
_MSAT_PER_UNIT = {"BTC": Decimal(100_000_000_000), "SATS": Decimal(1000)}
_SATS_PER_BTC = Decimal(100_000_000)


def decimal_text(value: Decimal) -> str:
    """Plain decimal text without exponent or trailing zeros ("0.0001", "250")."""
    text = format(value.normalize(), "f")
    return text


def parse_amount(value: object) -> Decimal:
    """A JSON amount given as number or string; ValueError when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("amount must be a number or a decimal string")
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError("amount must be a number or a decimal string") from exc
    if not amount.is_finite():
        raise ValueError("amount must be finite")
    return amount


def from_msat(msat: int, currency: str) -> Decimal:
    return Decimal(msat) / _MSAT_PER_UNIT[currency]


def to_msat(amount: Decimal, currency: str) -> Decimal:
    return amount * _MSAT_PER_UNIT[currency]


def to_btc(amount: Decimal, currency: str) -> Decimal:
    return amount if currency == "BTC" else amount / _SATS_PER_BTC
