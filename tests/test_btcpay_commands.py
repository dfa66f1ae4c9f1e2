"""`flash-payouts btcpay connect|stores|sync` and `btcpay-sim`, run as an operator would."""

from __future__ import annotations

import asyncio
import json
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
    running = await start(
        SimConfig(
            api_keys={ADMIN_KEY: ["unrestricted"]},
            auto_progress=False,
            redelivery_scale=0.001,
            seed=9,
        )
    )
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
                    body={
                        "name": "c",
                        "amount": "1000",
                        "currency": "SATS",
                        "payoutMethods": ["BTC-LN"],
                        "BOLT11Expiration": 0,
                    },
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


async def _pull_payment(url: str, store_id: str, **settings: Any) -> str:
    body = {"name": "cards", "amount": "100000", "currency": "SATS", "payoutMethods": ["BTC-LN"]}
    async with GreenfieldClient(url, ADMIN_KEY, timeout=5) as admin:
        created = await admin._json(
            "POST", f"/api/v1/stores/{store_id}/pull-payments", body={**body, **settings}
        )
    return created["id"]


def card_args(store_id: str, pull_payment_id: str) -> list[str]:
    k1, k2 = "0c3b25d92b38ae443229dd59ad34b85d", "b45775776cb224c75bcde7ca3704e933"
    card = ["--store", store_id, "--pull-payment", pull_payment_id, "--uid", "04996c6a926980"]
    return ["cards", "import", *card, "--k1", k1, "--k2", k2]


async def test_card_import_on_a_default_pull_payment_names_bolt11_expiration_and_its_fix(
    db_url: str, master_key_hex: str, sim: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, store_id = sim
    # Created with BTCPay's defaults: BOLT11Expiration is the store's 30 days.
    pull_payment = await _pull_payment(url, store_id, autoApproveClaims=True)

    code, out, err = await run(
        capsys, *card_args(store_id, pull_payment), *common(db_url, master_key_hex, url, "")
    )

    assert code == 0  # the card is registered, and the merchant is told before its first tap
    assert json.loads(out)["pull_payment"] == pull_payment
    [warning] = err.strip().splitlines()
    assert warning.startswith(f"warning: pull payment {pull_payment} refuses every invoice")
    assert "(BOLT11Expiration 30)" in warning
    assert "'Minimum acceptable expiration time for BOLT11 for refunds' set to 0" in warning
    assert '"BOLT11Expiration": 0' in warning


async def test_card_on_a_pull_payment_fit_for_cards_gets_no_warning(
    db_url: str, master_key_hex: str, sim: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, store_id = sim
    pull_payment = await _pull_payment(url, store_id, autoApproveClaims=True, BOLT11Expiration=0)

    code, _, err = await run(
        capsys, *card_args(store_id, pull_payment), *common(db_url, master_key_hex, url, "")
    )

    assert (code, err) == (0, "")


async def test_card_on_a_pull_payment_btcpay_does_not_have_is_refused_in_one_line(
    db_url: str, master_key_hex: str, sim: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, store_id = sim

    code, out, err = await run(
        capsys, *card_args(store_id, "NoSuchPP"), *common(db_url, master_key_hex, url, "")
    )

    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        f"flash-payouts: error: BTCPay at {url} has no pull payment NoSuchPP"
    ]


async def test_connect_names_the_cards_pull_payments_that_would_refuse_or_hold_claims(
    db_url: str, master_key_hex: str, sim: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, store_id = sim
    held = await _pull_payment(url, store_id, BOLT11Expiration=0)  # no auto-approval
    on_chain = await _pull_payment(
        url, store_id, autoApproveClaims=True, BOLT11Expiration=0, payoutMethods=["BTC-CHAIN"],
        currency="BTC", amount="1",
    )  # fmt: skip
    for pull_payment, uid in ((held, "04996c6a926980"), (on_chain, "04a1b2c3d4e5f6")):
        args = card_args(store_id, pull_payment)
        args[args.index("--uid") + 1] = uid
        assert (await run(capsys, *args, *common(db_url, master_key_hex, url, "")))[0] == 0

    code, out, err = await run(
        capsys, "btcpay", "connect", "--store", store_id,
        "--webhook-url", "http://127.0.0.1:9/webhooks/btcpay",
        *common(db_url, master_key_hex, url, ADMIN_KEY),
    )  # fmt: skip

    assert code == 0 and out.startswith(f"connected store {store_id}")
    warnings = err.strip().splitlines()
    assert len(warnings) == 2
    assert warnings[0].startswith(f"warning: pull payment {held} does not approve claims")
    assert "AwaitingApproval" in warnings[0] and '"autoApproveClaims": true' in warnings[0]
    assert warnings[1].startswith(f"warning: pull payment {on_chain} does not pay Lightning")
    assert '"payoutMethods": ["BTC-LN"]' in warnings[1]


async def test_connect_to_a_store_the_key_cannot_see_says_so(
    db_url: str, master_key_hex: str, sim: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = sim

    code, _, err = await run(
        capsys, "btcpay", "connect", "--store", "SomeoneElsesStore",
        *common(db_url, master_key_hex, url, ADMIN_KEY),
    )  # fmt: skip

    assert code == 1
    [line] = err.strip().splitlines()
    assert f"BTCPay at {url} shows this API key no store SomeoneElsesStore" in line
    assert "btcpay.store.webhooks.canmodifywebhooks" in line
    assert "no such store" not in line and ADMIN_KEY not in line
    assert await stores_in(db_url) == []


async def test_issuer_checks_the_pull_payments_of_btcpays_cards_without_bolt11_expiration(
    db_url: str, master_key_hex: str, sim: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, store_id = sim
    defaults = await _pull_payment(url, store_id)  # BOLT11Expiration 30, no auto-approval

    code, out, err = await run(
        capsys, "btcpay", "issuer", "--store", store_id, "--issuer-key", "11" * 16,
        "--pull-payment", defaults, *common(db_url, master_key_hex, url, ""),
    )  # fmt: skip

    assert code == 0 and "issuer key stored" in out
    [warning] = err.strip().splitlines()
    assert warning.startswith(f"warning: pull payment {defaults} does not approve claims")
    assert "BTCPay refuses its cards' callbacks" in warning
    # BTCPay's own cards claim through its LNURL-withdraw, which ignores BOLT11Expiration.
    assert "BOLT11Expiration" not in err


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
