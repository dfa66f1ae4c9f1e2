"""Gateway benchmark: tap steps per second, tap latency at half the peak rate, complete flows.

Everything runs on this machine over loopback: a fresh PostgreSQL database, the BTCPay
simulator and two gateway processes (``python -m bench.gateway serve``), driven by one lean
HTTP/1.1 load generator (``bench.http``). Tap URLs and invoices are made before the clock starts.

Baselines, measured in the same run:
- the tap step's own statement (counter advance, day spend, tap row, rollup, counter) sent
  through psycopg with the same concurrency: the ceiling the database allows;
- claims posted straight to the simulator: the ceiling BTCPay's side allows for flows.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import psycopg
from sqlalchemy.engine import make_url

from .common import BenchOptions, Result, admin_url, percentiles, print_results, save
from .http import Connection

ROOT = Path(__file__).resolve().parent.parent
SUITE = "gateway"
MASTER_KEY = "5a" * 32
PROCESSES = 2
IN_FLIGHT = 32  # requests the load generator keeps open, spread over the processes


def _spawn(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening "):
        proc.kill()
        raise RuntimeError(f"{args[1]} did not start: {line!r}")
    return proc, line.split()[1]


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _setup_cards(db_url: str, sim_url: str, count: int) -> tuple[list, str]:
    from ledger.db import create_engine
    from ledger.secretbox import SecretBox
    from ledger.stores import upsert_store
    from lnurl_gateway.registry import CardRegistry

    admin = {"Authorization": "token bench"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sim_url}/api/v1/stores", json={"name": "b"}, headers=admin) as r:
            store_id = (await r.json())["id"]
        body = {"name": "cards", "amount": "1000", "currency": "BTC", "autoApproveClaims": True,
                "payoutMethods": ["BTC-LN"], "BOLT11Expiration": 0}  # fmt: skip
        url = f"{sim_url}/api/v1/stores/{store_id}/pull-payments"
        async with http.post(url, json=body, headers=admin) as r:
            pp_id = (await r.json())["id"]
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await upsert_store(conn, store_id, btcpay_url=sim_url)
        registry = CardRegistry(
            engine,
            SecretBox.from_text(MASTER_KEY),
            lnurlw_base="lnurlw://127.0.0.1/boltcard",
            default_tx_limit_sats=10**9,
            default_day_limit_sats=10**12,
        )
        cards = []
        for i in range(count):
            uid = "04" + f"{i:012x}"
            added = await registry.add_card(store_id, pull_payment_id=pp_id, uid=uid)
            cards.append((uid, added["programmer"]))
    finally:
        await engine.dispose()
    return cards, pp_id


class Taps:
    """Pre-made tap URLs: each card's counter rises by one per tap."""

    def __init__(self, cards: list) -> None:
        from lnurl_gateway.boltcard import make_tap

        self._make = make_tap
        self.cards = cards
        self.counters = [0] * len(cards)
        self.turn = 0

    def make(self, n: int) -> list[str]:
        urls = []
        for _ in range(n):
            i = self.turn % len(self.cards)
            self.turn += 1
            self.counters[i] += 1
            uid, prog = self.cards[i]
            p, c = self._make(
                bytes.fromhex(prog["k1"]),
                bytes.fromhex(prog["k2"]),
                bytes.fromhex(uid),
                self.counters[i],
            )
            urls.append("/boltcard?" + urlencode({"p": p, "c": c}))
        return urls


async def _on_connections(
    bases: list[str], count: int, worker: Callable[[Connection], Awaitable[None]]
) -> float:
    """Run ``worker`` on each of ``count`` keep-alive connections, spread over ``bases`` in
    turn and opened before the clock starts; the seconds until every worker is done."""
    conns = [await Connection.open(bases[i % len(bases)]) for i in range(count)]
    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker(conn) for conn in conns))
        return time.perf_counter() - start
    finally:
        for conn in conns:
            conn.close()


