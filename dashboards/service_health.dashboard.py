"""Service health: the exporter and ledger, BTCPay's webhooks and reconciles, the listeners."""

from __future__ import annotations

from grafanalib.core import Stat, TimeSeries

from dashboards.common import (
    HEALTH_UID,
    STORE_FILTER,
    Layout,
    board,
    board_links,
    datasource_variable,
    prom,
    store_variable,
)
from dashboards.provisioning import SCRAPE_JOB

UP_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"color": "red", "index": 0, "text": "down"},
            "1": {"color": "green", "index": 1, "text": "up"},
        },
    }
]


def _up(title: str, expr: str, description: str) -> Stat:
    return Stat(
        title=title,
        description=description,
        targets=[prom(expr, instant=True)],
        mappings=UP_MAPPINGS,
        colorMode="background",
        graphMode="none",
        reduceCalc="lastNotNull",
        noValue="down",
    )


def _series(title: str, description: str, *targets: tuple[str, str], unit: str = "none"):
    refs = "ABCDEFGH"
    return TimeSeries(
        title=title,
        description=description,
        targets=[prom(expr, legend, refs[i]) for i, (expr, legend) in enumerate(targets)],
        unit=unit,
    )


def _latency(q: float) -> str:
    return (
        f"histogram_quantile({q}, sum by (listener, le) "
        "(rate(flash_http_request_duration_seconds_bucket[$__rate_interval])))"
    )


layout = Layout()
panels = [
    layout.place(
        _up(
            "Exporter",
            f'min(up{{job="{SCRAPE_JOB}"}})',
            "Whether Prometheus reaches the metrics listener.",
        ),
        4,
        4,
    ),
    layout.place(
        _up("Ledger", "min(flash_up)", "Whether the ledger answered the last scrape in time."),
        4,
        4,
    ),
    layout.place(
        Stat(
            title="Scrape failures",
            description="Scrapes in the period whose ledger read failed or ran out of time.",
            targets=[
                prom("sum(increase(flash_exporter_scrape_failures_total[$__range]))", instant=True)
            ],
            graphMode="none",
            reduceCalc="lastNotNull",
            decimals=0,
            noValue="0",
        ),
        4,
        4,
    ),
    layout.place(
        _series(
            "Scrape duration",
            "Seconds a scrape spent in the ledger, and the whole scrape as Prometheus saw it.",
            ("max(flash_exporter_scrape_duration_seconds)", "ledger read"),
            (f'max(scrape_duration_seconds{{job="{SCRAPE_JOB}"}})', "whole scrape"),
            unit="s",
        ),
        12,
        8,
    ),
]
layout.newline()
panels += [
    layout.place(
        _series(
            "Webhook events by type",
            "BTCPay webhook deliveries recorded per second, by event type.",
            (
                f"sum by (event) (rate(flash_webhook_events_total{{{STORE_FILTER}}}"
                "[$__rate_interval]))",
                "{{event}}",
            ),
            unit="reqps",
        ),
        8,
        8,
    ),
    layout.place(
        _series(
            "Reconcile age",
            "Seconds since the last successful full reconcile with BTCPay, per store.",
            (
                "time() - max by (store) (flash_reconcile_last_success_timestamp_seconds"
                f"{{{STORE_FILTER}}} > 0)",
                "{{store}}",
            ),
            unit="s",
        ),
        8,
        8,
    ),
    layout.place(
        _series(
            "Newest event age",
            "Seconds since the newest payout event (gateway, webhook or reconcile) reached "
            "the ledger, per store.",
            (f"max by (store) (flash_newest_event_age_seconds{{{STORE_FILTER}}})", "{{store}}"),
            unit="s",
        ),
        8,
        8,
    ),
]
layout.newline()
panels += [
    layout.place(
        _series(
            "Requests by listener",
            "HTTP requests answered per second by the gateway, the API and the metrics "
            "listener, and those answered with a server error.",
            (
                "sum by (listener) (rate(flash_http_requests_total[$__rate_interval]))",
                "{{listener}}",
            ),
            (
                'sum by (listener) (rate(flash_http_requests_total{code=~"5.."}'
                "[$__rate_interval])) or 0 * sum by (listener) "
                "(rate(flash_http_requests_total[$__rate_interval]))",
                "{{listener}} 5xx",
            ),
            unit="reqps",
        ),
        8,
        8,
    ),
    layout.place(
        _series(
            "Latency by listener",
            "Seconds to answer a request, p50 and p95, by listener.",
            (_latency(0.5), "{{listener}} p50"),
            (_latency(0.95), "{{listener}} p95"),
            unit="s",
        ),
        8,
        8,
    ),
    layout.place(
        _series(
            "Requests in flight",
            "Requests being answered now, by listener.",
            ("sum by (listener) (flash_http_requests_in_flight)", "{{listener}}"),
        ),
        8,
        8,
    ),
]
layout.newline()
panels += [
    layout.place(
        _series(
            "Report sends",
            "Scheduled reports delivered, and failed attempts at sending them, per hour by "
            "channel.",
            (
                f"sum by (channel) (increase(flash_report_sends_total{{{STORE_FILTER}}}[1h]))",
                "{{channel}} sent",
            ),
            (
                "sum by (channel) "
                f"(increase(flash_report_send_failures_total{{{STORE_FILTER}}}[1h]))",
                "{{channel}} failed",
            ),
        ),
        8,
        8,
    ),
]

dashboard = board(
    uid=HEALTH_UID,
    title="Service health",
    description="Is the monitor healthy: the exporter and ledger, BTCPay's webhooks and "
    "reconciles, and the traffic and latency of the gateway, API and metrics listeners.",
    panels=panels,
    variables=[datasource_variable(), store_variable()],
    time_from="now-6h",
    links=board_links(),
)
