"""A real Prometheus scraping the exporter on loopback, and promtool's lint of the exposition."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from conftest import service_missing
from exporter_fixtures import HOUR, add_card, add_store, card_payout, payout, refused_tap, utcnow
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.catalogue import CATALOGUE
from flash_payouts.serve import Context
from flash_payouts.services import metrics as metrics_service
from flash_payouts.settings import Settings
from ledger.payouts import record_event, upsert_payout
from ledger.schema import SyncState

pytestmark = pytest.mark.prometheus

PROMETHEUS = "/usr/bin/prometheus"


def binary(path: str, name: str) -> str:
    found = path if Path(path).exists() else shutil.which(name)
    if not found:
        service_missing(f"{name} is not installed")
    return str(found)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def fill_every_family(engine: AsyncEngine) -> None:
    """Ledger contents that give every ledger family at least one sample."""
    await add_store(engine, "store-a")
    now = utcnow()
    async with engine.begin() as conn:
        await add_card(conn, "cafe0000beef", "store-a", alias="Till 1")
        await conn.execute(
            SyncState.__table__.insert().values(
                store_id="store-a", last_success_at=now, payouts_seen=1, payouts_changed=1
            )
        )
        await record_event(
            conn,
            store_id="store-a",
            payout_id="W1",
            source="webhook",
            event_type="PayoutCreated",
            delivery_id="delivery-1",
        )
        await upsert_payout(
            conn, payout("W1", "store-a", "AwaitingPayment", 900, now - HOUR), source="webhook"
        )
        await upsert_payout(
            conn,
            payout("W1", "store-a", "Completed", 900, now - HOUR, revision=1),
            source="webhook",
            now=now - timedelta(minutes=50),
        )
    await card_payout(engine, "P1", "store-a", "cafe0000beef", 4_200, now - HOUR / 2)
    await refused_tap(engine, "store-a", "replay", card_id="cafe0000beef")


@contextlib.asynccontextmanager
async def exporter_on_loopback(engine: AsyncEngine) -> AsyncIterator[str]:
    app = await metrics_service.build(Context(Settings(metrics_top_cards=20), engine, None))
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def prometheus(tmp_path: Path, target: str) -> AsyncIterator[str]:
    exe = binary(PROMETHEUS, "prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: flash\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        exe,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def query(session: aiohttp.ClientSession, base: str, promql: str) -> list[dict]:
    async with session.get(f"{base}/api/v1/query", params={"query": promql}) as resp:
        body = await resp.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


async def test_prometheus_scrapes_every_family_of_the_catalogue(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await fill_every_family(engine)
    wanted = {spec.sample_names[0] for spec in CATALOGUE}
    missing: set[str] = set(wanted)
    async with (
        exporter_on_loopback(engine) as target,
        prometheus(tmp_path, target) as base,
        aiohttp.ClientSession() as session,
    ):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while missing and loop.time() < deadline:
            await asyncio.sleep(1)
            with contextlib.suppress(aiohttp.ClientError):
                for name in sorted(missing):
                    if await query(session, base, f'{name}{{job="flash"}}'):
                        missing.discard(name)
        assert not missing, f"families Prometheus never stored: {sorted(missing)}"

        up = await query(session, base, 'up{job="flash"}')
        assert up and up[0]["value"][1] == "1"
        created = await query(session, base, 'flash_payouts_created_total{store="store-a"}')
        assert created[0]["value"][1] == "2"
        completed = await query(session, base, 'flash_payouts{store="store-a", status="Completed"}')
        assert completed[0]["value"][1] == "2"
        p50 = await query(
            session,
            base,
            'histogram_quantile(0.5, flash_payout_completion_seconds_bucket{store="store-a"})',
        )
        # W1 completed 600 s after creation: inside the (300, 900] bucket.
        assert 300 < float(p50[0]["value"][1]) <= 900
        card = await query(session, base, 'flash_card_refused_taps_total{card="Till 1"}')
        assert card[0]["value"][1] == "1"


async def test_promtool_finds_nothing_to_report_in_the_exposition(engine: AsyncEngine) -> None:
    promtool = binary("/usr/bin/promtool", "promtool")
    await fill_every_family(engine)
    async with exporter_on_loopback(engine) as target, aiohttp.ClientSession() as session:
        async with session.get(f"http://{target}/metrics") as resp:  # counts one request
            assert resp.status == 200
        async with session.get(f"http://{target}/metrics") as resp:
            exposition = await resp.read()
    result = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=30
    )
    report = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, report
    assert report.strip() == ""
    assert b"flash_http_requests_total{" in exposition
