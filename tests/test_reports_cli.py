"""`flash-payouts reports add|list|remove|send-now` against a real ledger and a real SMTP server:
JSON out, secrets sealed at rest and never printed, one-line errors."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from report_fixtures import parts, start_hook, start_smtp, store_with_a_known_day
from sqlalchemy import select

from flash_payouts.cli import main
from ledger.reports import sealing_context
from ledger.schema import Counter, ReportSchedule
from ledger.secretbox import SecretBox


@pytest.fixture
def cli(db_url, master_key_hex, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLASH_DATABASE_URL", db_url)
    monkeypatch.setenv("FLASH_MASTER_KEY", master_key_hex)
    monkeypatch.setenv("FLASH_GRAFANA_URL", "https://grafana.shop.test")

    async def run(*argv: str) -> tuple[int, Any, str]:
        # The command runs its own event loop, in a thread; the test's loop keeps serving the
        # webhook target meanwhile.
        code = await asyncio.to_thread(main, ["reports", *argv])
        out, err = capsys.readouterr()
        return code, (json.loads(out) if out.strip() else None), err

    return run


async def test_add_list_send_now_and_remove(cli, engine, master_key_hex, tmp_path):
    day = datetime.combine(datetime.now(UTC).date() - timedelta(days=1), time(0), tzinfo=UTC)
    await store_with_a_known_day(engine, "shopcli", day)
    password = tmp_path / "smtp-password"
    password.write_text("p4ss word\n")
    smtp = start_smtp()
    hook = await start_hook()
    try:
        code, added, _ = await cli(
            "add", "--store", "shopcli", "--frequency", "weekly", "--time-zone", "Europe/Berlin",
            "--send-at", "07:30", "--email-to", "owner@shop.test, books@shop.test",
            "--mail-from", "Flash <reports@monitor.test>", "--smtp-host", "localhost",
            "--smtp-port", str(smtp.port), "--smtp-security", "none", "--smtp-user", "reports",
            "--smtp-password-file", str(password), "--webhook-url", hook.url,
        )  # fmt: skip
        assert code == 0
        assert added["frequency"] == "weekly" and added["sendAt"] == "07:30:00"
        assert added["email"]["to"] == ["owner@shop.test", "books@shop.test"]
        assert added["email"]["from"] == "Flash <reports@monitor.test>"
        assert added["email"]["password"] == "set"
        secret = added["webhook"]["secret"]  # generated, shown this once
        assert len(secret) >= 40
        assert added["webhook"]["url"].endswith("/hook?…")  # its query may hold a token
        assert "p4ss" not in json.dumps(added)
        schedule_id = added["id"]

        # At rest the password and the secret are sealed to their row and column.
        async with engine.connect() as conn:
            row = (await conn.execute(select(ReportSchedule.__table__))).mappings().one()
        assert "p4ss" not in json.dumps({k: str(v) for k, v in row.items()})
        box = SecretBox.from_text(master_key_hex)
        assert (
            box.open_text(
                row["smtp_password_sealed"],
                context=sealing_context(schedule_id, "smtp_password_sealed"),
            )
            == "p4ss word"
        )
        assert (
            box.open_text(
                row["webhook_secret_sealed"],
                context=sealing_context(schedule_id, "webhook_secret_sealed"),
            )
            == secret
        )

        code, listed, _ = await cli("list")
        assert code == 0 and [s["id"] for s in listed] == [schedule_id]
        assert "secret" not in listed[0]["webhook"]
        assert listed[0]["nextReport"]["period"].startswith("week ")
        assert "p4ss" not in json.dumps(listed) and secret not in json.dumps(listed)

        # send-now: the week holding yesterday, both channels, one attempt each.
        code, sent, _ = await cli("send-now", schedule_id, "--period-of", day.date().isoformat())
    finally:
        smtp.stop()
        await hook.close()
    # This SMTP server offers no login: the email failed (exit 1), and says why in one line.
    assert code == 1
    assert sent["channels"]["webhook"] == "sent"
    assert sent["channels"]["email"].startswith("failed: SMTP ")
    [body] = hook.bodies()
    assert body["frequency"] == "weekly" and body["timeZone"] == "Europe/Berlin"
    assert body["boardsUrl"].startswith("https://grafana.shop.test/d/")
    async with engine.connect() as conn:
        c = Counter.__table__.c
        counted = dict(
            (await conn.execute(select(c.name, c.value).where(c.name.like("report_%")))).all()
        )
    assert {k: int(v) for k, v in counted.items()} == {
        "report_sends": 1,
        "report_send_failures": 1,
    }

    code, removed, _ = await cli("remove", schedule_id)
    assert code == 0 and removed == {"removed": schedule_id}
    code, listed, _ = await cli("list")
    assert listed == []


async def test_send_now_by_email_delivers_the_report_with_its_spreadsheet(cli, engine):
    day = datetime.combine(datetime.now(UTC).date() - timedelta(days=1), time(0), tzinfo=UTC)
    await store_with_a_known_day(engine, "mailnow", day)
    smtp = start_smtp()
    try:
        code, added, _ = await cli(
            "add", "--store", "mailnow", "--frequency", "daily", "--email-to", "o@shop.test",
            "--mail-from", "r@monitor.test", "--smtp-host", "127.0.0.1",
            "--smtp-port", str(smtp.port), "--smtp-security", "none",
        )  # fmt: skip
        assert code == 0
        code, sent, _ = await cli("send-now", added["id"], "--period-of", day.date().isoformat())
        assert code == 0 and sent["channels"] == {"email": "sent"}
        [msg] = await smtp.wait_for(1)
    finally:
        smtp.stop()
    body = parts(msg)
    assert msg["Subject"] == f"Daily payout report: Shop <mailnow>, {day.date().isoformat()}"
    [(name, data)] = body["attachments"]
    assert name.endswith(".xlsx") and data[:2] == b"PK"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["add", "--store", "s", "--frequency", "daily"], "a report needs a channel"),
        (
            ["add", "--store", "s", "--frequency", "daily", "--time-zone", "Mars/Base",
             "--webhook-url", "https://h.test/x"],
            "unknown time zone 'Mars/Base'",
        ),
        (
            ["add", "--store", "s", "--frequency", "daily", "--send-at", "7pm",
             "--webhook-url", "https://h.test/x"],
            "'7pm' is not a time of day",
        ),
        (
            ["add", "--store", "s", "--frequency", "daily", "--email-to", "not an address",
             "--mail-from", "r@x.test", "--smtp-host", "h"],
            "--email-to: 'not an address' is not an email address",
        ),
        (
            ["add", "--store", "s", "--frequency", "daily", "--email-to", "o@x.test"],
            "email needs --mail-from and --smtp-host",
        ),
        (
            ["add", "--store", "s", "--frequency", "daily", "--webhook-url", "ftp://h/x"],
            "is not an http(s) URL",
        ),
        (
            ["add", "--store", "nostore", "--frequency", "daily", "--webhook-url", "https://h.test/x"],
            "no store nostore in the ledger",
        ),
        (
            ["add", "--store", "s", "--frequency", "daily", "--webhook-url", "https://h.test/x",
             "--webhook-secret-file", "/nonexistent/secret"],
            "cannot read the webhook secret from /nonexistent/secret",
        ),
        (["remove", "nosuch"], "no report schedule nosuch"),
        (["send-now", "nosuch"], "no report schedule nosuch"),
        (["send-now", "x", "--period-of", "yesterday"], "--period-of: 'yesterday' is not a date"),
    ],
)  # fmt: skip
async def test_bad_input_is_one_line_and_a_non_zero_exit(cli, argv, message):
    code, out, err = await cli(*argv)
    assert code != 0 and out is None
    assert err.startswith("flash-payouts: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
