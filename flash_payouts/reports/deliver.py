"""One attempt at sending a report: by SMTP (aiosmtplib) or to a webhook (aiohttp).

A failure is a ``DeliveryError`` whose text is safe to store in the ledger and to log: the
exception's kind and the server's answer, never a password, a secret or the webhook's URL
(whose query may carry a token).

A webhook receives the report's JSON, signed like BTCPay Server's own webhooks: the header
``Flash-Signature: sha256=<hex>`` is the HMAC-SHA256 of the body under the target's secret.
``Flash-Delivery`` carries the delivery id, the same on every attempt at one period's report.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from email.message import EmailMessage
from urllib.parse import urlsplit

import aiohttp
import aiosmtplib

from ledger.reports import Schedule

from .. import __version__

SIGNATURE_HEADER = "Flash-Signature"
DELIVERY_HEADER = "Flash-Delivery"
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}


class DeliveryError(Exception):
    """A failed attempt, with a one-line reason fit for the ledger and the log."""


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def send_email(
    schedule: Schedule, message: EmailMessage, *, password: str | None, timeout: float
) -> None:
    security = schedule.smtp_security or "starttls"
    try:
        await aiosmtplib.send(
            message,
            hostname=schedule.smtp_host,
            port=schedule.smtp_port or DEFAULT_PORTS[security],
            username=schedule.smtp_username or None,
            password=password if schedule.smtp_username else None,
            use_tls=security == "tls",
            # Required, not opportunistic: a password is never sent over a plain connection.
            start_tls=security == "starttls",
            timeout=timeout,
        )
    except aiosmtplib.SMTPException as exc:
        raise DeliveryError(f"SMTP {type(exc).__name__}: {_one_line(str(exc))}") from None
    except (OSError, TimeoutError) as exc:
        raise DeliveryError(f"SMTP server {schedule.smtp_host}: {_reason(exc)}") from None


async def send_webhook(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    secret: str,
    delivery_id: str,
    timeout: float,
) -> None:
    host = urlsplit(url).hostname or "?"
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"flash-payouts/{__version__}",
        SIGNATURE_HEADER: signature(secret, body),
        DELIVERY_HEADER: delivery_id,
    }
    try:
        async with session.post(
            url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            if not 200 <= resp.status < 300:
                raise DeliveryError(f"webhook at {host} answered HTTP {resp.status}")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise DeliveryError(f"webhook at {host}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "no answer in time"
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