async def _closed_loop(bases, paths, concurrency) -> tuple[float, list[float], int]:  # type: ignore[no-untyped-def]
    """Fire ``paths`` with ``concurrency`` in flight; (seconds, latencies ms, refusals)."""
    queue = list(reversed(paths))
    latencies: list[float] = []
    refused = 0

    async def worker(conn: Connection) -> None:
        nonlocal refused
        while queue:
            path = queue.pop()
            t0 = time.perf_counter()
            body = await conn.get_json(path)
            latencies.append((time.perf_counter() - t0) * 1000)
            if body.get("status") == "ERROR":
                refused += 1

    seconds = await _on_connections(bases, concurrency, worker)
    return seconds, latencies, refused


async def _open_loop(bases, paths, rate) -> tuple[list[float], int]:  # type: ignore[no-untyped-def]
    """Send ``paths`` at a fixed ``rate`` (requests/s) whatever the answers; latencies in ms.

    A request goes out on an idle connection, or on a new one when none is idle."""
    latencies: list[float] = []
    refused = 0
    idle: list[list[Connection]] = [[] for _ in bases]
    opened: list[Connection] = []

    async def one(i: int, path: str) -> None:
        nonlocal refused
        t0 = time.perf_counter()
        free = idle[i % len(bases)]
        if free:
            conn = free.pop()
        else:
            conn = await Connection.open(bases[i % len(bases)])
            opened.append(conn)
        body = await conn.get_json(path)
        latencies.append((time.perf_counter() - t0) * 1000)
        free.append(conn)
        if body.get("status") == "ERROR":
            refused += 1

    for i in range(2 * len(bases)):  # a few open before the clock
        opened.append(await Connection.open(bases[i % len(bases)]))
        idle[i % len(bases)].append(opened[-1])
    tasks = []
    start = time.perf_counter()
    for i, path in enumerate(paths):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, path)))
    await asyncio.gather(*tasks)
    for conn in opened:
        conn.close()
    return latencies, refused


async def _flows(bases, taps: list[str], invoices: list[str], concurrency: int):  # type: ignore[no-untyped-def]
    queue = list(reversed(list(zip(taps, invoices, strict=True))))
    ok = 0

    async def worker(conn: Connection) -> None:
        nonlocal ok
        while queue:
            tap, pr = queue.pop()
            request = await conn.get_json(tap)
            if request.get("tag") != "withdrawRequest":
                continue
            query = urlencode({"k1": request["k1"], "pr": pr})
            if (await conn.get_json(f"/boltcard/callback?{query}")).get("status") == "OK":
                ok += 1

    seconds = await _on_connections(bases, concurrency, worker)
    return seconds, ok


async def _sql_baseline(conninfo: str, n: int, concurrency: int, tag: str) -> float:
    """The gateway's one-statement tap step through psycopg, on cards of its own; steps/s.

    The same statement (``ledger.taps``) in autocommit, so what it measures is the ceiling the
    database allows for the tap step, without HTTP, crypto or SQLAlchemy.
    """
    from ledger.taps import _TAP_SQL

    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO stores (id, name, card_tracking, created_at, updated_at)"
            " VALUES ('sqlbase', '', true, now(), now()) ON CONFLICT DO NOTHING"
        )
        for i in range(concurrency):
            await conn.execute(
                "INSERT INTO boltcards (id, store_id, origin, uid_hash, k1_fingerprint, "
                "key_version, last_counter, enabled, created_at, updated_at) VALUES "
                "(%s, 'sqlbase', 'imported', %s, 'fp', 1, -1, true, now(), now())",
                (f"sqlbase{tag}-{i}", f"uh{tag}-{i}"),
            )
    per_worker = n // concurrency

    async def worker(i: int) -> None:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            for counter in range(per_worker):
                now = datetime.now(UTC)
                cur = await conn.execute(
                    _TAP_SQL,
                    {
                        "card_id": f"sqlbase{tag}-{i}",
                        "key_version": 1,
                        "counter": counter,
                        "uid": "04000000000000",
                        "k1_hash": hashlib.sha256(secrets.token_bytes(32)).hexdigest(),
                        "k1_expires_at": now + timedelta(minutes=5),
                        "min_msat": 1000,
                        "default_tx_sats": 10**9,
                        "default_day_sats": 10**12,
                        "limit_reason": "limit",
                        "remote_addr": "127.0.0.1",
                        "user_agent": None,
                        "day": now.date(),
                        "now": now,
                    },
                )
                assert await cur.fetchone() is not None

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return per_worker * concurrency / (time.perf_counter() - start)


