"""Reading query parameters: every bad value is a 400 that names the parameter."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from multidict import MultiMapping

from ledger.status import STATUSES

from .errors import bad_parameter

MAX_LIMIT = 500
MAX_TEXT = 64
_PLAIN_DECIMAL = re.compile(r"^\d{1,16}(\.\d{1,12})?$")
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_STATUS_BY_LOWER = {s.lower(): s for s in STATUSES}


def text(query: MultiMapping[str], name: str, *, required: bool = False) -> str | None:
    value = query.get(name)
    if value is None or value == "":
        if required:
            raise bad_parameter(name, "is required")
        return None
    return checked_text(name, value)


def checked_text(name: str, value: str) -> str:
    if len(value) > MAX_TEXT:
        raise bad_parameter(name, f"longer than {MAX_TEXT} characters")
    if not value.isprintable():
        raise bad_parameter(name, "contains control characters")
    return value


def integer(query: MultiMapping[str], name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_parameter(name, f"{raw[:20]!r} is not an integer") from None
    if not lo <= value <= hi:
        raise bad_parameter(name, f"must be between {lo} and {hi}")
    return value


def limit(query: MultiMapping[str], default: int = 50) -> int:
    return integer(query, "limit", default, 1, MAX_LIMIT)


def offset(query: MultiMapping[str]) -> int:
    return integer(query, "offset", 0, 0, 10_000_000)


def amount(query: MultiMapping[str], name: str) -> Decimal | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    value = plain_decimal(raw)
    if value is None:
        raise bad_parameter(name, "must be a non-negative decimal number such as 1500 or 0.25")
    return value


def plain_decimal(raw: str) -> Decimal | None:
    if not _PLAIN_DECIMAL.match(raw):
        return None
    try:
        return Decimal(raw)
    except InvalidOperation:
        return None


def _parse_instant(name: str, raw: str) -> tuple[datetime, bool]:
    """An instant and whether it was given as a bare date."""
    if _DATE_ONLY.match(raw):
        try:
            return datetime.fromisoformat(raw).replace(tzinfo=UTC), True
        except ValueError:
            raise bad_parameter(name, f"{raw!r} is not a valid date") from None
    try:
        value = datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError:
        raise bad_parameter(
            name, f"{raw[:40]!r} is not an ISO 8601 date (2024-05-01) or date-time"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC), False
    except (OverflowError, ValueError):
        raise bad_parameter(name, f"{raw[:40]!r} is out of range") from None


def period(query: MultiMapping[str]) -> tuple[datetime | None, datetime | None]:
    """``startDate`` (inclusive) and ``endDate`` as instants; a bare end date includes its day."""
    start = end = None
    raw = query.get("startDate")
    if raw:
        start, _ = _parse_instant("startDate", raw)
    raw = query.get("endDate")
    if raw:
        end, bare = _parse_instant("endDate", raw)
        if bare:
            try:
                end += timedelta(days=1)
            except OverflowError:
                raise bad_parameter("endDate", "is out of range") from None
    if start is not None and end is not None and end <= start:
        raise bad_parameter("endDate", "must be after startDate")
    return start, end


def day_period(
    query: MultiMapping[str], default_days: int | None
) -> tuple[date | None, date | None]:
    """Whole UTC days for the rollup-backed reads: first and last day, both inclusive."""
    start, end = period(query)
    last = (end - timedelta(microseconds=1)).date() if end is not None else None
    first = start.date() if start is not None else None
    if default_days is not None:
        if last is None:
            last = datetime.now(UTC).date()
        if first is None:
            first = last - timedelta(days=default_days - 1)
        if first > last:
            raise bad_parameter("endDate", "must be after startDate")
    return first, last


def statuses(query: MultiMapping[str]) -> tuple[str, ...]:
    found: list[str] = []
    for raw in query.getall("status", []):
        for part in raw.split(","):
            part = part.strip()
            if not part:
                continue
            status = _STATUS_BY_LOWER.get(part.lower())
            if status is None:
                raise bad_parameter("status", f"{part[:20]!r} is not one of {', '.join(STATUSES)}")
            if status not in found:
                found.append(status)
    return tuple(found)


def choice(query: MultiMapping[str], name: str, options: tuple[str, ...], default: str) -> str:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if raw not in options:
        raise bad_parameter(name, f"{raw[:20]!r} is not one of {', '.join(options)}")
    return raw


def descending(query: MultiMapping[str], default: str = "desc") -> bool:
    return choice(query, "order", ("asc", "desc"), default) == "desc"


# --- keyset cursors ----------------------------------------------------------------------------

_KEY_TYPES: dict[str, tuple[str, ...]] = {
    "createdAt": ("datetime", "str"),
    "amount": ("decimal", "str"),
    "status": ("str", "datetime", "str"),
}


def encode_cursor(sort: str, desc: bool, values: tuple[Any, ...]) -> str:
    encoded = []
    for kind, value in zip(_KEY_TYPES[sort], values, strict=True):
        if kind == "datetime":
            encoded.append(value.astimezone(UTC).isoformat())
        elif kind == "decimal":
            encoded.append(str(value))
        else:
            encoded.append(value)
    raw = json.dumps([sort, "desc" if desc else "asc", *encoded], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(raw: str, sort: str, desc: bool) -> tuple[Any, ...]:
    """The key values a cursor carries; 400 naming ``cursor`` when it is not one of ours or
    was made for another sort order."""
    problem = "not a cursor this API gave; use the nextCursor of a previous answer"
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad_parameter("cursor", problem) from None
    if not isinstance(data, list) or len(data) < 2 or data[0] not in _KEY_TYPES:
        raise bad_parameter("cursor", problem)
    if data[0] != sort or data[1] != ("desc" if desc else "asc"):
        raise bad_parameter("cursor", "made for another sort or order; start again without it")
    kinds = _KEY_TYPES[sort]
    if len(data) != 2 + len(kinds):
        raise bad_parameter("cursor", problem)
    values: list[Any] = []
    for kind, value in zip(kinds, data[2:], strict=True):
        if not isinstance(value, str) or len(value) > 100:
            raise bad_parameter("cursor", problem)
        try:
            if kind == "datetime":
                parsed = datetime.fromisoformat(value)
                if parsed.tzinfo is None:
                    raise ValueError
                values.append(parsed.astimezone(UTC))
            elif kind == "decimal":
                number = Decimal(value)
                if not number.is_finite() or abs(number) > Decimal(10) ** 17:
                    raise ValueError
                values.append(number)
            else:
                values.append(checked_text("cursor", value))
        except (ValueError, InvalidOperation, OverflowError):
            raise bad_parameter("cursor", problem) from None
    return tuple(values)
