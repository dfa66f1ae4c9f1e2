"""The metrics listener as `serve` runs it: the exporter plus the process's HTTP metrics."""

from __future__ import annotations

from aiohttp import web

from exporter.app import ExporterConfig, create_app

from .. import instrumentation
from ..serve import Context


def config_from(ctx: Context) -> ExporterConfig:
    return ExporterConfig(
        top_cards=ctx.settings.metrics_top_cards,
        slow_max_age=ctx.settings.metrics_slow_max_age,
        extra=(instrumentation.REGISTRY,),
    )


async def build(ctx: Context) -> web.Application:
    app = create_app(ctx.engine, config_from(ctx))
    return instrumentation.instrument(app, "metrics")