async def _sim_claims(sim_url: str, pp_id: str, invoices: list[str], concurrency: int) -> float:
    queue = list(invoices)
    path = f"/api/v1/pull-payments/{pp_id}/payouts"

    async def worker(conn: Connection) -> None:
        while queue:
            pr = queue.pop()
            await conn.post_json(path, {"destination": pr, "payoutMethodId": "BTC-LN"})

    return len(invoices) / await _on_connections([sim_url], concurrency, worker)


async def run(options: BenchOptions) -> list[Result]:
    from btcpay_sim.invoices import InvoiceMinter
    from ledger import migrate

    quick = options.quick
    rounds = 1 if quick else 5
    n_taps = 1000 if quick else 6000
    n_flows = 200 if quick else 1500
    n_cards = 64 if quick else 256
    name = f"flash_bench_{uuid.uuid4().hex[:10]}"
    admin = admin_url(options.postgres_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = (
        make_url(options.postgres_url)
        .set(drivername="postgresql+psycopg", database=name)
        .render_as_string(hide_password=False)
    )
    conninfo = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    procs: list[subprocess.Popen] = []
    results: list[Result] = []
    size = f"{PROCESSES} procs"
    try:
        migrate.upgrade(db_url)
        sim, sim_url = _spawn(["-m", "bench.gateway", "sim"])
        procs.append(sim)
        cards, pp_id = await _setup_cards(db_url, sim_url, n_cards)
        bases = []
        for _ in range(PROCESSES):
            proc, url = _spawn(
                ["-m", "bench.gateway", "serve", db_url], {"FLASH_MASTER_KEY": MASTER_KEY}
            )
            procs.append(proc)
            bases.append(url)
        taps = Taps(cards)
        rng = random.Random(1)
        minter = InvoiceMinter(network="bcrt")
        invoices = [
            minter.mint(rng.randint(1, 500) * 1_000_000).bolt11 for _ in range(n_flows * 2 * rounds)
        ]
        # Warm up: every card tapped once on each process, which opens its keys there.
        # The first tap of a card in a process looks the card up and opens its keys
        # (a second statement); the figures below are of the steady state after it.
        for base in bases:
            await _closed_loop([base], taps.make(len(cards)), IN_FLIGHT)

        # Each figure is the median of ``rounds`` runs, each after a checkpoint, so that
        # neither a checkpoint's writes nor a slow moment of the machine decides it alone.
        peaks, baselines, latencies, refused = [], [], [], 0
        for i in range(rounds):
            _checkpoint(conninfo)
            seconds, round_latencies, round_refused = await _closed_loop(
                bases, taps.make(n_taps), IN_FLIGHT
            )
            peaks.append(n_taps / seconds)
            latencies += round_latencies
            refused += round_refused
            _checkpoint(conninfo)
            # As many connections as the gateways have requests in flight.
            baselines.append(await _sql_baseline(conninfo, n_taps, IN_FLIGHT, f"r{i}"))
        peak = statistics.median(peaks)
        results.append(
            Result(
                SUITE,
                "tap steps, closed loop",
                "taps/s",
                peak,
                size=size,
                baseline="tap statement via psycopg",
                baseline_value=statistics.median(baselines),
                goal=">= 1000 taps/s",
                met=peak >= 1000,
                notes=f"median of {rounds} runs of {n_taps} ({_spread(peaks)}); "
                f"{IN_FLIGHT} in flight; {refused} refused",
            )
        )
        closed = percentiles(latencies)
        results.append(Result(SUITE, "tap step p50, closed loop", "ms", closed["p50"], size=size))

        half = peak / 2
        count = min(n_taps, max(500, int(half * 5)))
        p50s, p99s, refused = [], [], 0
        for _ in range(3 if rounds > 1 else 1):
            _checkpoint(conninfo)
            latencies, round_refused = await _open_loop(bases, taps.make(count), half)
            p50s.append(percentiles(latencies)["p50"])
            p99s.append(percentiles(latencies)["p99"])
            refused += round_refused
        p99 = statistics.median(p99s)
        results.append(
            Result(
                SUITE,
                "tap step p50 at half peak",
                "ms",
                statistics.median(p50s),
                size=f"{half:.0f}/s",
            )
        )
        results.append(
            Result(
                SUITE,
                "tap step p99 at half peak",
                "ms",
                p99,
                size=f"{half:.0f}/s",
                goal="< 20 ms",
                met=p99 < 20,
                notes=f"median of {len(p99s)} runs of {count} taps sent at a fixed rate "
                f"(p99 {', '.join(f'{v:.1f}' for v in p99s)} ms); {refused} refused",
            )
        )

        rates, claim_rates, paid = [], [], 0
        for _ in range(rounds):
            _checkpoint(conninfo)
            straight = [invoices.pop() for _ in range(n_flows)]
            claim_rates.append(await _sim_claims(sim_url, pp_id, straight, IN_FLIGHT))
            _checkpoint(conninfo)
            tapped = [invoices.pop() for _ in range(n_flows)]
            seconds, ok = await _flows(bases, taps.make(n_flows), tapped, IN_FLIGHT)
            rates.append(ok / seconds)
            paid += ok
        flows = statistics.median(rates)
        results.append(
            Result(
                SUITE,
                "complete tap + callback flows",
                "flows/s",
                flows,
                size=size,
                baseline="claims posted straight to the simulator",
                baseline_value=statistics.median(claim_rates),
                goal=">= 300 flows/s",
                met=flows >= 300,
                notes=f"median of {rounds} runs of {n_flows} ({_spread(rates)}); "
                f"{paid} of {rounds * n_flows} paid",
            )
        )
    finally:
        _stop(procs)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return results


def _checkpoint(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def _spread(values: list[float]) -> str:
    return f"{min(values):,.0f} to {max(values):,.0f}"


# --- the processes the benchmark drives ---------------------------------------------------------


async def _serve_gateway(db_url: str) -> None:
    from aiohttp import web

    from ledger.db import create_engine
    from ledger.secretbox import SecretBox
    from lnurl_gateway.app import GatewayConfig, create_app

    # A connection for every request in flight and one for the claim writer: under a steady
    # load beyond its pool a process would open and close a connection per request.
    engine = create_engine(db_url, pool_size=IN_FLIGHT // PROCESSES + 1)
    box = SecretBox.from_text(os.environ["FLASH_MASTER_KEY"])
    config = GatewayConfig(
        public_url="http://127.0.0.1",
        network="regtest",
        default_tx_limit_sats=10**9,
        default_day_limit_sats=10**12,
    )
    await _listen(web.AppRunner(create_app(engine, box, config), access_log=None))
    await engine.dispose()


async def _serve_sim() -> None:
    from aiohttp import web

    from btcpay_sim import SimConfig, create_app

    config = SimConfig(api_keys={"bench": ["unrestricted"]}, auto_progress=False)
    await _listen(web.AppRunner(create_app(config), access_log=None))


async def _listen(runner) -> None:  # type: ignore[no-untyped-def]
    from aiohttp import web

    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(f"listening http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    from flash_payouts import loop

    if sys.argv[1:2] == ["serve"]:
        loop.run(_serve_gateway(sys.argv[2]))
    elif sys.argv[1:2] == ["sim"]:
        loop.run(_serve_sim())
    else:
        found = loop.run(run(BenchOptions(quick="--quick" in sys.argv)))
        print_results(found)
        if "--quick" not in sys.argv:
            save(SUITE, found)
