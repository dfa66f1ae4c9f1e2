"""The report schedule as `serve` runs it: no listener, a background task on the ledger."""

from __future__ import annotations

from ..reports.scheduler import ReportConfig, ReportScheduler
from ..serve import Context
from ..settings import Settings


def config_from(s: Settings) -> ReportConfig:
    return ReportConfig(
        interval=s.report_interval,
        retry_base=s.report_retry_base,
        attempts=s.report_attempts,
        send_timeout=s.report_send_timeout,
        grafana_url=s.grafana_url,
        attachment_max_rows=s.report_attachment_max_rows,
    )


async def start(ctx: Context) -> ReportScheduler:
    assert ctx.box is not None, "reports need the master key (SMTP passwords, webhook secrets)"
    scheduler = ReportScheduler(ctx.engine, ctx.box, config_from(ctx.settings))
    await scheduler.start()
    return scheduler
