"""Application factory and listeners for the BTCPay Server simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from flash_payouts.loop import new_event_loop

from . import boltcards, control, greenfield
from .config import SimConfig
from .errors import error_middleware
from .sim import SIMULATOR, Simulator


def create_app(config: SimConfig | None = None) -> web.Application:
    simulator = Simulator(config or SimConfig())
    # Faults sit outside the error middleware so an injected 503 looks like a front proxy's.
    app = web.Application(middlewares=[simulator.faults.middleware(), error_middleware])
    app[SIMULATOR] = simulator

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await simulator.start()
        yield
        await simulator.close()

    app.cleanup_ctx.append(lifecycle)
    app.add_routes(greenfield.routes)
    app.add_routes(control.routes)
    boltcards.setup(app)
    return app


@dataclass(slots=True)
class RunningSimulator:
    """A simulator listening on a real socket, for tests, the demo and benchmarks."""

    runner: web.AppRunner
    url: str

    @property
    def simulator(self) -> Simulator:
        return self.runner.app[SIMULATOR]

    async def close(self) -> None:
        await self.runner.cleanup()


async def start(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> RunningSimulator:
    """Starts listening (port 0 picks a free port) and returns at once."""
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = runner.addresses[0][1]
    return RunningSimulator(runner, f"http://{host}:{bound_port}")


async def serve(host: str, port: int, config: SimConfig | None = None) -> None:
    """Listens until cancelled."""
    running = await start(config, host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await running.close()


def run(listen: str, config: SimConfig | None = None) -> None:
    """Blocking entry point for `--listen HOST:PORT`."""
    host, _, port = listen.rpartition(":")
    web.run_app(
        create_app(config),
        host=host or "127.0.0.1",
        port=int(port),
        access_log=None,
        loop=new_event_loop(),  # uvloop where it is built, as the project's own services run
    )
