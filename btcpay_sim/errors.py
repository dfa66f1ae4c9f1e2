"""Greenfield's two error shapes and the middleware that renders them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web


class APIError(Exception):
    """BTCPay's `{"code", "message"}` error (CreateAPIError answers 400 unless told)."""

    def __init__(
        self, code: str, message: str, status: int = 400, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.extra}


class ValidationFailed(Exception):
    """BTCPay's model validation error: 422 with `[{"path", "message"}, ...]`.

    ``path`` is the C# property name BTCPay's model state uses (``Destination``, ``Amount``,
    ``PayoutMethodId``, ``Revision``, ...), not the JSON field's camelCase name.
    """

    def __init__(self, path: str, message: str, *more: tuple[str, str]) -> None:
        super().__init__(message)
        self.errors = [{"path": p, "message": m} for p, m in ((path, message), *more)]


class Problems:
    """Collects validation errors the way BTCPay's model state does, to answer them together."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.found.append((path, message))

    def raise_any(self) -> None:
        if self.found:
            raise ValidationFailed(*self.found[0], *self.found[1:])


def not_found(code: str, what: str) -> APIError:
    return APIError(code, f"The {what} was not found", status=404)


def missing_permission(policy: str) -> APIError:
    """BTCPay's 403: also its answer for a store that does not exist or the key cannot see."""
    return APIError(
        "missing-permission",
        f'Insufficient API Permissions. Please use an API key with permission "{policy}". '
        "You can create an API key in your account's settings / Api Keys.",
        status=403,
        extra={"missingPermission": policy},
    )


def unauthenticated() -> APIError:
    return APIError(
        "unauthenticated", "Authentication is required for accessing this endpoint", 401
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except APIError as exc:
        return web.json_response(exc.body(), status=exc.status)
    except ValidationFailed as exc:
        return web.json_response(exc.errors, status=422)
