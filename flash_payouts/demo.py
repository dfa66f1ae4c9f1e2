"""The demo: the whole system on its real paths, with a BTCPay simulator as the only stand-in.

It starts the simulator and the three listeners, connects a store through Greenfield (webhook
registration included), creates a pull payment and cards, then behaves like a crowd of
Boltcard users: genuine SUN taps, wallets paying the withdrawRequest with signed BOLT11
invoices, BTCPay moving payouts through its states and sending signed webhooks. From time to
time it misbehaves (replayed taps, forged MACs, a card tapping too fast, unknown cards) so that
the refused-tap metrics and alerts have something to show.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from btcpay_sim import ProgressDelays, SimConfig
from btcpay_sim import start as start_simulator
from ledger import migrate
from ledger.db import create_engine, readonly
from ledger.schema import Counter, PayoutRollup
from ledger.secretbox import SecretBox
from ledger.tokens import create_token
from lnurl_gateway.app import GatewayConfig
from lnurl_gateway.boltcard import make_tap
from lnurl_gateway.invoices import encode_invoice
from lnurl_gateway.registry import CardRegistry

from .connect import connect_store, reconcile_stores
from .serve import run_services
from .settings import Settings

DEMO_API_KEY = "demo-greenfield-key"
DEMO_KEY_FILE = "flash-payouts-demo.key"


@dataclass
class DemoOptions:
    duration: float | None = None  # seconds; None runs until Ctrl-C
    cards: int = 25
    rate: float = 4.0  # taps per second, all cards together
    history: int = 0  # historical payouts to bulk-load first
    with_prometheus: bool = False
    seed: int | None = None


@dataclass
class DemoCard:
    card_id: str
    uid: bytes
    k1: bytes
    k2: bytes
    alias: str
    counter: int = 0
    last_tap: tuple[str, str] | None = None


@dataclass
class DemoState:
    store_id: str = ""
    pull_payment_id: str = ""
    token: str = ""
    cards: list[DemoCard] = field(default_factory=list)
    wallet_results: Tally[str] = field(default_factory=Tally)


def demo_settings(settings: Settings, out: TextIO) -> Settings:
    """The demo's settings: regtest invoices, and a master key file made on first run."""
    settings = replace(settings, network="regtest")
    if not settings.master_key and not settings.master_key_file:
        path = Path(DEMO_KEY_FILE)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(SecretBox.generate_key_text() + "\n")
            print(f"created a master key for the demo in ./{DEMO_KEY_FILE}", file=out)
        settings = replace(settings, master_key_file=str(path))
    return settings


async def run_demo(settings: Settings, options: DemoOptions, out: TextIO = sys.stdout) -> int:
    rng = random.Random(options.seed)
    settings = demo_settings(settings, out)
    await asyncio.to_thread(migrate.upgrade, settings.database_url)
    sim = await start_simulator(
        SimConfig(
            network="bcrt",
            # The key the demo's merchant created in BTCPay: the simulator knows no other.
            api_keys={DEMO_API_KEY: ["unrestricted"]},
            progress_delays=ProgressDelays(start=1.0, settle=3.0),
            # Some Lightning payments fail and are tried again, as BTCPay's processor does.
            payment_failure_rate=0.1,
            cancel_rate=0.06,
            redelivery_scale=0.05,
            seed=options.seed,
        )
    )
    stop = asyncio.Event()
    state = DemoState()
    prometheus: asyncio.subprocess.Process | None = None
    tasks: list[asyncio.Task[Any]] = []

    async def on_ready(urls: dict[str, str]) -> None:
        nonlocal prometheus
        engine = create_engine(settings.database_url)
        tasks.append(
            asyncio.create_task(
                _drive(settings, options, sim.url, urls, state, engine, stop, rng, out)
            )
        )
        if options.with_prometheus:
            prometheus = await _start_prometheus(settings, out)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await run_services(settings, ready=on_ready, stop=stop)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                exc = await asyncio.gather(task, return_exceptions=True)
                if exc and isinstance(exc[0], Exception):
                    raise exc[0]
        if prometheus is not None and prometheus.returncode is None:
            prometheus.terminate()
            await prometheus.wait()
        await sim.close()
    return 0


