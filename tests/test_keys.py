"""Rotating the master key: every secret re-sealed, fingerprints kept, the old key refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from test_gateway_flow import (
    REAL_TAPS,
    gateway_config,
    import_real_card,
    issue_card,
    running_gateway,
    tap_of,
)

from flash_payouts.keys import FINGERPRINT_PURPOSES, SEALED, KeyMismatch, check, ledger_box, rotate
from ledger.reports import Schedule, add_schedule, new_schedule_id, sealing_context
from ledger.schema import metadata
from ledger.secretbox import SecretBox
from ledger.stores import set_issuer_keys, upsert_store
from lnurl_gateway.app import create_app
from lnurl_gateway.btcpay_proxy import seal_issuer_k1, seal_issuer_key
from lnurl_gateway.btcpay_stores import seal_api_key, seal_webhook_secret

ROOT = Path(__file__).resolve().parent.parent
NEW_KEY = bytes(range(32))
THIRD_KEY = bytes(range(32, 64))


async def sealed_values(engine: AsyncEngine) -> dict[tuple[str, str], str]:
    """Every sealed value of the ledger, by ("table.column", row id)."""
    found = {}
    async with engine.connect() as conn:
        for sealed in SEALED:
            table = sealed.table.__table__
            rows = await conn.execute(
                select(table.c[sealed.key], table.c[sealed.column]).where(
                    table.c[sealed.column].is_not(None)
                )
            )
            for key, token in rows:
                found[(f"{table.name}.{sealed.column}", key)] = token
    return found


def opened(box: SecretBox, values: dict[tuple[str, str], str]) -> dict[tuple[str, str], bytes]:
    contexts = {f"{s.table.__table__.name}.{s.column}": s.context for s in SEALED}
    return {
        (column, key): box.open(token, context=contexts[column](key))
        for (column, key), token in values.items()
    }


async def add_store_secrets(engine: AsyncEngine, box: SecretBox) -> None:
    """A store with every kind of sealed secret the cards themselves do not bring."""
    async with engine.begin() as conn:
        await upsert_store(
            conn,
            "shop",
            api_key_sealed=seal_api_key(box, "shop", "btcpay-api-key"),
            webhook_secret_sealed=seal_webhook_secret(box, "shop", "webhook-secret"),
        )
        await set_issuer_keys(
            conn,
            "shop",
            btcpay_issuer_key_sealed=seal_issuer_key(box, "shop", os.urandom(16)),
            btcpay_issuer_k1_sealed=seal_issuer_k1(box, "shop", os.urandom(16)),
        )
        now = datetime.now(UTC)
        schedule_id = new_schedule_id()
        await add_schedule(
            conn,
            Schedule(
                id=schedule_id,
                store_id="shop",
                frequency="daily",
                time_zone="UTC",
                send_at=0,
                email_to="o@shop.test",
                mail_from="r@shop.test",
                smtp_host="smtp.shop.test",
                smtp_port=587,
                smtp_security="starttls",
                smtp_username="reports",
                smtp_password_sealed=box.seal_text(
                    "smtp password", context=sealing_context(schedule_id, "smtp_password_sealed")
                ),
                webhook_url="https://hooks.shop.test/r",
                webhook_secret_sealed=box.seal_text(
                    "hook secret", context=sealing_context(schedule_id, "webhook_secret_sealed")
                ),
                created_at=now,
                updated_at=now,
            ),
        )


async def test_rotation_reseals_every_secret_and_the_gateway_reads_its_cards_after(
    engine: AsyncEngine, master_key_hex: str
) -> None:
    async for gw in running_gateway(engine, master_key_hex):
        await import_real_card(gw)
        issued = (await issue_card(gw))["programmer"]
        await add_store_secrets(engine, gw.box)
        assert (await gw.tap(*REAL_TAPS[0][:2]))["tag"] == "withdrawRequest"
        before = await sealed_values(engine)
        assert {column for column, _ in before} == {
            f"{s.table.__table__.name}.{s.column}" for s in SEALED
        }

        rotated = await rotate(engine, gw.box, NEW_KEY)

        after = await sealed_values(engine)
        assert rotated.total == len(before) == len(after)
        assert all(after[k] != before[k] for k in before)
        new_box = await ledger_box(SecretBox(NEW_KEY), engine)
        assert opened(new_box, after) == opened(gw.box, before)
        with pytest.raises(KeyMismatch, match="does not open this ledger's keys"):
            await ledger_box(gw.box, engine)
        with pytest.raises(KeyMismatch):
            await check(engine, gw.box)
        assert (await check(engine, new_box)).total == len(before)

        # A gateway started with the new key finds both cards by their fingerprints and
        # opens their keys: the imported card's next tap, and the issued card's first.
        app = create_app(engine, new_box, gateway_config())
        async with TestClient(TestServer(app)) as client:
            for p, c in (REAL_TAPS[1][:2], tap_of(issued, "04112233445566", 1)):
                answer = await (await client.get("/boltcard", params={"p": p, "c": c})).json()
                assert answer["tag"] == "withdrawRequest", answer


async def test_fingerprints_keep_the_first_keys_through_two_rotations(
    engine: AsyncEngine, master_key_hex: str
) -> None:
    first = SecretBox.from_text(master_key_hex)
    await add_store_secrets(engine, first)
    await rotate(engine, first, NEW_KEY)
    second = await ledger_box(SecretBox(NEW_KEY), engine)
    await rotate(engine, second, THIRD_KEY)
    third = await ledger_box(SecretBox(THIRD_KEY), engine)

    for purpose in FINGERPRINT_PURPOSES:
        value = os.urandom(16)
        made = first.fingerprint(value, purpose=purpose)
        assert second.fingerprint(value, purpose=purpose) == made
        assert third.fingerprint(value, purpose=purpose) == made
    for earlier in (first, SecretBox(NEW_KEY)):
        with pytest.raises(KeyMismatch):
            await ledger_box(earlier, engine)
    assert (await check(engine, third)).counts["webhook secrets"] == 1


async def test_rotation_with_the_wrong_current_key_changes_nothing(
    engine: AsyncEngine, master_key_hex: str
) -> None:
    box = SecretBox.from_text(master_key_hex)
    await add_store_secrets(engine, box)
    before = await sealed_values(engine)

    with pytest.raises(KeyMismatch, match="BTCPay API keys"):
        await rotate(engine, SecretBox(THIRD_KEY), NEW_KEY)

    assert await sealed_values(engine) == before
    assert (await check(engine, await ledger_box(box, engine))).total == len(before)


def test_every_fingerprint_purpose_in_the_code_is_carried_over() -> None:
    # A purpose missing from the list would get no kept key: after a rotation its
    # fingerprints would raise instead of matching the ones already in the ledger.
    used = set()
    for folder in ("ledger", "lnurl_gateway", "api", "exporter", "flash_payouts"):
        for path in (ROOT / folder).rglob("*.py"):
            used |= set(re.findall(r'purpose=b"([^"]+)"', path.read_text()))
    assert used and {p.encode() for p in used} <= set(FINGERPRINT_PURPOSES), used


def test_every_sealed_column_of_the_schema_is_rotated() -> None:
    # A sealed column missing from SEALED would keep values only the old key opens.
    in_schema = {
        (table.name, column.name)
        for table in metadata.sorted_tables
        for column in table.columns
        if column.name.endswith("_sealed")
    }
    rotated = {(sealed.table.__table__.name, sealed.column) for sealed in SEALED}
    assert in_schema == rotated


def _cli(*args: str, key_file: Path, db: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASH_")}
    env.update(FLASH_DATABASE_URL=f"sqlite+aiosqlite:///{db}", FLASH_MASTER_KEY_FILE=str(key_file))
    return subprocess.run(
        [sys.executable, "-m", "flash_payouts", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=db.parent,
        timeout=60,
    )


def test_rotate_command_then_only_the_new_key_opens_the_ledger(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    old, new = tmp_path / "old.key", tmp_path / "new.key"
    old.write_text(SecretBox.generate_key_text())
    new.write_text(SecretBox.generate_key_text())
    run: Any = lambda *a, key=old: _cli(*a, key_file=key, db=db)  # noqa: E731
    assert run("migrate").returncode == 0
    added = run("cards", "add", "--store", "s1", "--pull-payment", "pp1", "--uid", "04a1b2c3d4e5f6")
    assert added.returncode == 0, added.stderr

    rotated = run("keys", "rotate", "--new-master-key-file", str(new))
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.startswith("re-sealed 2 secrets under the new master key")
    assert "card keys 1, store issuer keys 1" in rotated.stdout

    refused = run("keys", "check")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "does not open this ledger's keys" in refused.stderr
    serve = run("serve")
    assert serve.returncode == 2 and "does not open this ledger's keys" in serve.stderr
    assert run("keys", "check", key=new).stdout.startswith("the master key opens all 2 sealed")
    listed = run("cards", "list", "--store", "s1", key=new)
    assert listed.returncode == 0 and '"uid": "04a1b2c3d4e5f6"' in listed.stdout

    again = run("keys", "rotate", "--new-master-key-file", str(new), key=new)
    assert again.returncode == 1 and "is the current one" in again.stderr
