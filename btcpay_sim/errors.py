"""Greenfield's two error shapes and the middleware that renders them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web


class APIError(Exception):
    """BTCPay's `{"code", "message"}` error (CreateAPIError answers 400 unless told)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class ValidationFailed(Exception):
    """BTCPay's model validation error: 422 with `[{"path", "message"}, ...]`."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.errors = [{"path": path, "message": message}]


def not_found(code: str, what: str) -> APIError:
    return APIError(code, f"The {what} was not found", status=404)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except APIError as exc:
        return web.json_response({"code": exc.code, "message": exc.message}, status=exc.status)
    except ValidationFailed as exc:
        return web.json_response(exc.errors, status=422)
