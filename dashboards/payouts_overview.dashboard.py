"""Payouts overview: the merchant's board (summary cards, trends, status, top cards, the list)."""

from __future__ import annotations

from typing import Any

from grafanalib.core import BarGauge, PieChartv2, Stat, Table, TimeSeries

from dashboards import sql
from dashboards.common import (
    DETAIL_UID,
    OVERVIEW_UID,
    STORE_FILTER,
    Layout,
    board,
    board_links,
    board_path,
    custom_variable,
    datasource_variable,
    prom,
    sql_target,
    store_variable,
    textbox_variable,
)
from ledger.status import STATUSES

STATUS_COLOURS = {
    "Pending": "yellow",
    "Processing": "blue",
    "Completed": "green",
    "Failed": "red",
}


def _increase(metric: str) -> str:
    return f"sum(increase({metric}{{{STORE_FILTER}}}[$__range]))"


def _stat(title: str, expr: str, description: str, unit: str = "none") -> Stat:
    return Stat(
        title=title,
        description=description,
        targets=[prom(expr, instant=True)],
        format=unit,
        reduceCalc="lastNotNull",
        graphMode="none",
        noValue="0",
        decimals=None if unit == "percentunit" else 0,
    )


def status_mappings() -> list[dict[str, Any]]:
    return [
        {
            "type": "value",
            "options": {
                status: {"color": colour, "index": i, "text": status}
                for i, (status, colour) in enumerate(STATUS_COLOURS.items())
            },
        }
    ]


def _status_colour_overrides() -> list[dict[str, Any]]:
    return [
        {
            "matcher": {"id": "byName", "options": status},
            "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": colour}}],
        }
        for status, colour in STATUS_COLOURS.items()
    ]


def _trend(title: str, raw: str, description: str) -> TimeSeries:
    return TimeSeries(
        title=title,
        description=description,
        targets=[sql_target(raw, table=False)],
        lineWidth=2,
        showPoints="always",
        legendDisplayMode="list",
        overrides=_status_colour_overrides(),
    )


completed = _increase("flash_payouts_completed_total")
failed = _increase("flash_payouts_failed_total")