async def _drive(
    settings: Settings,
    options: DemoOptions,
    sim_url: str,
    urls: dict[str, str],
    state: DemoState,
    engine: AsyncEngine,
    stop: asyncio.Event,
    rng: random.Random,
    out: TextIO,
) -> None:
    try:
        async with aiohttp.ClientSession() as http:
            await _set_up(settings, options, sim_url, state, engine, http, rng)
            if options.history:
                from .history import load_history

                print(f"loading {options.history:,} historical payouts ...", file=out, flush=True)
                await load_history(
                    engine,
                    state.store_id,
                    [c.card_id for c in state.cards],
                    options.history,
                    rng=rng,
                )
            _print_banner(settings, urls, sim_url, state, options, out)
            started = time.monotonic()
            summary = asyncio.create_task(_summarise(engine, state, stop, out))
            try:
                await _traffic(settings, options, urls, state, http, rng, stop, started)
            finally:
                if options.duration is not None:
                    await _settle(settings, engine, sim_url, state, http, out)
                summary.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await summary
    finally:
        stop.set()  # the demo ends with its driver, also when setting up failed
        await engine.dispose()


async def _set_up(
    settings: Settings,
    options: DemoOptions,
    sim_url: str,
    state: DemoState,
    engine: AsyncEngine,
    http: aiohttp.ClientSession,
    rng: random.Random,
) -> None:
    headers = {"Authorization": f"token {DEMO_API_KEY}"}
    async with http.post(
        f"{sim_url}/api/v1/stores", json={"name": "Demo shop"}, headers=headers
    ) as resp:
        resp.raise_for_status()
        state.store_id = (await resp.json())["id"]
    box = SecretBox.from_text(settings.master_key_text())
    await connect_store(
        engine,
        box,
        store_id=state.store_id,
        btcpay_url=sim_url,
        api_key=DEMO_API_KEY,
        webhook_url=f"{settings.gateway_base_url}/webhooks/btcpay",
        timeout=settings.btcpay_timeout,
    )
    async with http.post(
        f"{sim_url}/api/v1/stores/{state.store_id}/pull-payments",
        json={
            "name": "Boltcard payouts",
            "description": "Demo pull payment paid out to Boltcards",
            "amount": "100",
            "currency": "BTC",
            "autoApproveClaims": True,
            "payoutMethods": ["BTC-LN"],
            # Wallet invoices live minutes: BTCPay's default (30 days) would refuse them all.
            "BOLT11Expiration": 0,
        },
        headers=headers,
    ) as resp:
        resp.raise_for_status()
        state.pull_payment_id = (await resp.json())["id"]

    registry = CardRegistry(
        engine,
        box,
        lnurlw_base=GatewayConfig(public_url=settings.gateway_base_url).lnurlw_base,
        default_tx_limit_sats=settings.default_tx_limit_sats,
        default_day_limit_sats=settings.default_day_limit_sats,
    )
    names = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy"]
    for i in range(options.cards):
        uid = bytes([0x04]) + secrets.token_bytes(6)
        alias = f"{names[i % len(names)]} {i + 1:02d}"
        issued = await registry.add_card(
            state.store_id,
            pull_payment_id=state.pull_payment_id,
            uid=uid.hex(),
            alias=alias,
            tx_limit_sats=rng.choice([20_000, 50_000, 100_000]),
            day_limit_sats=rng.choice([200_000, 500_000]),
        )
        programmer = issued["programmer"]
        state.cards.append(
            DemoCard(
                card_id=issued["card"]["id"],
                uid=uid,
                k1=bytes.fromhex(programmer["k1"]),
                k2=bytes.fromhex(programmer["k2"]),
                alias=alias,
            )
        )
    async with engine.begin() as conn:
        _info, state.token = await create_token(conn, state.store_id, "manager", "demo")


