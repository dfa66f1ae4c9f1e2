"""Two gateway processes on one PostgreSQL: replay protection and single-use k1s need no
coordination between replicas, because each check is one atomic statement in the database.

The gateways are real OS processes (this file run as a script), each with its own engine and
key ring, reached over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter as Tally
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from sqlalchemy import func, select

from btcpay_sim import SimConfig, start
from ledger.db import create_engine
from ledger.schema import CardTap, Payout
from ledger.secretbox import SecretBox
from ledger.stores import upsert_store
from lnurl_gateway.registry import CardRegistry

ROOT = Path(__file__).resolve().parent.parent
REAL_K1 = "0c3b25d92b38ae443229dd59ad34b85d"
REAL_K2 = "b45775776cb224c75bcde7ca3704e933"
REAL_UID = "04996c6a926980"
REAL_TAP = ("4E2E289D945A66BB13377A728884E867", "E19CCB1FED8892CE")


def start_gateway(db_url: str, master_key_hex: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "FLASH_MASTER_KEY": master_key_hex, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, __file__, db_url],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening "):
        proc.kill()
        raise AssertionError(f"gateway process did not start: {line!r}")
    return proc, line.split()[1]


@pytest.fixture
def gateways(pg_db_url: str, master_key_hex: str) -> Iterator[list[str]]:
    procs = [start_gateway(pg_db_url, master_key_hex) for _ in range(2)]
    try:
        yield [url for _, url in procs]
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    from test_gateway_flow import ADMIN_KEY

    sim = await start(
        SimConfig(network="bcrt", api_keys={ADMIN_KEY: ["unrestricted"]}, auto_progress=False)
    )
    try:
        yield sim.url
    finally:
        await sim.close()


async def register_card(pg_db_url: str, master_key_hex: str, sim_url: str) -> None:
    from test_gateway_flow import sim_store_and_pull_payment

    async with aiohttp.ClientSession() as http:
        store_id, pp_id = await sim_store_and_pull_payment(http, sim_url)
    engine = create_engine(pg_db_url)
    try:
        async with engine.begin() as conn:
            await upsert_store(conn, store_id, btcpay_url=sim_url)
        registry = CardRegistry(
            engine, SecretBox.from_text(master_key_hex), lnurlw_base="lnurlw://x/boltcard"
        )
        await registry.import_card(
            store_id, pull_payment_id=pp_id, uid=REAL_UID, k1=REAL_K1, k2=REAL_K2
        )
    finally:
        await engine.dispose()


async def count(pg_db_url: str, stmt) -> dict[str, int]:  # type: ignore[no-untyped-def]
    engine = create_engine(pg_db_url)
    try:
        async with engine.connect() as conn:
            return dict(Tally(r[0] for r in (await conn.execute(stmt)).all()))
    finally:
        await engine.dispose()


async def test_fifty_identical_taps_over_two_processes_accept_exactly_one(
    pg_db_url: str, master_key_hex: str, sim_url: str, gateways: list[str]
) -> None:
    # The card is added after both gateways started: each must find it on its own.
    await register_card(pg_db_url, master_key_hex, sim_url)
    await asyncio.sleep(1.1)
    query = urlencode({"p": REAL_TAP[0], "c": REAL_TAP[1]})
    async with aiohttp.ClientSession() as http:

        async def tap(base: str) -> dict:
            async with http.get(f"{base}/boltcard?{query}") as resp:
                assert resp.status == 200
                return await resp.json()

        answers = await asyncio.gather(*(tap(gateways[i % 2]) for i in range(50)))
    accepted = [a for a in answers if a.get("tag") == "withdrawRequest"]
    assert len(accepted) == 1
    assert all("replayed" in a["reason"] for a in answers if a not in accepted)
    assert await count(pg_db_url, select(CardTap.outcome)) == {"accepted": 1, "replay": 49}


async def test_fifty_callbacks_with_one_k1_over_two_processes_make_one_payout(
    pg_db_url: str, master_key_hex: str, sim_url: str, gateways: list[str]
) -> None:
    from test_gateway_flow import invoice

    await register_card(pg_db_url, master_key_hex, sim_url)
    await asyncio.sleep(1.1)
    query = urlencode({"p": REAL_TAP[0], "c": REAL_TAP[1]})
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateways[0]}/boltcard?{query}") as resp:
            k1 = (await resp.json())["k1"]

        async def callback(base: str, pr: str) -> dict:
            async with http.get(f"{base}/boltcard/callback?{urlencode({'k1': k1, 'pr': pr})}") as r:
                assert r.status == 200
                return await r.json()

        invoices = [invoice(100 + i) for i in range(50)]
        answers = await asyncio.gather(
            *(callback(gateways[i % 2], pr) for i, pr in enumerate(invoices))
        )
        async with http.get(f"{sim_url}/_sim/stats") as resp:
            stats = await resp.json()
    assert Tally(a["status"] for a in answers) == {"OK": 1, "ERROR": 49}
    assert stats["payouts"] == 1
    assert await count(pg_db_url, select(func.count()).select_from(Payout)) == {1: 1}


# --- the gateway process ------------------------------------------------------------------------


async def _serve(db_url: str) -> None:
    from aiohttp import web

    from lnurl_gateway.app import GatewayConfig, create_app

    engine = create_engine(db_url, pool_size=20)
    box = SecretBox.from_text(os.environ["FLASH_MASTER_KEY"])
    config = GatewayConfig(public_url="http://127.0.0.1", network="regtest", btcpay_timeout=5)
    runner = web.AppRunner(create_app(engine, box, config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"listening http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1]))
