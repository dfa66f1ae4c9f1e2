"""A client for the part of BTCPay Server's Greenfield API that payouts need.

Every call has a timeout. Idempotent calls (GET, PUT, DELETE) are retried with exponential
backoff on network errors, timeouts and 5xx answers; POSTs are never retried, since a claim or a
webhook registration that timed out may still have happened. Errors are typed so callers can
tell "BTCPay is down, try later" from "this key cannot do that", and carry what BTCPay said:
the permission a 403 names in ``missingPermission``, and a 422's list of ``{path, message}``
(``path`` is the C# property name: ``Destination``, ``Amount``, ``PayoutMethodId``, ...).

The API key is sent as ``Authorization: token <key>`` and never appears in an error or a log.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import re
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import aiohttp

DEFAULT_TIMEOUT = 10.0

CAN_VIEW_PAYOUTS = "btcpay.store.canviewpayouts"
CAN_MODIFY_WEBHOOKS = "btcpay.store.webhooks.canmodifywebhooks"
# What `btcpay connect` needs: read payouts, and register the webhook that reports them.
REQUIRED_PERMISSIONS = (CAN_VIEW_PAYOUTS, CAN_MODIFY_WEBHOOKS)

# BTCPay's own implications between policies (Policies.cs): holding the key also grants the
# values. Pull-payment policies do not grant canviewpayouts.
_IMPLIES: dict[str, tuple[str, ...]] = {
    "btcpay.store.canmodifystoresettings": (
        "btcpay.store.canviewstoresettings",
        "btcpay.store.canmanagepayouts",
        "btcpay.store.canmanagepullpayments",
        CAN_MODIFY_WEBHOOKS,
    ),
    "btcpay.store.canviewstoresettings": (CAN_VIEW_PAYOUTS, "btcpay.store.canviewpullpayments"),
    "btcpay.store.canmanagepayouts": (CAN_VIEW_PAYOUTS,),
    "btcpay.store.webhooks.canmodifywebhooks": ("btcpay.store.webhooks.canviewwebhooks",),
}

# Older servers name the permission only in the message, after "permission" (quoted or not).
_PERMISSION_IN_MESSAGE = re.compile(
    r"permission:?\s*\"?(btcpay\.[a-z0-9_.]*[a-z0-9]|unrestricted)", re.IGNORECASE
)
# LightningLikePayoutHandler.ValidateClaimDestination's refusal of an invoice that expires
# before the pull payment's BOLT11Expiration.
_EXPIRY_TOO_SOON = re.compile(r"BOLT11 invoice must have an expiry date of at least", re.I)
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_MAX_ELEMENT_BYTES = 16 * 1024 * 1024
_CHUNK = 64 * 1024


class GreenfieldError(Exception):
    """Any failure talking to BTCPay; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class GreenfieldUnavailable(GreenfieldError):
    """BTCPay could not be reached, timed out, or answered 5xx: worth trying again later."""


class GreenfieldAuthError(GreenfieldError):
    """401 (unknown key) or 403 (a permission is missing; ``missing_permission`` names it)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        missing_permission: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.missing_permission = missing_permission


class GreenfieldValidationError(GreenfieldError):
    """400 or 422: BTCPay refused the request; ``code`` and ``message`` are BTCPay's own."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.errors = errors or []


class GreenfieldNotFound(GreenfieldError):
    """404: no such payout, pull payment or webhook. (A store that does not exist, or that the
    key cannot see, is a 403 naming the missing permission.)"""


def refused_for_invoice_expiry(error: GreenfieldError) -> bool:
    """Whether BTCPay refused a claim because the invoice expires sooner than the pull
    payment's BOLT11Expiration allows: a 422 on ``Destination`` with BTCPay's message."""
    return (
        isinstance(error, GreenfieldValidationError)
        and error.status == 422
        and any(
            str(e.get("path", "")).lower() == "destination"
            and _EXPIRY_TOO_SOON.search(str(e.get("message", "")))
            for e in error.errors
        )
    )


@dataclass(frozen=True)
class ApiKeyInfo:
    """What ``GET /api/v1/api-keys/current`` says of a key (never the key itself)."""

    label: str
    permissions: tuple[str, ...]

    def allows(self, policy: str, store_id: str | None = None) -> bool:
        return permission_granted(self.permissions, policy, store_id)

    def missing(
        self, store_id: str | None, required: Iterable[str] = REQUIRED_PERMISSIONS
    ) -> list[str]:
        return [p for p in required if not self.allows(p, store_id)]


