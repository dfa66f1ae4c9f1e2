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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CollectorRegistry, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.db import readonly
from ledger.readings import Snapshot, read_snapshot

from .catalogue import ACTIVE_WINDOWS
from .collectors import AREA_COLLECTORS, ExporterCollector

log = logging.getLogger("exporter")

TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"


@dataclass(frozen=True)
class ExporterConfig:
    # Cards given their own series (top K by recent activity); 0: none.
    top_cards: int = 20
    # Deadline for the ledger reads when the scraper sends no timeout header.
    default_timeout: float = 10.0
    # Families from elsewhere in the process (the HTTP listeners' instrumentation), exposed as is.
    extra: tuple[Collector, ...] = field(default_factory=tuple)


@dataclass
class ExporterState:
    engine: AsyncEngine
    config: ExporterConfig
    scrapes: int = 0
    failures: int = 0


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


async def read_ledger(engine: AsyncEngine, config: ExporterConfig, deadline: float) -> Snapshot:
    """One consistent read-only snapshot of what the scrape exports."""
    async with readonly(engine).connect() as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            # A consistent view across the queries, and a server-side stop if the scraper has
            # given up: the client-side deadline alone would leave the query running.
            await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            millis = max(1, int(deadline * 1000))
            await conn.execute(text(f"SET LOCAL statement_timeout = {millis}"))
        return await read_snapshot(
            conn,
            now=datetime.now(UTC),
            top_cards=config.top_cards,
            windows=dict(ACTIVE_WINDOWS),
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
            snapshot = await read_ledger(state.engine, state.config, deadline)
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
    app[STATE_KEY] = ExporterState(engine, config or ExporterConfig())
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    return app