def _print_banner(
    settings: Settings,
    urls: dict[str, str],
    sim_url: str,
    state: DemoState,
    options: DemoOptions,
    out: TextIO,
) -> None:
    api = urls.get("api", "")
    metrics = urls.get("metrics", "")
    lines = [
        "",
        "Flash Payout Monitor demo is running.",
        f"  store {state.store_id}, pull payment {state.pull_payment_id}, {len(state.cards)} cards",
        f"  BTCPay simulator   {sim_url}",
        f"  gateway            {urls.get('gateway', '')}/boltcard",
        f"  metrics            {metrics}/metrics",
        f"  API                {api}/plugins/flash/api/payouts?storeId={state.store_id}",
        f"  API token          {state.token}",
        f"    curl -H 'Authorization: Bearer {state.token}' "
        f"'{api}/plugins/flash/api/payouts?storeId={state.store_id}&limit=5'",
        "  Prometheus: scrape " + metrics.split("://", 1)[-1] + " (provisioning/prometheus/"
        "prometheus.yml has the job and the alert rules), or `--with-prometheus`;",
        "  Grafana with the boards: `docker compose up` (see docs/grafana.md).",
        f"  database           {settings.database_url}",
        "Ctrl-C stops the demo."
        if options.duration is None
        else f"Stopping by itself after {options.duration:g} s.",
        "",
    ]
    print("\n".join(lines), file=out, flush=True)


async def _traffic(
    settings: Settings,
    options: DemoOptions,
    urls: dict[str, str],
    state: DemoState,
    http: aiohttp.ClientSession,
    rng: random.Random,
    stop: asyncio.Event,
    started: float,
) -> None:
    gateway = urls["gateway"]
    interval = 1.0 / max(options.rate, 0.01)
    in_flight: set[asyncio.Task[None]] = set()
    burst_card: DemoCard | None = None
    burst_left = 0
    next_burst = started + 20
    while not stop.is_set():
        now = time.monotonic()
        if options.duration is not None and now - started >= options.duration:
            break
        if burst_left == 0 and now >= next_burst and state.cards:
            burst_card, burst_left = rng.choice(state.cards), 12
            next_burst = now + rng.uniform(40, 90)
        if burst_left and burst_card is not None:
            burst_left -= 1

            def action(c=burst_card) -> Any:
                return _tap_and_pay(gateway, c, http, rng, state)
        else:
            action = _pick_action(gateway, state, http, rng)
        task = asyncio.create_task(action())
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                stop.wait(), interval * (0.2 if burst_left else rng.uniform(0.5, 1.5))
            )
    if in_flight:
        await asyncio.gather(*in_flight, return_exceptions=True)


def _pick_action(
    gateway: str, state: DemoState, http: aiohttp.ClientSession, rng: random.Random
) -> Callable[[], Any]:
    card = rng.choice(state.cards)
    roll = rng.random()
    if roll < 0.03 and card.last_tap is not None:
        p, c = card.last_tap  # a replayed tap: the same p and c again
        return lambda: _wallet_tap(gateway, p, c, http, state, "replay")
    if roll < 0.06:
        card.counter += 1
        p, _c = make_tap(card.k1, card.k2, card.uid, card.counter)
        forged = secrets.token_hex(8).upper()
        return lambda: _wallet_tap(gateway, p, forged, http, state, "forged")
    if roll < 0.08:
        stranger = secrets.token_bytes(16)
        p, c = make_tap(stranger, secrets.token_bytes(16), b"\x04" + secrets.token_bytes(6), 1)
        return lambda: _wallet_tap(gateway, p, c, http, state, "stranger")
    return lambda: _tap_and_pay(gateway, card, http, rng, state)


async def _wallet_tap(
    gateway: str, p: str, c: str, http: aiohttp.ClientSession, state: DemoState, kind: str
) -> dict[str, Any] | None:
    try:
        async with http.get(f"{gateway}/boltcard", params={"p": p, "c": c}) as resp:
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError):
        state.wallet_results["gateway unreachable"] += 1
        return None
    if body.get("tag") != "withdrawRequest":
        state.wallet_results[f"{kind} refused"] += 1
        return None
    return body


