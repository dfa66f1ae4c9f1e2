"""`flash-payouts btcpay connect|stores|sync` and `btcpay-sim`, run as an operator would."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from btcpay_sim import InvoiceMinter, SimConfig, start
from flash_payouts.cli import main
from ledger.db import create_engine
from ledger.schema import Payout, Store
from ledger.secretbox import SecretBox
from lnurl_gateway.greenfield import GreenfieldClient
from lnurl_gateway.ingestion import setup_ingestion
from lnurl_gateway.webhooks import WEBHOOK_PATH

ADMIN_KEY = "admin-key-7f3a9c"
WEAK_KEY = "weak-key-21b8e0"


@pytest.fixture
async def sim() -> AsyncIterator[tuple[str, str]]:
    running = await start(SimConfig(auto_progress=False, redelivery_scale=0.001, seed=9))
    async with GreenfieldClient(running.url, ADMIN_KEY, timeout=5) as admin:
        store = await admin._json("POST", "/api/v1/stores", body={"name": "Corner Shop"})
        await admin._json(
            "POST",
            "/_sim/api-keys",
            body={"apiKey": WEAK_KEY, "permissions": ["btcpay.store.canviewpullpayments"]},
            auth=False,
        )
    try:
        yield running.url, store["id"]
    finally:
        await running.close()


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def common(db_url: str, master_key_hex: str, btcpay_url: str, key: str) -> list[str]:
    return [
        "--database-url",
        db_url,
        "--master-key",
        master_key_hex,
        "--btcpay-url",
        btcpay_url,
        "--btcpay-api-key",
        key,
        "--log-level",
        "error",
    ]


async def stores_in(db_url: str) -> list[dict[str, Any]]:
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(select(Store))).mappings().all()]
    finally:
        await engine.dispose()


async def test_connect_with_a_key_lacking_the_payout_permission_names_it(
    db_url: str, master_key_hex: str, sim: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, store_id = sim
    code, out, err = await run(
        capsys,
        "btcpay",
        "connect",
        "--store",
        store_id,
        *common(db_url, master_key_hex, url, WEAK_KEY),
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "btcpay.store.canviewpayouts" in lines[0]
    assert WEAK_KEY not in out + err
    assert await stores_in(db_url) == []


async def test_connect_registers_a_webhook_whose_deliveries_the_gateway_accepts(
    db_url: str, master_key_hex: str, sim: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, store_id = sim
    engine = create_engine(db_url)
    app = web.Application()
    box = SecretBox.from_text(master_key_hex)
    setup_ingestion(app, engine=engine, box=box, reconcile_interval=3600, btcpay_timeout=5)
    try:
        async with TestServer(app) as gateway:
            hook = str(gateway.make_url(WEBHOOK_PATH))
            args = common(db_url, master_key_hex, url, ADMIN_KEY)
            for _ in range(2):  # connecting again replaces the webhook
                code, out, err = await run(
                    capsys, "btcpay", "connect", "--store", store_id, "--webhook-url", hook, *args
                )
                assert code == 0, err
                assert f"connected store {store_id} (Corner Shop)" in out
                assert ADMIN_KEY not in out + err
            async with GreenfieldClient(url, ADMIN_KEY, timeout=5) as admin:
                hooks = await admin.list_webhooks(store_id)
                assert [h["url"] for h in hooks] == [hook]
                pp = await admin._json(
                    "POST",
                    f"/api/v1/stores/{store_id}/pull-payments",
                    body={"name": "c", "amount": "1000", "currency": "SATS"},
                )
                claimed = await admin.claim_payout(pp["id"], InvoiceMinter().mint(50_000).bolt11)
            for _ in range(100):
                async with engine.connect() as conn:
                    row = (
                        await conn.execute(select(Payout.state).where(Payout.id == claimed["id"]))
                    ).scalar_one_or_none()
                if row == "AwaitingApproval":
                    break
                await asyncio.sleep(0.05)
            assert row == "AwaitingApproval"
    finally:
        await engine.dispose()

    [store] = await stores_in(db_url)
    assert store["name"] == "Corner Shop" and store["webhook_id"] == hooks[0]["id"]
    assert ADMIN_KEY not in str(store)  # sealed, not stored in the clear

    code, out, _ = await run(capsys, "btcpay", "stores", "--database-url", db_url)
    assert code == 0
    assert store_id in out and "Corner Shop" in out and hooks[0]["id"] in out

    code, out, err = await run(
        capsys, "btcpay", "sync", "--store", store_id, *common(db_url, master_key_hex, url, "")
    )
    assert code == 0, err
    assert f"store {store_id}: 1 payouts, 0 changed" in out


async def test_sync_of_a_store_never_connected_is_a_one_line_error(
    db_url: str, master_key_hex: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await run(
        capsys,
        "btcpay",
        "sync",
        "--store",
        "NOPE",
        "--database-url",
        db_url,
        "--master-key",
        master_key_hex,
    )
    assert code == 1
    assert err.strip().splitlines() == [
        "flash-payouts: error: store 'NOPE' is not connected (see `btcpay stores`)"
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_btcpay_sim_command_serves_greenfield() -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flash_payouts", "btcpay-sim", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "FLASH_BTCPAY_SIM_SEED": "1"},
    )
    try:
        deadline = time.monotonic() + 20
        answer = None
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline and answer is None:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/api/v1/health") as r:
                        answer = (r.status, await r.json())
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        assert answer == (200, {"synchronized": True})
    finally:
        proc.terminate()
        proc.wait(10)
