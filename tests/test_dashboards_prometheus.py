"""Every PromQL of every panel and alert rule, evaluated by a real Prometheus.

The ledger is filled through the BTCPay simulator and the Boltcard gateway (card taps, claims,
a replayed and a forged tap), then BTCPay's later news (a completion, webhook deliveries, a
reconcile) through the ledger's own write functions, as the webhook receiver and reconciler
write them. Prometheus scrapes the metrics listener as ``serve`` builds it, with the generated
configuration and rule file. Each panel query must return data; each rule must parse and load.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine
from test_exporter_prometheus import PROMETHEUS, binary, exporter_on_loopback, free_port
from test_gateway_flow import Setup, flip, invoice, issue_card, running_gateway, tap_of

from dashboards import alerts
from dashboards.common import to_dict
from dashboards.generate import DEFAULT_OUT
from dashboards.loader import load_dashboards
from dashboards.macros import Frame, expand_prometheus
from dashboards.provisioning import Targets, prometheus_config
from ledger.payouts import PayoutRecord, record_event, upsert_payout
from ledger.schema import Payout, SyncState

pytestmark = [pytest.mark.prometheus, pytest.mark.postgres]

UID = "04112233445566"


def panel_queries() -> list[tuple[str, str, str, bool]]:
    """(board uid, panel title, expr, instant) for every Prometheus target of every board."""
    found = []
    for board in load_dashboards().values():
        data = to_dict(board)
        for panel in data["panels"]:
            for target in panel.get("targets", []):
                if target.get("datasource", {}).get("type") == "prometheus":
                    found.append((data["uid"], panel["title"], target["expr"], target["instant"]))
    return found


async def claim(gw: Setup, programmer: dict[str, Any], counter: int, sats: int) -> None:
    request = await gw.tap(*tap_of(programmer, UID, counter))
    assert request["tag"] == "withdrawRequest", request
    assert await gw.callback(request["k1"], invoice(sats)) == {"status": "OK"}


async def btcpay_news(gw: Setup, delivery: str) -> None:
    """What the webhook receiver and the reconciler record after BTCPay paid the payouts."""
    now = datetime.now(UTC)
    async with gw.engine.begin() as conn:
        rows = await conn.execute(select(Payout.__table__).where(Payout.status != "Completed"))
        for row in rows.mappings().all():
            await record_event(
                conn,
                store_id=row["store_id"],
                payout_id=row["id"],
                source="webhook",
                event_type="PayoutUpdated",
                delivery_id=f"{delivery}-{row['id']}",
            )
            await upsert_payout(
                conn,
                PayoutRecord(
                    id=row["id"],
                    store_id=row["store_id"],
                    state="Completed",
                    revision=row["revision"],
                    created_at=row["created_at"],
                    pull_payment_id=row["pull_payment_id"],
                    original_amount=row["original_amount"],
                    original_currency=row["original_currency"],
                    payout_amount=row["payout_amount"],
                    payout_currency=row["payout_currency"],
                    amount_sats=row["amount_sats"],
                    payout_method_id=row["payout_method_id"],
                    destination=row["destination"],
                    payment_hash=row["payment_hash"],
                ),
                source="webhook",
                event_type="PayoutUpdated",
                now=now,
            )
        await conn.execute(SyncState.__table__.delete().where(SyncState.store_id == gw.store_id))
        await conn.execute(
            insert(SyncState.__table__).values(
                store_id=gw.store_id, last_started_at=now, last_success_at=now
            )
        )


async def start_prometheus(tmp_path: Path, target: str) -> tuple[asyncio.subprocess.Process, str]:
    rules = tmp_path / "rules.yml"
    # The generated rules as they are, evaluated every second instead of every 30 s.
    groups = yaml.safe_load((DEFAULT_OUT / "prometheus/rules/flash.yml").read_text())
    for group in groups["groups"]:
        group["interval"] = "1s"
    rules.write_text(yaml.safe_dump(groups))
    config = prometheus_config(
        Targets(metrics=target, scrape_interval="1s", evaluation_interval="1s"),
        [str(rules)],
        alerting=False,
    )
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        binary(PROMETHEUS, "prometheus"),
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


async def api(session: aiohttp.ClientSession, base: str, path: str, **params: Any) -> Any:
    async with session.get(f"{base}/api/v1/{path}", params=params) as resp:
        body = await resp.json()
    assert body["status"] == "success", (params, body)
    return body["data"]


async def wait_for_scrapes(session: aiohttp.ClientSession, base: str, n: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            data = await api(session, base, "query", query="count_over_time(flash_up[5m])")
            if data["result"] and float(data["result"][0]["value"][1]) >= n:
                return
        except aiohttp.ClientError:
            pass  # not listening yet
        await asyncio.sleep(0.5)
    raise AssertionError(f"Prometheus did not scrape the exporter {n} times")


async def test_every_panel_and_rule_query_runs_on_a_real_prometheus(
    pg_engine: AsyncEngine, master_key_hex: str, tmp_path: Path
) -> None:
    async for gw in running_gateway(pg_engine, master_key_hex):
        added = await issue_card(gw, UID, alias="Till 1")
        programmer = added["programmer"]
        await claim(gw, programmer, 1, 2_100)
        async with exporter_on_loopback(pg_engine) as target:
            proc, base = await start_prometheus(tmp_path, target)
            try:
                async with aiohttp.ClientSession() as session:
                    await wait_for_scrapes(session, base, 3)
                    # Activity while Prometheus watches, so rates and increases move.
                    await claim(gw, programmer, 2, 3_300)
                    p, c = tap_of(programmer, UID, 2)
                    assert "replayed" in (await gw.tap(p, c))["reason"]
                    assert (await gw.tap(p, flip(c, 3)))["status"] == "ERROR"
                    await btcpay_news(gw, "d1")
                    await claim(gw, programmer, 3, 1_200)
                    await btcpay_news(gw, "d2")
                    await wait_for_scrapes(session, base, 12)
                    await check_queries(session, base, gw.store_id)
            finally:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 10)


async def check_queries(session: aiohttp.ClientSession, base: str, store: str) -> None:
    frame = Frame.last(
        timedelta(minutes=5),
        variables={"store": [store]},
        interval="1s",
        scrape_interval="1s",
    )
    now = time.time()
    empty = []
    queries = panel_queries()
    assert len(queries) >= 20
    for uid, title, expr, instant in queries:
        promql = expand_prometheus(expr, frame)
        if instant:
            data = await api(session, base, "query", query=promql, time=now)
        else:
            data = await api(
                session, base, "query_range", query=promql, start=now - 60, end=now, step=1
            )
        if not data["result"]:
            empty.append(f"{uid} / {title}: {promql}")
    assert not empty, "panel queries without data:\n" + "\n".join(empty)

    for rule in alerts.rules():
        await api(session, base, "query", query=rule.expr, time=now)
        await api(session, base, "query", query=rule.value, time=now)
    deadline = time.monotonic() + 20
    while True:
        loaded = await api(session, base, "rules", type="alert")
        health = {r["name"]: r["health"] for g in loaded["groups"] for r in g["rules"]}
        if set(health.values()) == {"ok"} or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert set(health) == {r.name for r in alerts.rules()}
    assert set(health.values()) == {"ok"}, health
    # The replayed tap above is what the replay rule is for.
    firing = {r["name"] for g in loaded["groups"] for r in g["rules"] if r["state"] != "inactive"}
    assert "FlashReplayedCounter" in firing