async def _tap_and_pay(
    gateway: str, card: DemoCard, http: aiohttp.ClientSession, rng: random.Random, state: DemoState
) -> None:
    card.counter += 1
    p, c = make_tap(card.k1, card.k2, card.uid, card.counter)
    card.last_tap = (p, c)
    offer = await _wallet_tap(gateway, p, c, http, state, "tap")
    if offer is None:
        return
    low, high = int(offer["minWithdrawable"]), int(offer["maxWithdrawable"])
    if high < low:
        return
    # Most people take a small part of what is offered; some try for more than the limit.
    amount = rng.randint(max(low, 1000), max(low, min(high, 30_000_000)))
    amount -= amount % 1000
    if rng.random() < 0.03:
        amount = high + 1000_000
    invoice = encode_invoice(max(amount, 1000), network="regtest", description="Boltcard payout")
    try:
        async with http.get(offer["callback"], params={"k1": offer["k1"], "pr": invoice}) as resp:
            answer = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError):
        state.wallet_results["callback unreachable"] += 1
        return
    state.wallet_results["paid" if answer.get("status") == "OK" else "callback refused"] += 1


async def _summarise(
    engine: AsyncEngine, state: DemoState, stop: asyncio.Event, out: TextIO
) -> None:
    tty = out.isatty()
    reader = readonly(engine)
    last_print = 0.0
    while not stop.is_set():
        line = await summary_line(reader)
        now = time.monotonic()
        if tty:
            width = shutil.get_terminal_size((120, 20)).columns
            print("\r" + line[: width - 1].ljust(width - 1), end="", file=out, flush=True)
        elif now - last_print >= 10:
            print(line, file=out, flush=True)
            last_print = now
        await asyncio.sleep(1)


async def summary_line(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        statuses = dict(
            (
                await conn.execute(
                    select(PayoutRollup.status, func.sum(PayoutRollup.count)).group_by(
                        PayoutRollup.status
                    )
                )
            ).all()
        )
        taps = dict(
            (
                await conn.execute(
                    select(Counter.label, func.sum(Counter.value))
                    .where(Counter.name == "taps")
                    .group_by(Counter.label)
                )
            ).all()
        )
    accepted = int(taps.get("accepted", 0))
    refused = int(sum(v for k, v in taps.items() if k != "accepted"))
    by_status = " ".join(
        f"{s.lower()} {int(statuses.get(s, 0))}"
        for s in ("Pending", "Processing", "Completed", "Failed")
    )
    return (
        f"taps {accepted + refused} (accepted {accepted}, refused {refused})  payouts: {by_status}"
    )


async def _settle(
    settings: Settings,
    engine: AsyncEngine,
    sim_url: str,
    state: DemoState,
    http: aiohttp.ClientSession,
    out: TextIO,
) -> None:
    """Let in-flight payouts finish and their webhooks arrive, then reconcile once."""
    box = SecretBox.from_text(settings.master_key_text())

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with http.get(f"{sim_url}/_sim/stats") as resp:
            stats = await resp.json()
        moving = sum(stats["payoutsByState"].get(s, 0) for s in ("AwaitingPayment", "InProgress"))
        if not stats["deliveries"]["pending"] and not moving:
            break
        await asyncio.sleep(0.5)
    # Give the enrichment worker a moment to drain what the last webhooks queued.
    await asyncio.sleep(1.0)
    results = await reconcile_stores(
        engine, box, timeout=settings.btcpay_timeout, store_id=state.store_id
    )
    changed = sum(r.changed for r in results)
    seen = sum(r.seen for r in results)
    print(f"\nfinal: {await summary_line(readonly(engine))}", file=out)
    print(
        f"reconcile after the demo: {seen} payouts checked against BTCPay, {changed} corrected",
        file=out,
        flush=True,
    )


async def _start_prometheus(settings: Settings, out: TextIO) -> asyncio.subprocess.Process | None:
    binary = shutil.which("prometheus")
    if binary is None:
        print("--with-prometheus: no `prometheus` on the PATH; skipping it", file=out)
        return None
    from .prometheus_config import write_local_config

    folder = Path(tempfile.mkdtemp(prefix="flash-prometheus-"))
    config = write_local_config(folder, settings.metrics_listen)
    port = 9090
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    print(f"  Prometheus         http://127.0.0.1:{port} (config {config})", file=out, flush=True)
    return proc
