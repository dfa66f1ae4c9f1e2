"""Ingestion benchmark: signed webhook events stored per second, and full reconciles.

Everything runs on this machine over loopback, on a fresh PostgreSQL database.

- Webhooks: a receiver process (``python -m bench.ingest serve``, the real WebhookReceiver)
  takes pre-signed BTCPay bodies from CLIENTS load processes (a bare keep-alive HTTP client,
  CONCURRENCY connections in all). Baseline, same run, same processes and concurrency: each
  event's writes as one transaction of its own (event row INSERT ... ON CONFLICT, counter
  upsert, commit) sent straight through psycopg. The receiver writes the deliveries that arrive
  together in one statement and one commit, which is why it can pass its baseline.
- Reconcile: the BTCPay simulator (its own process) seeded with N payouts; a full reconcile
  into an empty ledger, then a second one with nothing to change. Baseline, same run: fetching
  and parsing the same list (GET + ``json.loads``) with nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import psycopg
from sqlalchemy.engine import make_url

from .common import BenchOptions, Result, admin_url, print_results, save

ROOT = Path(__file__).resolve().parent.parent
SUITE = "ingest"
MASTER_KEY = "3c" * 32
SECRET = "bench-webhook-secret"
STORE = "BenchStore"
CONCURRENCY = 32  # concurrent BTCPay deliveries (and baseline transactions), in all
CLIENTS = 2  # load processes sharing them
WARM_UP = 200


def _create_db(server_url: str) -> tuple[str, str]:
    name = f"flash_bench_ingest_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url(server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False), name


def _drop_db(server_url: str, name: str) -> None:
    with psycopg.connect(admin_url(server_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


async def _wait_for(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up")
            await asyncio.sleep(0.1)


# --- the receiver process -------------------------------------------------------------------


def serve(db_url: str, port: int) -> None:
    """The webhook receiver alone (no enrichment: there is no BTCPay to ask here)."""
    from aiohttp import web

    from ledger.db import create_engine
    from ledger.secretbox import SecretBox
    from lnurl_gateway.webhooks import WebhookReceiver, add_webhook_route

    engine = create_engine(db_url, pool_size=CONCURRENCY // 2)
    app = web.Application()
    add_webhook_route(app, WebhookReceiver(engine, SecretBox.from_text(MASTER_KEY)))
    app.router.add_get("/ready", lambda r: web.Response(text="ok"))
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# --- webhooks -----------------------------------------------------------------------------------


def _bodies(count: int, first: int = 0) -> list[tuple[bytes, str]]:
    made = []
    for i in range(first, first + count):
        delivery = f"bench{i:09d}"
        body = json.dumps(
            {
                "deliveryId": delivery,
                "webhookId": "W",
                "originalDeliveryId": delivery,
                "isRedelivery": False,
                "type": "PayoutCreated",
                "timestamp": 1767225600 + i,
                "storeId": STORE,
                "payoutId": f"PO{i:09d}",
                "pullPaymentId": "PP",
                "payoutState": "AwaitingApproval",
            },
            indent=2,
        ).encode()
        sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        made.append((body, sig))
    return made


# --- load generators (each in processes of their own) -------------------------------------------


async def _post_all(port: int, bodies: list[tuple[bytes, str]], connections: int) -> None:
    """POST every body over ``connections`` keep-alive connections.

    A bare HTTP/1.1 client on asyncio streams, requests encoded up front: an aiohttp client
    costs several times the CPU per request, and on two cores that CPU is the receiver's.
    """
    requests = [
        b"POST /webhooks/btcpay HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nBTCPay-Sig: "
        + sig.encode()
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
        for body, sig in reversed(bodies)
    ]
    refused = 0

    async def worker() -> None:
        nonlocal refused
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while requests:
                writer.write(requests.pop())
                head = await reader.readuntil(b"\r\n\r\n")
                refused += not head.startswith(b"HTTP/1.1 200")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    if refused:
        raise RuntimeError(f"{refused} webhook posts were refused")


async def _insert_all(dsn: str, first: int, count: int, connections: int) -> None:
    """The receiver's writes with no HTTP, no JSON and no ORM: one transaction per event, an
    event row INSERT ... ON CONFLICT and a counter upsert, as the receiver's work was."""
    payload = json.dumps({"bench": True})
    sql_event = (
        "INSERT INTO payout_events (store_id, payout_id, source, event_type, state, delivery_id,"
        " enrich_pending, enrich_attempts, payload, received_at) VALUES (%s, %s, 'webhook',"
        " 'PayoutCreated', 'AwaitingApproval', %s, true, 0, %s, now())"
        " ON CONFLICT (delivery_id) DO NOTHING RETURNING id"
    )
    sql_counter = (
        "INSERT INTO counters (store_id, name, label, value) VALUES (%s, 'webhook_events',"
        " 'PayoutCreated', 1) ON CONFLICT (store_id, name, label)"
        " DO UPDATE SET value = counters.value + excluded.value"
    )
    todo = list(range(first, first + count))

    async def worker() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            while todo:
                i = todo.pop()
                async with conn.transaction():
                    await conn.execute(sql_event, (STORE, f"RAW{i}", f"raw{i:09d}", payload))
                    await conn.execute(sql_counter, (STORE,))

    await asyncio.gather(*(worker() for _ in range(connections)))


