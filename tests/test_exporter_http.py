"""The metrics listener over HTTP: formats, the scrape deadline, a lost ledger, instrumentation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from exporter_fixtures import HOUR, add_card, add_store, card_payout, utcnow
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.app import ExporterConfig, create_app, ledger_deadline
from flash_payouts import instrumentation
from flash_payouts.serve import Context
from flash_payouts.services import metrics as metrics_service
from flash_payouts.settings import Settings
from ledger.db import create_engine


def samples(text: str, parser=parse_text) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in parser(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


async def client_for(engine: AsyncEngine, config: ExporterConfig | None = None) -> TestClient:
    client = TestClient(TestServer(create_app(engine, config)))
    await client.start_server()
    return client


async def test_landing_page_links_to_metrics(engine: AsyncEngine) -> None:
    client = await client_for(engine)
    try:
        resp = await client.get("/")
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert 'href="metrics"' in await resp.text()
    finally:
        await client.close()


async def test_metrics_answer_in_the_text_format_with_the_ledger_contents(
    engine: AsyncEngine,
) -> None:
    await add_store(engine, "store-a")
    async with engine.begin() as conn:
        await add_card(conn, "cafe0000beef", "store-a")
    await card_payout(engine, "P1", "store-a", "cafe0000beef", 4_200, utcnow() - HOUR / 2)
    client = await client_for(engine)
    try:
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        found = samples(await resp.text())
    finally:
        await client.close()
    assert value(found, "flash_up") == 1
    assert value(found, "flash_payouts", store="store-a", status="Completed") == 1
    assert value(found, "flash_payouts_completed_value_sats_total", store="store-a") == 4_200
    assert value(found, "flash_taps_total", store="store-a", outcome="accepted") == 1
    assert value(found, "flash_card_value_sats_total", store="store-a", card="cafe0000") == 4_200


async def test_openmetrics_is_served_to_clients_that_ask_for_it(engine: AsyncEngine) -> None:
    await add_store(engine, "store-a")
    client = await client_for(engine)
    try:
        resp = await client.get(
            "/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"},
        )
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        body = await resp.text()
    finally:
        await client.close()
    assert body.endswith("# EOF\n")
    found = samples(body, parse_om)
    assert value(found, "flash_up") == 1
    assert value(found, "flash_payouts_created_total", store="store-a") == 0
    assert "# UNIT flash_payouts_value_sats sats" in body


@pytest.mark.parametrize("header", ["abc", "-3", "0", "nan", "", "1e400"])
def test_a_malformed_timeout_header_falls_back_to_the_default(header: str) -> None:
    deadline = ledger_deadline(header, 10.0)
    assert 0 < deadline < 10


def test_the_ledger_deadline_leaves_room_to_answer_within_the_scrape_timeout() -> None:
    assert ledger_deadline("2", 10.0) < 2
    assert ledger_deadline("0.5", 10.0) < 0.5
    assert ledger_deadline(None, 10.0) < 10


async def unreachable_ledger_scrape(url: str) -> tuple[int, str, float]:
    engine = create_engine(url)
    client = await client_for(engine)
    try:
        started = time.perf_counter()
        resp = await client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "3"})
        return resp.status, await resp.text(), time.perf_counter() - started
    finally:
        await client.close()
        await engine.dispose()


async def test_an_unreachable_sqlite_ledger_gives_flash_up_0_not_an_error(tmp_path: Path) -> None:
    status, body, _ = await unreachable_ledger_scrape(
        f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'ledger.db'}"
    )
    assert status == 200
    found = samples(body)
    assert value(found, "flash_up") == 0
    assert value(found, "flash_exporter_scrape_failures_total") == 1
    assert not any(name == "flash_payouts" for name, _ in found)


async def test_an_unreachable_postgres_ledger_gives_flash_up_0_within_the_deadline() -> None:
    status, body, seconds = await unreachable_ledger_scrape(
        "postgresql+psycopg://postgres@127.0.0.1:1/nothing"
    )
    assert status == 200
    assert value(samples(body), "flash_up") == 0
    assert seconds < 3


async def test_a_ledger_slower_than_the_scrape_timeout_gives_flash_up_0_then_recovers(
    pg_engine: AsyncEngine, pg_db_url: str
) -> None:
    await add_store(pg_engine, "store-a")
    client = await client_for(pg_engine)
    conninfo = make_url(pg_db_url).set(drivername="postgresql").render_as_string(False)
    blocker = await psycopg.AsyncConnection.connect(conninfo)
    try:
        # Another session holds the counters table: every read of it waits on the lock.
        await blocker.execute("BEGIN")
        await blocker.execute("LOCK TABLE counters IN ACCESS EXCLUSIVE MODE")
        started = time.perf_counter()
        resp = await client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "1"})
        elapsed = time.perf_counter() - started
        assert resp.status == 200
        found = samples(await resp.text())
        assert value(found, "flash_up") == 0
        assert elapsed < 1.0
        await blocker.execute("ROLLBACK")

        resp = await client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "5"})
        found = samples(await resp.text())
        assert value(found, "flash_up") == 1
        assert value(found, "flash_exporter_scrapes_total") == 2
        assert value(found, "flash_exporter_scrape_failures_total") == 1
    finally:
        await blocker.close()
        await client.close()


async def test_the_metrics_listener_exposes_request_counts_and_latencies(
    engine: AsyncEngine,
) -> None:
    app = await metrics_service.build(Context(Settings(metrics_top_cards=5), engine, None))
    client = TestClient(TestServer(app))
    await client.start_server()
    labels = {"listener": "metrics", "method": "GET", "route": "/", "code": "200"}
    before = instrumentation.REGISTRY.get_sample_value("flash_http_requests_total", labels) or 0
    try:
        for _ in range(3):
            assert (await client.get("/")).status == 200
        assert (await client.get("/no/such/page")).status == 404
        resp = await client.get("/metrics")
        found = samples(await resp.text())
    finally:
        await client.close()
    assert value(found, "flash_http_requests_total", **labels) == before + 3
    unmatched = labels | {"route": "unmatched", "code": "404"}
    assert (value(found, "flash_http_requests_total", **unmatched) or 0) >= 1
    count = value(
        found,
        "flash_http_request_duration_seconds_count",
        listener="metrics",
        method="GET",
        route="/",
    )
    assert count is not None and count >= 3
    assert value(found, "flash_http_requests_in_flight", listener="metrics") == 1  # this scrape
    assert value(found, "flash_up") == 1


async def test_instrumenting_an_app_twice_counts_each_request_once() -> None:
    from aiohttp import web

    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_get("/hello/{name}", hello)
    instrumentation.instrument(app, "gateway")
    instrumentation.instrument(app, "gateway")
    labels = {"listener": "gateway", "method": "GET", "route": "/hello/{name}", "code": "200"}
    before = instrumentation.REGISTRY.get_sample_value("flash_http_requests_total", labels) or 0
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        await client.get("/hello/alice")
        await client.get("/hello/bob")
    finally:
        await client.close()
    after = instrumentation.REGISTRY.get_sample_value("flash_http_requests_total", labels)
    assert after == before + 2


async def test_concurrent_scrapes_each_get_a_whole_answer(engine: AsyncEngine) -> None:
    await add_store(engine, "store-a")
    client = await client_for(engine)
    try:
        responses = await asyncio.gather(*(client.get("/metrics") for _ in range(8)))
        bodies = [await r.text() for r in responses]
    finally:
        await client.close()
    assert all(value(samples(b), "flash_up") == 1 for b in bodies)
