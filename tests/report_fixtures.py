"""What the report tests share: a real SMTP server (aiosmtpd), a webhook target that fails on
demand, schedules written through the ledger's own functions, and a store's known day.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from api_fixtures import add_card, write_payout
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.reports import Schedule, add_schedule, new_schedule_id, sealing_context
from ledger.secretbox import SecretBox
from ledger.stores import upsert_store

STATES = ("AwaitingApproval", "AwaitingPayment", "InProgress", "Completed", "Cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- SMTP ----------------------------------------------------------------------------------------


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[tuple[str, str]] = []
        self.arrived = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(msg)  # type: ignore[arg-type]
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.arrived.set)
        return "250 Message accepted for delivery"

    def authenticate(self, server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((login, password))
        return AuthResult(success=(login, password) == ("reports", "s3cret pass"))


@dataclass
class SmtpServer:
    port: int
    inbox: _Inbox
    controller: Controller

    @property
    def messages(self) -> list[EmailMessage]:
        return self.inbox.messages

    async def wait_for(self, count: int, timeout: float = 20) -> list[EmailMessage]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.inbox.messages) < count:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"{len(self.inbox.messages)} of {count} emails arrived")
            self.inbox.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.inbox.arrived.wait(), min(left, 0.5))
        return self.inbox.messages

    def stop(self) -> None:
        self.controller.stop()


def start_smtp(
    *, tls: ssl.SSLContext | None = None, implicit_tls: bool = False, auth: bool = False
) -> SmtpServer:
    """An SMTP server on a free port: plain, with STARTTLS (``tls``) or implicit TLS; with
    ``auth``, it accepts only the login reports / "s3cret pass"."""
    inbox = _Inbox()
    inbox.loop = asyncio.get_running_loop()
    port = free_port()
    kwargs: dict[str, Any] = {}
    if tls is not None and not implicit_tls:
        kwargs.update(tls_context=tls, require_starttls=True)
    if implicit_tls:
        # aiosmtpd counts only STARTTLS as TLS for AUTH; this whole connection is TLS.
        kwargs.update(ssl_context=tls, auth_require_tls=False)
    if auth:
        kwargs.update(authenticator=inbox.authenticate, auth_required=True)
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return SmtpServer(port, inbox, controller)


def parts(msg: EmailMessage) -> dict[str, Any]:
    """The report email's text, HTML and attachment (name, bytes)."""
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    attachments = [(a.get_filename(), a.get_content()) for a in msg.iter_attachments()]
    return {
        "text": text.get_content() if text else None,
        "html": html.get_content() if html else None,
        "attachments": attachments,
    }


# --- webhooks ------------------------------------------------------------------------------------


@dataclass
class Hook:
    """A webhook target: answers with ``statuses`` in turn (then 200) and keeps what came."""

    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # event loop time of each call
    url: str = ""
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.times.append(asyncio.get_running_loop().time())
        self.received.append((dict(request.headers), body))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok" if status < 300 else "not now")

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]

    async def wait_for(self, count: int, timeout: float = 20) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.received) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{len(self.received)} of {count} webhook calls arrived")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def start_hook(statuses: Sequence[int] = ()) -> Hook:
    hook = Hook(list(statuses))
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    hook.runner = web.AppRunner(app, access_log=None)
    await hook.runner.setup()
    port = free_port()
    await web.TCPSite(hook.runner, "127.0.0.1", port).start()
    hook.url = f"http://127.0.0.1:{port}/hook?token=abc"
    return hook


# --- ledger --------------------------------------------------------------------------------------


async def make_schedule(
    engine: AsyncEngine,
    box: SecretBox,
    store_id: str,
    *,
    frequency: str = "daily",
    time_zone: str = "UTC",
    send_at: int = 0,
    smtp: SmtpServer | None = None,
    smtp_security: str = "none",
    smtp_login: tuple[str, str] | None = None,
    webhook: Hook | None = None,
    webhook_secret: str = "hook secret",
    created_at: datetime | None = None,
) -> Schedule:
    schedule_id = new_schedule_id()
    now = created_at or datetime.now(UTC)
    schedule = Schedule(
        id=schedule_id,
        store_id=store_id,
        frequency=frequency,
        time_zone=time_zone,
        send_at=send_at,
        email_to="merchant@shop.test,books@shop.test" if smtp else None,
        mail_from="reports@monitor.test" if smtp else None,
        smtp_host="localhost" if smtp else None,
        smtp_port=smtp.port if smtp else None,
        smtp_security=smtp_security if smtp else None,
        smtp_username=smtp_login[0] if smtp_login else None,
        smtp_password_sealed=box.seal_text(
            smtp_login[1], context=sealing_context(schedule_id, "smtp_password_sealed")
        )
        if smtp_login
        else None,
        webhook_url=webhook.url if webhook else None,
        webhook_secret_sealed=box.seal_text(
            webhook_secret, context=sealing_context(schedule_id, "webhook_secret_sealed")
        )
        if webhook
        else None,
        created_at=now,
        updated_at=now,
    )
    async with engine.begin() as conn:
        await add_schedule(conn, schedule)
    return schedule


async def store_with_a_known_day(engine: AsyncEngine, store_id: str, day: datetime) -> None:
    """Payouts in every state on ``day`` (UTC), some on the day before and after (which the
    day's report must leave out), two cards, and refused taps of one card."""
    from api_fixtures import add_tap

    async with engine.begin() as conn:
        await upsert_store(conn, store_id, name=f"Shop <{store_id}>")
    await add_card(engine, f"{store_id}-c1", store_id, alias="till <1>")
    await add_card(engine, f"{store_id}-c2", store_id, alias="=evil()")
    n = 0
    for offset, count in ((-1, 4), (0, 17), (1, 3)):
        for i in range(count):
            n += 1
            at = day + timedelta(days=offset, minutes=83 * i + 1)
            card = (f"{store_id}-c1", f"{store_id}-c2", None)[i % 3]
            await write_payout(
                engine,
                f"{store_id}-p{n:03d}",
                store_id,
                STATES[i % len(STATES)],
                Decimal(100 * (i + 1)),
                at,
                card,
            )
    for outcome in ("replay", "replay", "bad_mac", "accepted"):
        await add_tap(engine, f"{store_id}-c2", store_id, day + timedelta(hours=5), outcome=outcome)