def load(mode: str, target: str, first: int, count: int, connections: int, go: float) -> None:
    """One load process: wait for the common start time, do its share, print start and end."""
    bodies = _bodies(count, first) if mode == "post" else []
    time.sleep(max(0.0, go - time.time()))
    started = time.time()
    if mode == "post":
        asyncio.run(_post_all(int(target), bodies, connections))
    else:
        asyncio.run(_insert_all(target, first, count, connections))
    print(json.dumps({"started": started, "ended": time.time()}), flush=True)


def _run_load(mode: str, target: str, first: int, count: int) -> float:
    """Events per second of CLIENTS processes sharing ``count`` events and CONCURRENCY
    connections, from the first start to the last end."""
    share = count // CLIENTS
    go = time.time() + 3.0  # time enough for every process to start and build its bodies
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.ingest",
                "load",
                mode,
                target,
                str(first + i * share),
                str(share),
                str(CONCURRENCY // CLIENTS),
                repr(go),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(CLIENTS)
    ]
    spans = []
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"a {mode} load process failed")
        spans.append(json.loads(out.strip().splitlines()[-1]))
    seconds = max(s["ended"] for s in spans) - min(s["started"] for s in spans)
    return share * CLIENTS / seconds


async def bench_webhooks(options: BenchOptions) -> list[Result]:
    from ledger import migrate
    from ledger.db import create_engine
    from ledger.secretbox import SecretBox
    from ledger.stores import upsert_store
    from lnurl_gateway.btcpay_stores import seal_webhook_secret

    count = 2_000 if options.quick else 20_000
    db_url, name = _create_db(options.postgres_url)
    proc = None
    try:
        await asyncio.to_thread(migrate.upgrade, db_url)
        engine = create_engine(db_url)
        async with engine.begin() as conn:
            box = SecretBox.from_text(MASTER_KEY)
            await upsert_store(
                conn, STORE, webhook_secret_sealed=seal_webhook_secret(box, STORE, SECRET)
            )
        await engine.dispose()
        port = _free_port()
        proc = _spawn(["-m", "bench.ingest", "serve", db_url, str(port)])
        await _wait_for(f"http://127.0.0.1:{port}/ready")
        await _post_all(port, _bodies(WARM_UP, 10**8), CONCURRENCY)
        rate = await asyncio.to_thread(_run_load, "post", str(port), 0, count)
        _stop(proc)
        proc = None
        dsn = admin_url(db_url.replace("+psycopg", ""))
        baseline = await asyncio.to_thread(_run_load, "insert", dsn, 0, count)
    finally:
        if proc is not None:
            _stop(proc)
        _drop_db(options.postgres_url, name)
    return [
        Result(
            SUITE,
            "webhook events stored",
            "events/s",
            rate,
            size=str(count),
            baseline="raw INSERT event + counter TPS via psycopg, same clients",
            baseline_value=baseline,
            goal=">= 1000 events/s",
            met=rate >= 1000,
            notes=(
                f"one receiver process; {CLIENTS} client processes, {CONCURRENCY} keep-alive"
                " connections in all; concurrent deliveries share one write and commit"
            ),
        )
    ]


