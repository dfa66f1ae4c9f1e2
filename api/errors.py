"""The API's one error shape, ``{"code", "message"}``, and the JSON encoding of its answers."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from aiohttp import web


class ApiError(Exception):
    """An answer other than success; ``code`` is stable for tools, ``message`` for people."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def bad_parameter(name: str, problem: str) -> ApiError:
    return ApiError(400, "invalid-parameter", f"{name}: {problem}")


def unauthorized(message: str = "credentials required") -> ApiError:
    return ApiError(
        401, "unauthorized", message, {"WWW-Authenticate": 'Bearer realm="flash", token'}
    )


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not-found", message)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        # The ledger hands out UTC already; only other zones (or none) need converting.
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        # Amounts travel as decimal strings, as in BTCPay's Greenfield API: no float rounding.
        return format(value.normalize(), "f")
    raise TypeError(f"cannot encode {type(value).__name__}")


# One encoder for every answer: json.dumps with options would build a new one per call.
_ENCODER = json.JSONEncoder(default=_default, separators=(",", ":"))


def dumps(data: Any) -> str:
    return _ENCODER.encode(data)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json")


def error_response(error: ApiError) -> web.Response:
    response = json_response({"code": error.code, "message": error.message}, error.status)
    response.headers.update(error.headers)
    return response
