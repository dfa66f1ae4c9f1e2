"""The metrics listener: ``GET /metrics`` for Prometheus and a landing page at ``/``.

Each scrape awaits the ledger reads under the scrape's own deadline, then encodes a private,
per-request registry. A slow or unreachable ledger never turns into a 500: the scrape still
answers, with ``flash_up 0`` and the families that do not depend on the ledger.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CollectorRegistry, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.db import readonly
from ledger.readings import SlowReading, Snapshot, read_slow, read_snapshot, read_stores

from .catalogue import ACTIVE_WINDOWS
from .collectors import AREA_COLLECTORS, ExporterCollector
from .slow import SLOW_WINDOWS, SlowCache

log = logging.getLogger("exporter")

TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"


@dataclass(frozen=True)
class ExporterConfig:
    # Cards given their own series (top K by recent activity); 0: none.
    top_cards: int = 20
    # Deadline for the ledger reads when the scraper sends no timeout header.
    default_timeout: float = 10.0
    # Seconds the slow-moving readings (active cards over 1d and 30d, the choice of the top
    # cards) are reused between scrapes before being read again; 0: every scrape reads them.
    slow_max_age: float = 60.0
    # Families from elsewhere in the process (the HTTP listeners' instrumentation), exposed as is.
    extra: tuple[Collector, ...] = field(default_factory=tuple)


@dataclass
class ExporterState:
    engine: AsyncEngine
    config: ExporterConfig
    scrapes: int = 0
    failures: int = 0
    slow: SlowCache = field(init=False)

    def __post_init__(self) -> None:
        self.slow = SlowCache(self.config.slow_max_age)


STATE_KEY = web.AppKey("flash_exporter_state", ExporterState)


def ledger_deadline(header: str | None, default: float) -> float:
    """Seconds the ledger reads may take: the scraper's timeout less room to encode and send."""
    try:
        timeout = float(header) if header else default
    except ValueError:
        timeout = default
    if not (math.isfinite(timeout) and timeout > 0):
        timeout = default
    return max(0.05, timeout - max(0.1, timeout * 0.1))


@asynccontextmanager
async def ledger_transaction(
    engine: AsyncEngine, deadline: float
) -> AsyncIterator[AsyncConnection]:
    """A read-only transaction whose statements stop at ``deadline`` seconds on the server."""
    async with readonly(engine).connect() as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            # A consistent view across the queries, and a server-side stop if the scraper has
            # given up: the client-side deadline alone would leave the query running.
            await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            millis = max(1, int(deadline * 1000))
            await conn.execute(text(f"SET LOCAL statement_timeout = {millis}"))
        yield conn


async def read_ledger(
    engine: AsyncEngine, config: ExporterConfig, deadline: float, cache: SlowCache | None = None
) -> Snapshot:
    """One consistent read-only snapshot of what the scrape exports.

    With a ``cache``, its slow readings stand in for the ones it holds, and what this read
    makes of them is kept there; without, everything is read now.
    """
    if cache is not None and cache.max_age <= 0:
        cache = None  # reuse off: read every window in one statement, as without a cache
    now = datetime.now(UTC)
    slow = cache.usable(now) if cache is not None else None
    async with ledger_transaction(engine, deadline) as conn:
        snapshot = await read_snapshot(
            conn,
            now=now,
            top_cards=config.top_cards,
            windows=dict(ACTIVE_WINDOWS),
            slow=slow,
            slow_windows=SLOW_WINDOWS if cache is not None else None,
        )
    if cache is not None:
        cache.keep(snapshot.slow)
        cache.refresh_if_old(now, lambda: read_slow_only(engine, config))
    return snapshot


async def read_slow_only(engine: AsyncEngine, config: ExporterConfig) -> SlowReading:
    """The slow readings alone, as the background refresh reads them."""
    async with ledger_transaction(engine, config.default_timeout) as conn:
        return await read_slow(
            conn,
            now=datetime.now(UTC),
            stores=await read_stores(conn),
            top_cards=config.top_cards,
            windows=SLOW_WINDOWS,
        )


class _Forward:
    """Exposes another registry's families in the per-scrape registry, collected at scrape time."""

    def __init__(self, source: Collector) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()


def build_registry(
    snapshot: Snapshot | None, state: ExporterState, duration: float
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        ExporterCollector(snapshot is not None, duration, state.scrapes, state.failures)
    )
    if snapshot is not None:
        for area in AREA_COLLECTORS:
            registry.register(area(snapshot))
    for source in state.config.extra:
        registry.register(_Forward(source))
    return registry


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    deadline = ledger_deadline(request.headers.get(TIMEOUT_HEADER), state.config.default_timeout)
    started = time.perf_counter()
    snapshot: Snapshot | None = None
    try:
        async with asyncio.timeout(deadline):
            snapshot = await read_ledger(state.engine, state.config, deadline, state.slow)
    except TimeoutError:
        log.warning("ledger read passed the scrape deadline of %.2f s", deadline)
    except Exception as exc:  # any ledger failure is reported as flash_up 0, never as a 500
        log.warning("ledger read failed: %s: %s", type(exc).__name__, _first_line(exc))
    duration = time.perf_counter() - started
    state.scrapes += 1
    if snapshot is None:
        state.failures += 1
    registry = build_registry(snapshot, state, duration)
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(registry), headers={"Content-Type": content_type})


def _first_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0][:200] if lines else ""


LANDING = """<!doctype html>
<html><head><meta charset="utf-8"><title>Flash Payout Monitor exporter</title></head>
<body><h1>Flash Payout Monitor exporter</h1>
<p>Payout, tap and card metrics from the ledger, for Prometheus.</p>
<p><a href="metrics">Metrics</a></p></body></html>
"""


async def landing(_request: web.Request) -> web.Response:
    return web.Response(text=LANDING, content_type="text/html")


def create_app(engine: AsyncEngine, config: ExporterConfig | None = None) -> web.Application:
    """The metrics listener's application; the engine's lifecycle belongs to the caller."""
    app = web.Application()
    state = ExporterState(engine, config or ExporterConfig())
    app[STATE_KEY] = state

    async def stop_refresh(_app: web.Application) -> None:
        await state.slow.close()

    app.on_cleanup.append(stop_refresh)
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    return app
