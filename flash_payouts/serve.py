"""Running the three listeners (gateway, API, metrics) and the report schedule in one process,
or any of them alone."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.secretbox import SecretBox

from .runtime import ledger_secret_box, open_ledger, secret_box
from .settings import ConfigError, Settings, listen_address

log = logging.getLogger("flash_payouts.serve")

SERVICES = ("gateway", "api", "metrics", "reports")
# Services without a listener: a module with ``start(ctx)`` returning something to ``stop()``.
WORKERS = ("reports",)
ENGINE_KEY = web.AppKey("flash_engine", AsyncEngine)


class Worker(Protocol):
    async def stop(self) -> None: ...


@dataclass
class Context:
    """What the composition root hands each service's ``build(ctx)``."""

    settings: Settings
    engine: AsyncEngine
    box: SecretBox | None


def _service_module(name: str) -> ModuleType | None:
    qualified = f"{__package__}.services.{name}"
    try:
        return importlib.import_module(qualified)
    except ModuleNotFoundError as exc:
        if exc.name == qualified:
            return None
        raise


async def _health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    try:
        async with engine.connect() as conn:
            await asyncio.wait_for(conn.execute(text("SELECT 1")), 2)
        ledger = "ok"
    except Exception as exc:  # the health answer reports any ledger failure, it never raises
        log.warning("health check: ledger unreachable: %s", type(exc).__name__)
        ledger = "unreachable"
    status = 200 if ledger == "ok" else 503
    return web.json_response(
        {"status": "ok" if status == 200 else "degraded", "ledger": ledger}, status=status
    )


async def build_app(name: str, ctx: Context) -> web.Application:
    module = _service_module(name)
    app = await module.build(ctx) if module is not None else web.Application()
    app[ENGINE_KEY] = ctx.engine
    app.router.add_get("/health", _health)
    return app


def needs_master_key(services: Sequence[str]) -> bool:
    return any(name in services for name in ("gateway", "api", "reports"))


async def run_services(
    settings: Settings,
    services: Sequence[str] = SERVICES,
    *,
    ready: Callable[[dict[str, str]], Awaitable[None] | None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Start the listeners, then wait for SIGINT/SIGTERM (or ``stop``) and shut down cleanly."""
    unknown = set(services) - set(SERVICES)
    if unknown:
        raise ConfigError(
            f"unknown service {sorted(unknown)[0]!r}; choose from {', '.join(SERVICES)}"
        )
    addresses = {
        name: listen_address(getattr(settings, f"{name}_listen"))
        for name in services
        if name not in WORKERS
    }
    box = secret_box(settings) if needs_master_key(services) else None
    engine = await open_ledger(settings)
    runners: list[web.AppRunner] = []
    workers: list[Worker] = []
    try:
        if box is not None:
            box = await ledger_secret_box(box, engine)
        ctx = Context(settings, engine, box)
        urls: dict[str, str] = {}
        for name in services:
            if name in WORKERS:
                module = _service_module(name)
                assert module is not None
                workers.append(await module.start(ctx))
                log.info("%s started", name)
                continue
            host, port = addresses[name]
            runner = web.AppRunner(await build_app(name, ctx), access_log=None)
            await runner.setup()
            runners.append(runner)
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {host}:{port} for the {name}: {exc.strerror or exc}"
                ) from None
            urls[name] = f"http://{host}:{port}"
            log.info("%s listening on http://%s:%s", name, host, port)
        if ready is not None:
            result = ready(urls)
            if asyncio.iscoroutine(result):
                await result
        await _wait_for_stop(stop)
    finally:
        for worker in reversed(workers):
            await worker.stop()
        for runner in reversed(runners):
            await runner.cleanup()
        await engine.dispose()


async def _wait_for_stop(stop: asyncio.Event | None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