# --- reconcile ----------------------------------------------------------------------------------


async def bench_reconcile(options: BenchOptions) -> list[Result]:
    from ledger import migrate
    from ledger.db import create_engine
    from lnurl_gateway.greenfield import GreenfieldClient
    from lnurl_gateway.reconcile import reconcile_store

    count = 5_000 if options.quick else 100_000
    db_url, name = _create_db(options.postgres_url)
    port = _free_port()
    sim = _spawn(
        ["-m", "btcpay_sim", "--listen", f"127.0.0.1:{port}", "--admin-key", "bench", "--seed", "1"]
    )
    sim_url = f"http://127.0.0.1:{port}"
    engine = None
    try:
        await _wait_for(f"{sim_url}/api/v1/health")
        await asyncio.to_thread(migrate.upgrade, db_url)
        engine = create_engine(db_url)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            auth = {"Authorization": "token bench"}
            async with http.post(f"{sim_url}/api/v1/stores", json={"name": "b"}, headers=auth) as r:
                store_id = (await r.json())["id"]
            async with http.post(
                f"{sim_url}/_sim/bulk-payouts", json={"storeId": store_id, "count": count}
            ) as r:
                r.raise_for_status()
            # Baseline: the same list fetched and parsed, nothing else.
            started = time.perf_counter()
            async with http.get(
                f"{sim_url}/api/v1/stores/{store_id}/payouts",
                params={"includeCancelled": "true"},
                headers=auth,
            ) as r:
                listed = json.loads(await r.read())
            fetch_parse = time.perf_counter() - started
            assert len(listed) == count
            del listed

        async with GreenfieldClient(sim_url, "bench", timeout=60) as client:
            first = await reconcile_store(engine, client, store_id)
            second = await reconcile_store(engine, client, store_id)
        assert first.ok and first.created == count, first
        assert second.ok and second.changed == 0, second
    finally:
        if engine is not None:
            await engine.dispose()
        _stop(sim)
        _drop_db(options.postgres_url, name)
    return [
        Result(
            SUITE,
            "full reconcile, empty ledger",
            "s",
            first.seconds,
            size=str(count),
            baseline="GET + json.loads of the same list",
            baseline_value=fetch_parse,
            goal="< 30 s",
            met=first.seconds < 30,
            notes="every payout new: BOLT11 decoded, payout + rollups + audit row written",
        ),
        Result(
            SUITE,
            "full reconcile, ledger in sync",
            "s",
            second.seconds,
            size=str(count),
            baseline="GET + json.loads of the same list",
            baseline_value=fetch_parse,
            goal="< 30 s",
            met=second.seconds < 30,
            notes="the periodic case: streamed, diffed a page at a time, nothing written",
        ),
    ]


async def run(options: BenchOptions) -> list[Result]:
    return [*await bench_webhooks(options), *await bench_reconcile(options)]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 8 and sys.argv[1] == "load":
        mode, target, first, count, conns, go = sys.argv[2:]
        load(mode, target, int(first), int(count), int(conns), float(go))
    else:
        opts = BenchOptions(quick="--quick" in sys.argv)
        found = asyncio.run(run(opts))
        print_results(found)
        if not opts.quick:
            save(SUITE, found)
