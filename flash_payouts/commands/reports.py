"""`flash-payouts reports add|list|remove|send-now`: scheduled reports of a store. JSON out.

The SMTP password and the webhook secret are read from a file (or standard input, ``-``), never
from the command line where `ps` would show them, and sealed with the master key before they
reach the ledger. A webhook secret not given is generated and printed once, when it is made.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from datetime import UTC, date, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.utils import formataddr, parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ledger.db import in_transaction
from ledger.reports import (
    FREQUENCIES,
    SMTP_SECURITY,
    Schedule,
    add_schedule,
    get_schedule,
    list_schedules,
    new_schedule_id,
    recent_deliveries,
    remove_schedule,
    sealing_context,
)
from ledger.stores import get_store

from ..reports.deliver import DEFAULT_PORTS
from ..reports.periods import latest_due, parse_time_of_day, period_of, seconds_to_time, zone
from ..reports.scheduler import ReportSender
from ..runtime import ledger_secret_box, open_ledger, secret_box
from ..services.reports import config_from
from ..settings import load
from . import CommandError


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "reports",
        help="scheduled reports by email and webhook: add, list, remove, send-now",
        description="A store's daily, weekly or monthly report of its payouts, top cards and "
        "cards that alerted, sent by `serve` in the store's time zone by email (with the "
        "period's payouts as a spreadsheet) and/or to a webhook as JSON. Output is JSON.",
    )
    actions = p.add_subparsers(dest="reports_action", metavar="ACTION", required=True)

    add = actions.add_parser("add", parents=parents, help="add a report schedule")
    add.add_argument("--store", required=True, help="BTCPay store id")
    add.add_argument("--frequency", required=True, choices=FREQUENCIES, help="period length")
    add.add_argument(
        "--time-zone", default="UTC", metavar="ZONE", help="IANA zone of the periods (default UTC)"
    )
    add.add_argument(
        "--send-at",
        default="00:00",
        metavar="HH:MM",
        help="local time, on the day a period ends, at which its report is sent (default 00:00)",
    )
    mail = add.add_argument_group("email")
    mail.add_argument("--email-to", metavar="ADDRESSES", help="recipients, comma-separated")
    mail.add_argument("--mail-from", metavar="ADDRESS", help="sender address")
    mail.add_argument("--smtp-host", metavar="HOST", help="SMTP server")
    mail.add_argument("--smtp-port", type=int, metavar="PORT", help="default 587, 465 or 25")
    mail.add_argument(
        "--smtp-security",
        choices=SMTP_SECURITY,
        default="starttls",
        help="starttls (required, the default), tls (implicit) or none (a local relay only)",
    )
    mail.add_argument("--smtp-user", metavar="NAME", help="SMTP login")
    mail.add_argument(
        "--smtp-password-file", metavar="PATH", help="file holding the SMTP password; - for stdin"
    )
    hook = add.add_argument_group("webhook")
    hook.add_argument("--webhook-url", metavar="URL", help="receives the report as JSON (POST)")
    hook.add_argument(
        "--webhook-secret-file",
        metavar="PATH",
        help="file holding the signing secret; - for stdin (default: one is generated)",
    )
    add.set_defaults(handler=_add)

    lst = actions.add_parser("list", parents=parents, help="list schedules (never secrets)")
    lst.add_argument("--store", help="only this store's schedules")
    lst.set_defaults(handler=_list)

    rm = actions.add_parser("remove", parents=parents, help="remove a schedule")
    rm.add_argument("id", help="schedule id, as `reports list` shows it")
    rm.set_defaults(handler=_remove)

    now = actions.add_parser(
        "send-now",
        parents=parents,
        help="send a period's report now",
        description="Compose and send one period's report on every channel of the schedule "
        "now, one attempt each (the schedule still sends its own copy when the period is "
        "due). Exit 1 when a channel failed.",
    )
    now.add_argument("id", help="schedule id")
    now.add_argument(
        "--period-of",
        metavar="DATE",
        help="a local date in the period to report (default: the latest period that is due)",
    )
    now.set_defaults(handler=_send_now)


# --- add -----------------------------------------------------------------------------------------


def _read_secret(path: str, what: str) -> str:
    try:
        text = sys.stdin.readline() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise CommandError(f"cannot read the {what} from {path}: {exc.strerror}") from None
    value = text.strip("\r\n")
    if not value:
        raise CommandError(f"the {what} in {path} is empty")
    return value


def _address(text: str, flag: str) -> str:
    """An address (``a@b.example``, or with a name: ``Shop <a@b.example>``), checked."""
    name, spec = parseaddr(text.strip())
    try:
        address = Address(display_name=name, addr_spec=spec)
    except (HeaderParseError, ValueError, IndexError):
        address = None
    if address is None or not address.username or "." not in address.domain:
        raise CommandError(f"{flag}: {text.strip()!r} is not an email address")
    return formataddr((name, address.addr_spec)) if name else address.addr_spec


def _validated(args: argparse.Namespace) -> dict[str, Any]:
    try:
        zone(args.time_zone)
        send_at = parse_time_of_day(args.send_at)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if not args.email_to and not args.webhook_url:
        raise CommandError("a report needs a channel: --email-to and/or --webhook-url")
    values: dict[str, Any] = {"time_zone": args.time_zone, "send_at": send_at}
    if args.email_to:
        recipients = [_address(a, "--email-to") for a in args.email_to.split(",") if a.strip()]
        if not recipients:
            raise CommandError("--email-to: no address given")
        if not args.mail_from or not args.smtp_host:
            raise CommandError("email needs --mail-from and --smtp-host")
        if args.smtp_port is not None and not 0 < args.smtp_port < 65536:
            raise CommandError(f"--smtp-port: {args.smtp_port} is not a port")
        if args.smtp_password_file and not args.smtp_user:
            raise CommandError("--smtp-password-file needs --smtp-user")
        values.update(
            email_to=",".join(recipients),
            mail_from=_address(args.mail_from, "--mail-from"),
            smtp_host=args.smtp_host,
            smtp_port=args.smtp_port or DEFAULT_PORTS[args.smtp_security],
            smtp_security=args.smtp_security,
            smtp_username=args.smtp_user,
        )
    if args.webhook_url:
        parts = urlsplit(args.webhook_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CommandError(f"--webhook-url: {args.webhook_url!r} is not an http(s) URL")
        values["webhook_url"] = args.webhook_url
    return values


async def _add(args: argparse.Namespace) -> int:
    values = _validated(args)
    password = (
        _read_secret(args.smtp_password_file, "SMTP password")
        if args.email_to and args.smtp_password_file
        else None
    )
    generated = None
    webhook_secret = None
    if args.webhook_url:
        if args.webhook_secret_file:
            webhook_secret = _read_secret(args.webhook_secret_file, "webhook secret")
        else:
            webhook_secret = generated = secrets.token_urlsafe(32)
    settings = load(args)
    box = secret_box(settings)
    engine = await open_ledger(settings)
    try:
        box = await ledger_secret_box(box, engine)
        schedule_id = new_schedule_id()

        def seal(value: str | None, column: str) -> str | None:
            if value is None:
                return None
            return box.seal_text(value, context=sealing_context(schedule_id, column))

        now = datetime.now(UTC)
        schedule = Schedule(
            id=schedule_id,
            store_id=args.store,
            frequency=args.frequency,
            time_zone=values["time_zone"],
            send_at=values["send_at"],
            email_to=values.get("email_to"),
            mail_from=values.get("mail_from"),
            smtp_host=values.get("smtp_host"),
            smtp_port=values.get("smtp_port"),
            smtp_security=values.get("smtp_security"),
            smtp_username=values.get("smtp_username"),
            smtp_password_sealed=seal(password, "smtp_password_sealed"),
            webhook_url=values.get("webhook_url"),
            webhook_secret_sealed=seal(webhook_secret, "webhook_secret_sealed"),
            created_at=now,
            updated_at=now,
        )

        async def store(conn) -> None:  # type: ignore[no-untyped-def]
            if await get_store(conn, args.store) is None:
                raise CommandError(
                    f"no store {args.store} in the ledger (connect it with `flash-payouts "
                    "btcpay connect`)"
                )
            await add_schedule(conn, schedule)

        await in_transaction(engine, store)
        shown = _describe(schedule, [])
    finally:
        await engine.dispose()
    if generated is not None:
        shown["webhook"]["secret"] = generated
        shown["webhook"]["secretNote"] = (
            "shown only this once: the webhook checks Flash-Signature (HMAC-SHA256 of the body)"
        )
    print(json.dumps(shown, indent=2))
    return 0


# --- list, remove ---------------------------------------------------------------------------------


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(query="…" if parts.query else "", fragment="").geturl()


def _describe(schedule: Schedule, recent: list) -> dict[str, Any]:  # type: ignore[type-arg]
    tz = zone(schedule.time_zone)
    now = datetime.now(UTC)
    upcoming = latest_due(schedule.frequency, tz, schedule.send_at, now).following()
    out: dict[str, Any] = {
        "id": schedule.id,
        "storeId": schedule.store_id,
        "frequency": schedule.frequency,
        "timeZone": schedule.time_zone,
        "sendAt": seconds_to_time(schedule.send_at).isoformat(),
        "createdAt": schedule.created_at.isoformat(),
        "nextReport": {
            "period": upcoming.label,
            "dueAt": upcoming.due_at(tz, schedule.send_at).isoformat(),
        },
    }
    if schedule.email_to:
        out["email"] = {
            "to": schedule.recipients,
            "from": schedule.mail_from,
            "smtpHost": schedule.smtp_host,
            "smtpPort": schedule.smtp_port,
            "smtpSecurity": schedule.smtp_security,
            "smtpUser": schedule.smtp_username,
            "password": "set" if schedule.smtp_password_sealed else "none",
        }
    if schedule.webhook_url:
        out["webhook"] = {"url": _safe_url(schedule.webhook_url)}
    out["recentDeliveries"] = [
        {
            "period": d.period_start.isoformat(),
            "channel": d.channel,
            "status": d.status,
            "attempts": d.attempts,
            "late": d.late,
            "lastError": d.last_error,
            "sentAt": d.sent_at.isoformat() if d.sent_at else None,
        }
        for d in recent
    ]
    return out


async def _list(args: argparse.Namespace) -> int:
    engine = await open_ledger(load(args))
    try:
        async with engine.connect() as conn:
            shown = [
                _describe(s, await recent_deliveries(conn, s.id))
                for s in await list_schedules(conn, args.store)
            ]
    finally:
        await engine.dispose()
    print(json.dumps(shown, indent=2))
    return 0


async def _remove(args: argparse.Namespace) -> int:
    engine = await open_ledger(load(args))
    try:

        async def remove(conn) -> bool:  # type: ignore[no-untyped-def]
            return await remove_schedule(conn, args.id)

        removed = await in_transaction(engine, remove)
    finally:
        await engine.dispose()
    if not removed:
        raise CommandError(f"no report schedule {args.id}")
    print(json.dumps({"removed": args.id}))
    return 0


# --- send-now -----------------------------------------------------------------------------------


async def _send_now(args: argparse.Namespace) -> int:
    day = None
    if args.period_of:
        try:
            day = date.fromisoformat(args.period_of)
        except ValueError:
            raise CommandError(
                f"--period-of: {args.period_of!r} is not a date (YYYY-MM-DD)"
            ) from None
    settings = load(args)
    box = secret_box(settings)
    engine = await open_ledger(settings)
    try:
        box = await ledger_secret_box(box, engine)
        async with engine.connect() as conn:
            schedule = await get_schedule(conn, args.id)
        if schedule is None:
            raise CommandError(f"no report schedule {args.id}")
        tz = zone(schedule.time_zone)
        if day is None:
            period = latest_due(schedule.frequency, tz, schedule.send_at, datetime.now(UTC))
        else:
            period = period_of(schedule.frequency, day)
        config = config_from(settings)
        async with aiohttp.ClientSession() as session:
            results = await ReportSender(engine, box, config, session).send_now(schedule, period)
    finally:
        await engine.dispose()
    print(
        json.dumps(
            {
                "id": schedule.id,
                "period": period.label,
                "channels": {
                    channel: ("sent" if error is None else f"failed: {error}")
                    for channel, error in results.items()
                },
            },
            indent=2,
        )
    )
    return 0 if all(error is None for error in results.values()) else 1