def _implied(policy: str) -> set[str]:
    found = {policy}
    for child in _IMPLIES.get(policy, ()):
        found |= _implied(child)
    return found


def permission_granted(permissions: Iterable[str], policy: str, store_id: str | None) -> bool:
    """Whether a key's permissions grant ``policy`` on ``store_id`` (BTCPay's rules).

    A permission is unscoped (every store of the key's owner) or scoped by a ``:STOREID``
    suffix; ``unrestricted`` grants everything.
    """
    for text in permissions:
        granted, _, scope = text.partition(":")
        if granted == "unrestricted":
            return True
        if policy in _implied(granted) and (not scope or scope == store_id):
            return True
    return False


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


class GreenfieldClient:
    """Greenfield calls against one BTCPay Server with one API key (or none, for claims)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        session: aiohttp.ClientSession | None = None,
        retries: int = 3,
        backoff: float = 0.25,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self._session = session
        self._owns_session = session is None

    def __repr__(self) -> str:
        return f"GreenfieldClient({self.base_url!r}, api_key={'***' if self._api_key else None})"

    async def __aenter__(self) -> GreenfieldClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _headers(self, auth: bool) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if auth and self._api_key:
            headers["Authorization"] = f"token {self._api_key}"
        return headers

    # --- the calls ----------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        return await self._json("GET", "/api/v1/health", auth=False)

    async def current_api_key(self) -> ApiKeyInfo:
        body = await self._json("GET", "/api/v1/api-keys/current")
        permissions = body.get("permissions") if isinstance(body, dict) else None
        if not isinstance(permissions, list):
            raise GreenfieldError("BTCPay's api-keys/current answer has no permissions list")
        return ApiKeyInfo(str(body.get("label") or ""), tuple(str(p) for p in permissions))

    async def get_store(self, store_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/api/v1/stores/{_seg(store_id)}")

    async def get_payout(self, store_id: str, payout_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/api/v1/stores/{_seg(store_id)}/payouts/{_seg(payout_id)}")

    async def list_payouts(
        self, store_id: str, include_cancelled: bool = True
    ) -> list[dict[str, Any]]:
        """Every payout of a store in one list (small stores; see ``iter_payouts``)."""
        return [p async for p in self.iter_payouts(store_id, include_cancelled)]

    async def iter_payouts(
        self,
        store_id: str,
        include_cancelled: bool = True,
        *,
        progress: Callable[..., None] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every payout of a store, parsed one at a time from the response stream.

        BTCPay answers this call with a single unpaged array, which for a busy store runs to
        tens of megabytes; parsing it incrementally keeps only the payouts being yielded in
        memory. A failure before the first payout is retried like any GET; after it the error
        reaches the caller, who has already acted on part of the list. ``progress(received,
        total=...)`` is told the bytes read so far and the length the server announced (or None).
        """
        path = f"/api/v1/stores/{_seg(store_id)}/payouts"
        params = {"includeCancelled": "true" if include_cancelled else "false"}
        # A long list may take longer than one call's timeout to arrive: bound the gaps.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout, sock_read=self.timeout
        )
        attempt = 0
        while True:
            yielded = False
            try:
                async with self._client().request(
                    "GET",
                    self.base_url + path,
                    params=params,
                    headers=self._headers(True),
                    timeout=timeout,
                ) as response:
                    if response.status >= 300:
                        raise await _error_from(response)
                    total = response.content_length
                    report = functools.partial(progress, total=total) if progress else None
                    async for item in _iter_json_array(response.content, report):
                        yielded = True
                        yield item
                return
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error: GreenfieldError = GreenfieldUnavailable(
                    f"BTCPay at {self.base_url} unreachable: {_describe(exc)}"
                )
                cause: BaseException = exc
            except GreenfieldUnavailable as exc:
                error, cause = exc, exc
            if yielded or attempt >= self.retries:
                raise error from cause
            await self._sleep(attempt)
            attempt += 1

    async def get_pull_payment(self, pull_payment_id: str) -> dict[str, Any]:
        """A pull payment (anonymous: its id is the secret), with its ``BOLT11Expiration``
        (days) and ``autoApproveClaims``."""
        return await self._json("GET", f"/api/v1/pull-payments/{_seg(pull_payment_id)}", auth=False)

    async def pull_payment_pays_lightning(self, pull_payment_id: str) -> bool:
        """Whether the pull payment pays BTC-LN (in BTC or SATS). A pull payment's JSON does not
        list its payout methods; BTCPay gives its LNURL-withdraw exactly when it does."""
        try:
            await self._json(
                "GET", f"/api/v1/pull-payments/{_seg(pull_payment_id)}/lnurl", auth=False
            )
        except GreenfieldValidationError as exc:
            if exc.code == "lnurl-not-supported":
                return False
            raise
        return True

    async def claim_payout(
        self,
        pull_payment_id: str,
        destination: str,
        payout_method_id: str = "BTC-LN",
        amount: Decimal | str | None = None,
    ) -> dict[str, Any]:
        """Claim a payout on a pull payment (anonymous). Never retried: it is not idempotent."""
        body: dict[str, Any] = {"destination": destination, "payoutMethodId": payout_method_id}
        if amount is not None:
            body["amount"] = str(amount)
        return await self._json(
            "POST",
            f"/api/v1/pull-payments/{_seg(pull_payment_id)}/payouts",
            body=body,
            auth=False,
        )

    async def create_webhook(
        self,
        store_id: str,
        url: str,
        secret: str,
        *,
        events: Iterable[str] | None = None,
        automatic_redelivery: bool = True,
        enabled: bool = True,
    ) -> dict[str, Any]:
        """Register a webhook; ``events`` None subscribes to everything."""
        specific = list(events or [])
        body = {
            "enabled": enabled,
            "automaticRedelivery": automatic_redelivery,
            "url": url,
            "authorizedEvents": {"everything": not specific, "specificEvents": specific},
            "secret": secret,
        }
        answer = await self._json("POST", f"/api/v1/stores/{_seg(store_id)}/webhooks", body=body)
        answer.pop("secret", None)  # the caller has it; keep it out of whatever gets logged
        return answer

    async def list_webhooks(self, store_id: str) -> list[dict[str, Any]]:
        return await self._json("GET", f"/api/v1/stores/{_seg(store_id)}/webhooks")

    async def delete_webhook(self, store_id: str, webhook_id: str) -> None:
        await self._json("DELETE", f"/api/v1/stores/{_seg(store_id)}/webhooks/{_seg(webhook_id)}")

    # --- transport ----------------------------------------------------------------------------

    async def _json(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        auth: bool = True,
        params: dict[str, str] | None = None,
    ) -> Any:
        idempotent = method in ("GET", "HEAD", "PUT", "DELETE")
        attempts = self.retries + 1 if idempotent else 1
        for attempt in range(attempts):
            try:
                return await self._once(method, path, body=body, auth=auth, params=params)
            except GreenfieldUnavailable:
                if attempt + 1 >= attempts:
                    raise
            await self._sleep(attempt)
        raise AssertionError("unreachable")

    async def _once(
        self,
        method: str,
        path: str,
        *,
        body: Any,
        auth: bool,
        params: dict[str, str] | None,
    ) -> Any:
        try:
            async with self._client().request(
                method,
                self.base_url + path,
                json=body,
                params=params,
                headers=self._headers(auth),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                if response.status >= 300:
                    raise await _error_from(response)
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise GreenfieldUnavailable(
                f"BTCPay at {self.base_url} unreachable: {_describe(exc)}"
            ) from None
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise GreenfieldError(
                f"BTCPay answered {method} {path} with a body that is not JSON"
            ) from None

    async def _sleep(self, attempt: int) -> None:
        # Full jitter keeps many workers from retrying in lockstep against a recovering server.
        await asyncio.sleep(random.uniform(0, self.backoff * (2**attempt)))


def _seg(value: str) -> str:
    return quote(str(value), safe="")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


async def _error_from(response: aiohttp.ClientResponse) -> GreenfieldError:
    """Turn a non-2xx answer into the matching error, with BTCPay's code and message."""
    status = response.status
    try:
        raw = await response.content.read(64 * 1024)
        body: Any = json.loads(raw) if raw.strip() else None
    except (ValueError, aiohttp.ClientError, TimeoutError, OSError):
        body = None
    code = message = named_permission = None
    errors: list[dict[str, Any]] = []
    if isinstance(body, dict):
        code = body.get("code") if isinstance(body.get("code"), str) else None
        message = body.get("message") if isinstance(body.get("message"), str) else None
        if isinstance(body.get("missingPermission"), str) and body["missingPermission"]:
            named_permission = body["missingPermission"]
    elif isinstance(body, list):  # 422: [{"path", "message"}, ...]
        errors = [e for e in body if isinstance(e, dict)]
        message = "; ".join(
            f"{e.get('path')}: {e.get('message')}" if e.get("path") else str(e.get("message"))
            for e in errors
        )
    where = f"{response.method} {response.url.path}"
    text = message or response.reason or "no detail"
    if status in (401, 403):
        if named_permission is None:
            found = _PERMISSION_IN_MESSAGE.search(message or "")
            named_permission = found.group(1) if found else None
        if named_permission is not None:
            text = f"missing permission {named_permission}"
        return GreenfieldAuthError(
            f"BTCPay refused {where} ({status}): {text}",
            status=status,
            code=code,
            missing_permission=named_permission,
        )
    if status == 404:
        return GreenfieldNotFound(f"BTCPay: not found: {where}", status=status, code=code)
    if status in (400, 422):
        return GreenfieldValidationError(
            f"BTCPay rejected {where} ({status}): {text}", status=status, code=code, errors=errors
        )
    if status in _RETRY_STATUSES:
        return GreenfieldUnavailable(
            f"BTCPay answered {where} with {status}: {text}", status=status, code=code
        )
    return GreenfieldError(
        f"BTCPay answered {where} with {status}: {text}", status=status, code=code
    )


async def _iter_json_array(
    stream: aiohttp.StreamReader, on_bytes: Callable[[int], None] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Yield the objects of a top-level JSON array as their bytes arrive.

    ``raw_decode`` parses each element; an element cut off at the end of the buffer fails to
    parse and is tried again once more bytes are in, so only the unparsed tail is ever held.
    """
    decoder = json.JSONDecoder()
    buf = ""
    pos = 0
    eof = False
    started = False
    expect_value = False
    pending = b""
    received = 0

    async def more() -> bool:
        nonlocal buf, pos, eof, pending, received
        if eof:
            return False
        chunk = await stream.read(_CHUNK)
        received += len(chunk)
        if on_bytes is not None and chunk:
            on_bytes(received)
        if not chunk:
            eof = True
            tail = pending.decode("utf-8")
            pending = b""
            buf = buf[pos:] + tail
            pos = 0
            return bool(tail)
        data = pending + chunk
        # Keep an incomplete UTF-8 sequence for the next chunk.
        cut = len(data)
        for back in range(1, min(4, len(data)) + 1):
            byte = data[-back]
            if byte & 0xC0 != 0x80:  # a lead byte (or ASCII): is its sequence complete?
                need = 1 if byte < 0x80 else 2 if byte >> 5 == 6 else 3 if byte >> 4 == 14 else 4
                if need > back:
                    cut = len(data) - back
                break
        pending = data[cut:]
        try:
            text = data[:cut].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GreenfieldError("BTCPay's payout list is not valid UTF-8") from exc
        buf = buf[pos:] + text
        pos = 0
        if len(buf) > _MAX_ELEMENT_BYTES:
            raise GreenfieldError("BTCPay's payout list holds an element too large to parse")
        return True

    def skip_ws() -> None:
        nonlocal pos
        while pos < len(buf) and buf[pos] in " \t\r\n":
            pos += 1

    while True:
        skip_ws()
        if pos >= len(buf):
            if not await more():
                raise GreenfieldError("BTCPay's payout list ended before it was complete")
            continue
        char = buf[pos]
        if not started:
            if char != "[":
                raise GreenfieldError("BTCPay's payout list is not a JSON array")
            started = True
            pos += 1
            skip_ws()
            while pos >= len(buf) and await more():
                skip_ws()
            if pos < len(buf) and buf[pos] == "]":
                return
            expect_value = True
            continue
        if not expect_value:
            if char == "]":
                return
            if char != ",":
                raise GreenfieldError("BTCPay's payout list is malformed JSON")
            pos += 1
            expect_value = True
            continue
        if char != "{":
            raise GreenfieldError("BTCPay's payout list holds something other than objects")
        try:
            item, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError:
            if await more():
                continue
            raise GreenfieldError("BTCPay's payout list is malformed JSON") from None
        pos = end
        expect_value = False
        yield item