layout = Layout()
panels = [
    layout.place(
        _stat(
            "Payouts",
            _increase("flash_payouts_created_total"),
            "Payouts created in the picked period.",
        ),
        4,
        4,
    ),
    layout.place(
        _stat(
            "Value",
            _increase("flash_payouts_created_value_sats_total"),
            "Value of the payouts created in the picked period.",
            unit="suffix: sats",
        ),
        4,
        4,
    ),
    layout.place(_stat("Completed", completed, "Payouts completed in the period."), 3, 4),
    layout.place(_stat("Failed", failed, "Payouts failed in the period."), 3, 4),
    layout.place(
        _stat(
            "Pending now",
            f'sum(flash_payouts{{{STORE_FILTER}, status="Pending"}})',
            "Payouts waiting for approval now.",
        ),
        2,
        4,
    ),
    layout.place(
        _stat(
            "Processing now",
            f'sum(flash_payouts{{{STORE_FILTER}, status="Processing"}})',
            "Payouts approved and being paid now.",
        ),
        2,
        4,
    ),
    layout.place(
        _stat(
            "Success rate",
            f"{completed} / (({completed} + {failed}) > 0)",
            "Completed among the payouts that finished in the period (completed or failed).",
            unit="percentunit",
        ),
        3,
        4,
    ),
    layout.place(
        _stat(
            "Active cards",
            f'sum(flash_active_cards{{{STORE_FILTER}, window="1d"}})',
            "Distinct Boltcards that collected a payout in the last 24 hours.",
        ),
        3,
        4,
    ),
]
layout.newline()
panels += [
    layout.place(
        _trend(
            "Payouts per day",
            sql.TREND_DAY,
            "Payouts created each day, by their status now (from the daily rollup).",
        ),
        8,
        8,
    ),
    layout.place(
        _trend("Payouts per week", sql.TREND_WEEK, "Payouts created each week, by status now."),
        8,
        8,
    ),
    layout.place(
        _trend("Payouts per month", sql.TREND_MONTH, "Payouts created each month, by status now."),
        8,
        8,
    ),
]
layout.newline()
panels += [
    layout.place(
        PieChartv2(
            title="Status distribution",
            description="Payouts created in the period, by their status now.",
            targets=[sql_target(sql.STATUS_DISTRIBUTION)],
            pieType="donut",
            legendDisplayMode="table",
            legendPlacement="right",
            legendValues=["value", "percent"],
            reduceOptionsValues=True,
            reduceOptionsFields="/^Payouts$/",
            overrides=_status_colour_overrides(),
            extraJson={"options": {"displayLabels": ["percent"]}},
        ),
        6,
        8,
    ),
    layout.place(
        BarGauge(
            title="Top Boltcards",
            description="Payouts collected in the period by the busiest cards (the cards "
            "the exporter ranks as its top K; a card shows as its alias or an id prefix).",
            targets=[
                prom(
                    "topk(10, sum by (card) (increase(flash_card_payouts_total"
                    f"{{{STORE_FILTER}}}[$__range])))",
                    "{{card}}",
                    instant=True,
                )
            ],
            extraJson={
                "options": {
                    "displayMode": "basic",
                    "orientation": "horizontal",
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "showUnfilled": True,
                    "valueMode": "color",
                },
                "fieldConfig": {"defaults": {"decimals": 0, "min": 0, "unit": "none"}},
            },
        ),
        9,
        8,
    ),
    layout.place(
        TimeSeries(
            title="Completion time",
            description="Seconds from a payout's creation to its completion (p50 and p95).",
            targets=[
                prom(
                    "histogram_quantile(0.5, sum by (le) (rate(flash_payout_completion_seconds"
                    f"_bucket{{{STORE_FILTER}}}[$__rate_interval])))",
                    "p50",
                    "A",
                ),
                prom(
                    "histogram_quantile(0.95, sum by (le) (rate(flash_payout_completion_seconds"
                    f"_bucket{{{STORE_FILTER}}}[$__rate_interval])))",
                    "p95",
                    "B",
                ),
            ],
            unit="s",
            lineWidth=2,
        ),
        9,
        8,
    ),
]
layout.newline()
panels.append(
    layout.place(
        Table(
            title="Payout list",
            description="Newest first, within the picked period, the store, status, card and "
            "search filters. Click a payout id for its detail; click a column header to sort.",
            targets=[sql_target(sql.PAYOUTS_TABLE)],
            filterable=True,
            sortBy=[],
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "Status"},
                    "properties": [
                        {"id": "mappings", "value": status_mappings()},
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                    ],
                },
                {
                    "matcher": {"id": "byName", "options": "Payout"},
                    "properties": [
                        {
                            "id": "links",
                            "value": [
                                {
                                    "title": "Payout detail",
                                    "url": board_path(DETAIL_UID)
                                    + "?var-payout=${__value.raw}&${__url_time_range}"
                                    + "&${store:queryparam}",
                                }
                            ],
                        }
                    ],
                },
                {
                    "matcher": {"id": "byName", "options": "Sats"},
                    "properties": [{"id": "unit", "value": "none"}, {"id": "decimals", "value": 0}],
                },
            ],
            extraJson={
                "options": {
                    "cellHeight": "sm",
                    "footer": {"show": False, "enablePagination": True},
                    "sortBy": [{"displayName": "Created", "desc": True}],
                },
            },
        ),
        24,
        14,
    )
)

dashboard = board(
    uid=OVERVIEW_UID,
    title="Payouts overview",
    description="Pull-payment payouts collected with Boltcards: totals, trends, status, the "
    "busiest cards and every payout, for the picked period and stores.",
    panels=panels,
    variables=[
        datasource_variable(),
        store_variable(),
        custom_variable("status", "Status", STATUSES),
        textbox_variable("card", "Card (id or alias)"),
        textbox_variable("search", "Search (payout id, pull payment id, amount)"),
    ],
    links=board_links(),
)
